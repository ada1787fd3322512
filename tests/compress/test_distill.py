"""Knowledge distillation: the frozen teacher, the loss mixing, and each method's defining
behaviours (specs/quant-kd.md §3 and §8)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from spikecompress.compress import attach
from spikecompress.compress.distill.kdsnn import KDSNN
from spikecompress.compress.distill.kl_kd import KLDistillation
from spikecompress.compress.distill.losses import soft_kl, window_loss
from spikecompress.compress.distill.spike_kd import SpikeDistillation
from spikecompress.compress.distill.teacher import Teacher
from spikecompress.export import save
from spikecompress.models import build
from spikecompress.snn import reset_state

METHODS = [KLDistillation, SpikeDistillation, KDSNN]


def _student(widths=(4, 8), spiking=True, classes=10):
    torch.manual_seed(0)
    return build("conv_net", in_channels=1, input_size=8, classes=classes, widths=list(widths),
                 spiking=spiking)


def _batch(seed=0, T=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 8, 1, 8, 8, generator=g).expand(T, -1, -1, -1, -1)  # static input
    return x.contiguous(), torch.randint(0, 10, (8,), generator=g)


def _step(model, session, opt, seed=0):
    x, y = _batch(seed)
    out = model(x)
    task = F.cross_entropy(out.mean(0), y)
    extra = session.loss(x, out, y)
    opt.zero_grad()
    (task + extra).backward()
    opt.step()
    reset_state(model)
    return task, extra, out


@pytest.mark.parametrize("cls", METHODS)
def test_teacher_is_frozen_no_grads_and_bn_statistics_unchanged(cls):
    teacher = _student((8, 16))
    teacher.train()  # even handed over in train mode
    before = copy.deepcopy(teacher.state_dict())
    student = _student()
    method = cls(teacher=teacher)
    session = attach(student, [method])
    frozen = method.teacher_.model
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    for seed in range(3):
        student.train()
        _step(student, session, opt, seed)
    assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())
    assert not frozen.training
    for model in (frozen, teacher):  # the frozen copy, and the caller's model left as it was
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # running stats included
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("cls", METHODS)
def test_alpha_zero_leaves_the_plain_task_loss(cls):
    student = _student()
    method = cls(alpha=0.0, **({"beta": 0.0} if cls is KDSNN else {}))
    session = attach(student, [method])
    x, y = _batch()
    out = student(x)
    assert session.loss(x, out, y).item() == 0.0


def test_soft_kl_matches_a_hand_computation():
    z_s = torch.tensor([[1.0, 2.0, 0.5]])
    z_t = torch.tensor([[2.0, 0.0, 1.0]])
    tau = 2.0
    p_t = [math.exp(v / tau) for v in (2.0, 0.0, 1.0)]
    p_s = [math.exp(v / tau) for v in (1.0, 2.0, 0.5)]
    p_t = [v / sum(p_t) for v in p_t]
    p_s = [v / sum(p_s) for v in p_s]
    want = tau**2 * sum(t * math.log(t / s) for t, s in zip(p_t, p_s, strict=True))
    assert soft_kl(z_s, z_t, tau).item() == pytest.approx(want, rel=1e-6)
    assert soft_kl(z_t, z_t, tau).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_kd_total_is_one_minus_alpha_task_plus_alpha_kl():
    teacher = _student((8, 16))
    student = _student()
    session = attach(student, [KLDistillation(teacher=teacher, alpha=0.75, tau=3.0)])
    x, y = _batch()
    out = student(x)
    total = F.cross_entropy(out.mean(0), y) + session.loss(x, out, y)
    with torch.no_grad():
        z_t = teacher.eval()(x).mean(0)
    reset_state(teacher)
    want = 0.25 * F.cross_entropy(out.mean(0), y) + 0.75 * soft_kl(out.mean(0), z_t, 3.0)
    assert torch.allclose(total, want, rtol=1e-5, atol=1e-6)


def test_window_loss_sees_time_order_and_equals_the_full_loss_at_w_equal_T():
    g = torch.Generator().manual_seed(0)
    o_t = (torch.rand(4, 3, 5, generator=g) > 0.5).float()  # [T, B, C] spikes
    o_s = (torch.rand(4, 3, 5, generator=g) > 0.5).float()
    perm = o_s[[2, 0, 3, 1]]
    for distance in ("mse", "kl"):
        full = window_loss(o_s, o_t, 4, 1, distance, 4.0)
        assert torch.equal(full, window_loss(perm, o_t, 4, 1, distance, 4.0))  # counts only
        sw = window_loss(o_s, o_t, 2, 1, distance, 4.0)
        assert not torch.equal(sw, window_loss(perm, o_t, 2, 1, distance, 4.0))
    # w = T is the full-window loss: D(count / T) on the whole sequence
    full = F.mse_loss(o_s.mean(0), o_t.mean(0))
    assert torch.equal(window_loss(o_s, o_t, 4, 1, "mse", 4.0), full)
    with pytest.raises(ValueError, match="window"):
        window_loss(o_s, o_t, 5, 1, "mse", 4.0)


def test_spike_kd_on_a_spiking_layer_uses_its_spikes():
    teacher, student = _student(), _student()
    session = attach(student, [SpikeDistillation(teacher=teacher, layer="features.1.act",
                                                 window=1, distance="mse", alpha=1.0)])
    student.eval()
    x, y = _batch()
    out = student(x)
    # the teacher is the same network: the spikes agree, the window loss is 0 and the total is
    # (1 - 1) · CE + 1 · 0
    total = F.cross_entropy(out.mean(0), y) + session.loss(x, out, y)
    assert total.abs().item() < 1e-6
    with pytest.raises(ValueError, match="layer: the student has no layer"):
        attach(_student(), [SpikeDistillation(teacher=teacher, layer="features.9.act")])


def test_kdsnn_feature_loss_is_zero_for_identity_adapters_and_equal_rates():
    student = _student()
    method = KDSNN(alpha=0.0, beta=1.0)  # teacher: a frozen copy of the student as it enters
    session = attach(student, [method])
    assert method.pairs_ == [["features.0.act", "features.0.act"],
                             ["features.1.act", "features.1.act"]]
    student.eval()  # the same computation as the frozen teacher's
    x, y = _batch()
    out = student(x)
    assert session.loss(x, out, y).item() == 0.0
    for (s, _), adapter in zip(method.pairs_, method._adapters, strict=True):
        assert method._rates[s].shape[1] == adapter.in_channels  # the hooks caught the layers


def test_kdsnn_adapters_map_widths_train_and_never_reach_the_artifact(tmp_path):
    teacher, student = _student((8, 16)), _student((4, 8))
    method = KDSNN(teacher=teacher, features=[["features.1.act", "features.1.act"]])
    session = attach(student, [method])
    (adapter,) = method._adapters
    assert (adapter.in_channels, adapter.out_channels) == (8, 16)
    groups = session.param_groups()
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in adapter.parameters()}
    opt = torch.optim.Adam(list(student.parameters()) + groups[0]["params"], lr=1e-2)
    w0 = adapter.weight.detach().clone()
    student.train()
    _step(student, session, opt)
    assert not torch.equal(w0, adapter.weight)
    plain = session.finalize()
    keys = set(plain.state_dict())
    assert keys == set(_student().state_dict())
    save(plain, tmp_path / "a")
    assert not any("adapter" in k for k in keys)
    with pytest.raises(ValueError, match="features.0: the teacher has no layer 'nope'"):
        attach(_student(), [KDSNN(teacher=teacher, features=[["features.1.act", "nope"]])])


def test_teacher_from_an_artifact_or_run_folder_and_bad_teachers_named(tmp_path):
    teacher = _student((8, 16))
    save(teacher, tmp_path / "run/artifact")
    for source in (tmp_path / "run/artifact", tmp_path / "run"):
        method = KLDistillation(teacher=str(source))
        attach(_student(), [method])
        assert method.teacher_.model.spec == teacher.spec
    with pytest.raises(ValueError, match="^teacher: .*missing holds no artifact"):
        attach(_student(), [KLDistillation(teacher=str(tmp_path / "missing"))])
    (tmp_path / "run/artifact/spec.json").write_text("{not json")
    with pytest.raises(Exception, match="spec.json"):
        attach(_student(), [KLDistillation(teacher=str(tmp_path / "run"))])
    with pytest.raises(ValueError, match="teacher: the teacher has 5 classes, the student 10"):
        attach(_student(), [KLDistillation(teacher=_student(classes=5))])
    torch.manual_seed(0)
    wide = build("conv_net", in_channels=1, input_size=10, classes=10, widths=[4, 8])
    with pytest.raises(ValueError, match=r"teacher: the teacher takes inputs of shape \[1, 10"):
        attach(_student(), [KLDistillation(teacher=wide)])
    with pytest.raises(ValueError, match="teacher: 'stage:dense' names a stage"):
        attach(_student(), [KLDistillation(teacher="stage:dense")])
    for bad, field in [({"alpha": 1.5}, "alpha"), ({"tau": 0}, "tau"), ({"teacher": ""}, "teacher"),
                       ({"teacher_T": 0}, "teacher_T"), ({"cache": "yes"}, "cache")]:
        with pytest.raises(ValueError, match=f"^{field}"):
            KLDistillation(**bad)


def test_ann_teacher_runs_once_on_a_static_input_and_refuses_a_moving_one():
    ann = _student((8, 16), spiking=False)
    teacher = Teacher(ann.eval())
    calls = []
    ann.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    x, _ = _batch(T=4)
    out, _ = teacher.outputs(x)
    assert calls == [1] and out.shape[0] == 1
    moving = torch.rand(4, 2, 1, 8, 8)
    assert teacher.outputs(moving)[0].shape[0] == 4  # same T as the student: allowed
    with pytest.raises(ValueError, match="teacher_T: the teacher runs at T = 2"):
        Teacher(_student(), T=2).outputs(moving)


def test_teacher_cache_returns_the_same_outputs_and_changes_nothing():
    runs = []
    for cache in (True, False):
        teacher, student = _student((8, 16)), _student()
        method = KLDistillation(teacher=teacher, cache=cache)
        session = attach(student, [method])
        opt = torch.optim.Adam(student.parameters(), lr=1e-2)
        for seed in (0, 1, 0, 1):
            student.train()
            _step(student, session, opt, seed)
        assert len(method.teacher_._cache) == (16 if cache else 0)  # 2 batches of 8 samples
        runs.append(student.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
