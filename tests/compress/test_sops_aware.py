"""SOPs-aware weight + neuron pruning (Shi et al., ICLR 2024)."""

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from spikecompress.compress import attach, is_plain, select
from spikecompress.compress.contract import TINY_MODELS as TINY
from spikecompress.compress.contract import _train_steps, check_method, method_spec
from spikecompress.compress.prune.sops_aware import GAIN, GATE, SOPsAwarePruning, beta_at
from spikecompress.compress.prune.sops_geometry import probe_geometry
from spikecompress.data import DataConfig, load_data
from spikecompress.measurement import count
from spikecompress.measurement.sparsity import weight_sparsity
from spikecompress.models import build
from spikecompress.snn import reset_state

ALL_NEURONS = dict(neuron_include=[".*"], neuron_exclude=[])
PAPER = dict(penalty=5e-6)  # the paper's fixed λ (the default before targets): neuron masks on


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


def _model(name="conv_net", v_th=0.5, **over):
    """A tiny model whose neurons fire on ``_batch`` inputs in training mode (threshold 0.5)."""
    torch.manual_seed(0)
    return build(classes=10, **{**TINY[name], "neuron_params": {"v_threshold": v_th}, **over})


def _named(model, geo_dict):
    names = {m: n for n, m in model.named_modules()}
    return {names[m]: v for m, v in geo_dict.items()}


def _session(model, method, total, lr=1e-2):
    session = attach(model, [method])
    groups = session.param_groups()
    claimed = {id(p) for g in groups for p in g["params"]}
    rest = [p for p in model.parameters() if id(p) not in claimed]
    extra = [{"params": g["params"], "lr": lr * g["lr_scale"]} for g in groups]
    opt = torch.optim.Adam([{"params": rest}, *extra], lr=lr)
    session.bind(opt, total_steps=total)
    return session, opt


def _batch(step, shape=(1, 8, 8), batch=8):
    g = torch.Generator().manual_seed(100 + step)
    x_seq = torch.rand(2, batch, *shape, generator=g) * 3
    return x_seq, torch.randint(0, 10, (batch,), generator=g)


def _train(model, session, opt, steps, total):
    for _ in range(steps):
        x_seq, y = _batch(session.ctx.step)
        out = model(x_seq)
        loss = F.cross_entropy(out.mean(0), y) + session.loss(x_seq, out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=(session.ctx.step + 1) / total)
        reset_state(model)


# -- §2.6 defining behaviour 1: penalty constants from geometry -----------------------------------
def test_penalty_constants_from_geometry():
    model = build("conv_net", in_channels=1, input_size=32, classes=10, widths=[4, 256],
                  pools=[0, 1])
    geo = probe_geometry(model)
    w, n = _named(model, geo.weight_cost), _named(model, geo.neuron_cost)
    assert w["features.0.conv"] == 1024  # 3×3 'same', stride 1, 32×32: H_out·W_out
    assert n["features.0.act"] == 2304  # feeds a 3×3 conv with 256 outputs: 256·9 (pool ignored)
    assert w["features.1.conv"] == 256  # after the 2×2 max-pool: 16×16
    assert w["classifier.fc"] == 1 and n["features.1.act"] == 10  # linear: 1; fan-out out_features
    assert _named(model, geo.neuron_shape)["features.0.act"] == (4, 32, 32)
    method = SOPsAwarePruning(**PAPER, **ALL_NEURONS)
    attach(model, [method])
    assert [g.cost for g in method.weights_] == [1024, 256, 1]
    assert [g.cost for _, g in method.neurons_] == [2304, 10]


def test_penalty_constants_strided_conv1d_and_residual_fan_out():
    m1 = build("conv1d_net", in_channels=1, input_size=40, classes=10, widths=[8, 8])
    geo = probe_geometry(m1)
    assert _named(m1, geo.weight_cost)["features.0.conv"] == 19  # k5 s2 p1 on 40: 19 positions
    assert _named(m1, geo.neuron_cost)["features.0.act"] == 8 * 3 / 2  # C_out·k/stride
    sew = _model("sew_resnet")
    n = _named(sew, probe_geometry(sew).neuron_cost)
    # the stem's spikes reach stage0's conv1 and, through the identity additions, stage1's conv1
    # and 1×1 downsample (stride 2): 4·9 + 8·9/4 + 8·1/4
    assert n["features.stem.act"] == 36 + 18 + 2
    assert n["features.stage0.0.act2"] == 18 + 2
    assert n["features.stage1.0.act2"] == n["features.stage1.0.downsample.act"] == 10


# -- 2: the penalty's gradient ------------------------------------------------------------------
def test_penalty_gradient_is_lambda_e_beta_sigmoid_prime():
    model, lam = _model(), 1e-3
    method = SOPsAwarePruning(penalty=lam, **ALL_NEURONS)
    session, _ = _session(model, method, total=10)
    torch.manual_seed(1)
    with torch.no_grad():
        for g in method.gates():
            g.alpha.normal_(0, 0.2)
    session.ctx.step = 3
    method.after_step(model, session.ctx)  # β(3) of a search of 8 steps
    beta = beta_at(3, 8, [5.0, 1000.0])
    gates = method.gates()
    grads = torch.autograd.grad(session.loss(None, torch.zeros(1)), [g.alpha for g in gates])
    for g, grad in zip(gates, grads, strict=True):
        s = torch.sigmoid(beta * g.alpha.detach())
        torch.testing.assert_close(grad, lam * g.cost * beta * s * (1 - s), rtol=1e-5, atol=0)


# -- 5 (ours): geometry weights, not a plain L1 on the masks --------------------------------------
def test_penalty_is_not_a_plain_l1_on_masks():
    model = _model()
    method = SOPsAwarePruning(penalty=1.0, **ALL_NEURONS)
    session, _ = _session(model, method, total=10)
    gates = method.gates()
    grads = torch.autograd.grad(session.loss(None, torch.zeros(1)), [g.alpha for g in gates])
    plain = torch.autograd.grad(sum(g.soft().sum() for g in gates), [g.alpha for g in gates])
    first = [float(g.flatten()[0]) for g in grads]  # α = 0 everywhere: one value per layer
    # e_w = 64 (8×8), 16 (after the pool), 1 (read-out); e_n = 8·9, 10
    assert [f / first[2] for f in first] == pytest.approx([64, 16, 1, 72, 10])
    assert len({round(float(g.flatten()[0]), 9) for g in plain}) == 1  # plain L1: all equal


# -- 3: the neuron mask gates spikes after the neuron, at every step, for every sample -----------
def test_neuron_mask_gates_spikes_not_membrane():
    model = _model()
    method = SOPsAwarePruning(**PAPER, **ALL_NEURONS)
    _session(model, method, total=10)
    neuron = model.features[0].act
    neuron.record_v = True
    gate = getattr(neuron, GATE)
    seen = {}
    model.features[0].act.register_forward_hook(lambda m, a, out: seen.update(out=out))
    x_seq = _batch(0)[0]

    def run(alpha, hard):
        with torch.no_grad():
            gate.alpha.copy_(alpha)
        gate.set_phase(1000.0, hard)
        model(x_seq)
        out, v = seen["out"].detach(), neuron.v_seq.clone()
        reset_state(model)
        return out, v

    keep = torch.ones_like(gate.alpha)
    ref_out, ref_v = run(keep, True)
    alpha = keep.clone()
    alpha[1] = -1.0  # channel 1 everywhere
    alpha[0, 2, 3] = -1.0  # one single neuron
    out, v = run(alpha, True)
    dead = alpha < 0  # [C, H, W]
    assert ref_out[:, :, dead].sum() > 0  # these neurons did fire ...
    assert out[:, :, dead].abs().sum() == 0  # ... and emit nothing at any step, for any sample
    assert torch.equal(out[:, :, ~dead], ref_out[:, :, ~dead])
    assert torch.equal(v, ref_v)  # the membrane is untouched by the mask
    assert not torch.equal(v[0][:, dead], v[1][:, dead])  # and it evolves over time
    soft_alpha = torch.randn_like(alpha) * 0.01
    out_soft, _ = run(soft_alpha, False)  # search: spikes · σ(β α), exactly
    assert torch.equal(out_soft, ref_out * torch.sigmoid(1000.0 * soft_alpha))


# -- 4: at β_T soft and hard masks give the same prediction ---------------------------------------
def test_soft_and_hard_masks_agree_at_final_beta():
    model = _model()
    method = SOPsAwarePruning(**PAPER, **ALL_NEURONS)
    _session(model, method, total=10)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # logits as a search leaves them: away from 0, 80 % positive
        for gate in method.gates():
            a = gate.alpha
            sign = torch.randint(0, 5, a.shape, generator=g).ne(0).float() * 2 - 1
            a.copy_(sign * (0.01 + torch.randn(a.shape, generator=g).abs() * 0.05))
    x_seq = torch.rand(2, 64, 1, 8, 8, generator=g) * 3

    def logits(beta, hard):
        for gate in method.gates():
            gate.set_phase(beta, hard)
        with torch.no_grad():
            out = model(x_seq).mean(0)
        reset_state(model)
        return out

    hard = logits(1000.0, True)
    soft = logits(1000.0, False)
    assert torch.equal(soft.argmax(1), hard.argmax(1))
    assert (soft - hard).abs().max() < 1e-3
    start = logits(5.0, False)  # at β₀ the relaxation is far from H: the schedule matters
    assert (start - hard).abs().max() > 0.3 and not torch.equal(start.argmax(1), hard.argmax(1))


# -- β schedule, phases, frozen logits ------------------------------------------------------------
def test_beta_schedule_is_exponential_over_the_search_steps():
    b = [5.0, 1000.0]
    assert beta_at(0, 40, b) == pytest.approx(5.0)
    assert beta_at(40, 40, b) == pytest.approx(1000.0)
    assert beta_at(20, 40, b) == pytest.approx(math.sqrt(5.0 * 1000.0))
    assert beta_at(10, 40, b) / beta_at(0, 40, b) == pytest.approx(
        beta_at(30, 40, b) / beta_at(20, 40, b))  # constant ratio per step
    assert beta_at(55, 40, b) == pytest.approx(1000.0)


def test_search_then_fine_tune_phases_through_the_session():
    model = _model()
    method = SOPsAwarePruning(search=0.5, **PAPER)
    session, opt = _session(model, method, total=8)
    gate = method.weights_[0]
    assert float(gate.beta) == 5.0 and not bool(gate.hard)
    _train(model, session, opt, 2, 8)
    assert float(gate.beta) == pytest.approx(beta_at(2, 4, method.beta))
    _train(model, session, opt, 2, 8)
    assert bool(gate.hard) and float(gate.beta) == pytest.approx(1000.0)
    assert float(session.loss(None, torch.zeros(1))) == 0.0  # no penalty while fine-tuning
    alphas = [g.alpha.detach().clone() for g in method.gates()]
    w = model.features[0].conv.parametrizations.weight.original.detach().clone()
    _train(model, session, opt, 3, 8)
    assert all(torch.equal(a, g.alpha) for a, g in zip(alphas, method.gates(), strict=True))
    assert not torch.equal(w, model.features[0].conv.parametrizations.weight.original)


def test_logits_start_at_zero_halving_weights_and_have_their_own_lr():
    model = _model()
    w0 = model.features[0].conv.weight.detach().clone()
    method = SOPsAwarePruning(mask_lr_scale=3.0, **PAPER, **ALL_NEURONS)
    session = attach(model, [method])
    assert torch.equal(model.features[0].conv.weight, 0.5 * w0)  # σ(β · 0) = 1/2, uncompensated
    (group,) = session.param_groups()
    assert group["lr_scale"] == 3.0 and group["weight_decay"] == 0.0
    assert [id(p) for p in group["params"]] == [id(g.alpha) for g in method.gates()]
    assert all(float(g.alpha.detach().abs().sum()) == 0 for g in method.gates())
    with pytest.raises(RuntimeError, match="session.bind"):
        session.after_step(progress=0.1)


def test_fields_are_validated():
    with pytest.raises(ValueError, match="penalty"):
        SOPsAwarePruning(penalty=-1.0)
    with pytest.raises(ValueError, match="beta"):
        SOPsAwarePruning(beta=[1000.0, 5.0])
    with pytest.raises(ValueError, match="search"):
        SOPsAwarePruning(search=0.0)
    with pytest.raises(ValueError, match="mask_lr_scale"):
        SOPsAwarePruning(mask_lr_scale=0.0)
    assert SOPsAwarePruning(beta=[5, 1000]) == SOPsAwarePruning()


# -- exact resume ---------------------------------------------------------------------------------
@pytest.mark.parametrize("knobs", [dict(penalty=1e-3), dict(sparsity=0.7, neuron_sparsity=0.3)],
                         ids=["penalty", "targets"])
def test_killed_and_resumed_training_equals_uninterrupted(knobs):
    total, kill = 8, 3  # search = 4 steps: the resumed part crosses into fine-tuning

    def fresh():
        model = _model()
        method = SOPsAwarePruning(search=0.5, **knobs, **ALL_NEURONS)
        return (model, *_session(model, method, total))

    model, session, opt = fresh()
    _train(model, session, opt, total, total)

    first, s1, o1 = fresh()
    _train(first, s1, o1, kill, total)
    saved = (copy.deepcopy(first.state_dict()), s1.state_dict(), copy.deepcopy(o1.state_dict()))
    step, progress = s1.ctx.step, s1.ctx.progress
    if "sparsity" in knobs:  # the controllers' λ travel in the checkpoint's scalars
        assert saved[1][1]["0.lam_"] == s1.methods[0].lam_ is not None
        assert saved[1][1]["0.lam_neurons_"] is not None

    resumed, s2, o2 = fresh()
    resumed.load_state_dict(saved[0])
    s2.load_state_dict(*saved[1])
    o2.load_state_dict(saved[2])
    s2.ctx.step, s2.ctx.progress = step, progress
    _train(resumed, s2, o2, total - kill, total)
    for (name, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    assert session.methods[0].lam_ == s2.methods[0].lam_


# -- finalize -------------------------------------------------------------------------------------
def test_finalize_leaves_a_plain_model_equal_to_the_hard_mask_forward():
    model = _model()
    method = SOPsAwarePruning(search=0.5, penalty=1e-5, **ALL_NEURONS)
    session, opt = _session(model, method, total=8)
    _train(model, session, opt, 5, 8)
    x_seq = _batch(99)[0]
    with torch.no_grad():  # training mode (batch statistics: the neurons fire), then eval mode
        hard = model(x_seq)
        reset_state(model)
        hard_eval = model.eval()(x_seq)
    reset_state(model.train())
    alphas = {n: g.alpha.detach().clone() for n, g in method.neurons_}
    w_alpha = method.weights_[1].alpha.detach().clone()
    plain = session.finalize()
    assert is_plain(plain) and not any(GATE in k or "parametrizations" in k
                                       for k in plain.state_dict())
    assert torch.equal(plain(x_seq), hard)
    reset_state(plain)
    assert torch.equal(plain.eval()(x_seq), hard_eval)
    for neuron, alpha in alphas.items():
        assert torch.equal(neuron.spike_mask, (alpha > 0).float())
    assert 0 < float((w_alpha <= 0).float().mean()) < 1  # some pruned, some kept
    assert torch.equal(plain.features[1].conv.weight == 0, w_alpha <= 0)


# -- neuron masks on linear consumers (MLP) and the default selection -----------------------------
def test_neuron_masks_on_mlp_with_linear_consumers():
    model = _model("mlp", widths=[16, 12])
    method = SOPsAwarePruning(**PAPER)  # default: features.* but the first layer's neurons
    attach(model, [method])
    names = {m: n for n, m in model.named_modules()}
    assert [(names[n], g.cost) for n, g in method.neurons_] == [("features.1.act", 10.0)]
    model = _model("mlp")
    method = SOPsAwarePruning(penalty=1e-4, search=0.5, **ALL_NEURONS)
    session, opt = _session(model, method, total=6)
    assert method.neurons_[0][1].cost == 10  # feeds classifier.fc: its out_features
    _train(model, session, opt, 6, 6)
    plain = session.finalize()
    mask = plain.features[0].act.spike_mask
    assert mask.shape == (16,) and 0 < float(mask.sum()) < 16


# -- contract and end to end ----------------------------------------------------------------------
@dataclasses.dataclass
class _AllNeurons(SOPsAwarePruning):
    """The method with a neuron target and a neuron mask on every neuron layer."""

    neuron_sparsity: float | None = 0.5
    neuron_include: list[str] = dataclasses.field(default_factory=lambda: [".*"])
    neuron_exclude: list[str] = dataclasses.field(default_factory=list)


@pytest.mark.parametrize("cls", [SOPsAwarePruning, _AllNeurons])
@pytest.mark.parametrize("model_name", list(TINY))
def test_contract(model_name, cls, data):
    model = check_method(cls, _model(model_name, v_th=1.0), data)
    masks = [m.spike_mask for m in model.modules() if getattr(m, "spike_mask", None) is not None]
    # the default (a weight target alone) has no neuron masks; every neuron feeding a layer has
    expected = {"mlp": 1, "conv_net": 2, "sew_resnet": 6}[model_name]
    assert len(masks) == (0 if cls is SOPsAwarePruning else expected)
    if cls is _AllNeurons:  # the neuron target is met exactly (round((1 − 0.5)·n) kept)
        n = sum(m.numel() for m in masks)
        assert int(sum(m.sum() for m in masks)) == round(0.5 * n)


def test_sops_fall_end_to_end(data):
    model = _model()
    dense = copy.deepcopy(model)
    x_seq = next(iter(data.test))[0]
    dense_sops = count(dense, x_seq).sops
    assert dense_sops > 0
    method = SOPsAwarePruning(penalty=1e-2, search=0.5, **ALL_NEURONS)
    session, opt = _session(model, method, total=6)
    for step, (xb, y) in zip(range(6), data.train, strict=False):
        out = model(xb)
        loss = F.cross_entropy(out.mean(0), y) + session.loss(xb, out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=(step + 1) / 6)
        reset_state(model)
    plain = session.finalize().eval()
    assert count(plain, x_seq).sops < 0.5 * dense_sops


# -- knobs that name their target: sparsity (λ calibrated and controlled), penalty (the paper) ----
@pytest.fixture(scope="module")
def trained(data):
    """A small conv net trained dense on the digits for a few steps."""
    torch.manual_seed(0)
    model = build("conv_net", in_channels=1, input_size=8, classes=10, widths=[8, 16])
    _train_steps(model, attach(model, []), data, 12, lr=1e-2)
    return model


def _prune(model, method, data, total=12):
    """``total`` Adam steps of the digits with ``method``; returns per step (λ before the step's
    controller update, hard-mask weight sparsity it saw) and the finalized model."""
    session, opt = _session(model, method, total)
    seen = []
    batches = (b for _ in range(total) for b in data.train)
    for step, (x_seq, y) in zip(range(total), batches, strict=False):
        out = model(x_seq)
        loss = F.cross_entropy(out.mean(0), y) + session.loss(x_seq, out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append((method.lam_, 1 - method.kept()["weights"]))
        session.after_step(progress=(step + 1) / total)
        reset_state(model)
    return seen, session.finalize()


@pytest.mark.parametrize("target", [0.3, 0.9])
def test_sparsity_target_is_met_on_a_trained_model(target, trained, data):
    model = copy.deepcopy(trained)
    names = [n for n, _ in select(model)]
    n = sum(m.weight.numel() for _, m in select(model))
    _, plain = _prune(model, SOPsAwarePruning(sparsity=target), data)
    zeros = sum(int((m.weight == 0).sum()) for _, m in select(plain))
    assert zeros == round(target * n)  # the exact adjustment: kept weights are trained, non-zero
    assert abs(weight_sparsity(plain, names) - target) <= 0.01


def test_controller_calibrates_lambda_then_moves_it_toward_the_target(trained, data):
    """Step 1 runs without penalty and calibrates λ₀; every later search step multiplies λ by
    exp(GAIN · (target − hard-mask sparsity)); the search's own masks (before the exact
    adjustment at the switch) then sit near the target: λ does the pruning, not finalize."""
    target, total = 0.9, 16
    method = SOPsAwarePruning(sparsity=target)
    seen, _ = _prune(copy.deepcopy(trained), method, data, total)
    search = round(0.5 * total)
    lams = [lam for lam, _ in seen] + [method.lam_]
    assert lams[0] is None and lams[1] > 0  # calibrated after the first (penalty-free) step
    moved = 0
    for t in range(1, search):  # controller steps 2..S: pure Python float arithmetic
        expect = lams[t] * math.exp(GAIN * (target - seen[t][1]))
        assert lams[t + 1] == pytest.approx(expect, rel=1e-12)
        moved += lams[t + 1] != lams[t]
    assert moved == search - 1 and max(lams[1:]) > 1.2 * min(lams[1:])
    before_switch = seen[search - 1][1]
    assert seen[0][1] < 0.6 and abs(before_switch - target) < 0.03  # λ got the masks there
    assert lams[search + 1:] == [lams[search]] * (total - search)  # frozen while fine-tuning


def test_a_target_and_the_paper_knob_together_are_refused_and_the_default_is_a_target():
    for kwargs, message in [(dict(sparsity=0.5, penalty=1e-6), "set sparsity or penalty"),
                            (dict(neuron_sparsity=0.5, penalty=1e-6),
                             "set neuron_sparsity or penalty"),
                            (dict(sparsity=1.0), "sparsity must"),
                            (dict(neuron_sparsity=-0.1), "neuron_sparsity must")]:
        with pytest.raises(ValueError, match=message) as e:
            SOPsAwarePruning(**kwargs)
        assert "\n" not in str(e.value)
    default = SOPsAwarePruning()
    assert (default.sparsity, default.penalty, default.neuron_sparsity) == (0.8, None, None)
    assert default.search == 0.5 and SOPsAwarePruning(penalty=1e-6).search == 0.8
    for method in (default, SOPsAwarePruning(penalty=5e-6)):  # both round-trip through YAML
        spec = yaml.safe_load(yaml.safe_dump(method_spec(method)))
        assert SOPsAwarePruning(**{k: v for k, v in spec.items() if k != "name"}) == method


def test_paper_mode_keeps_the_fixed_lambda_and_its_own_sparsity(trained, data):
    method = SOPsAwarePruning(penalty=1e-4)
    seen, plain = _prune(copy.deepcopy(trained), method, data)
    assert {lam for lam, _ in seen} == {1e-4}  # never calibrated nor controlled
    # the finalized zeros are exactly the search's own hard masks: no adjustment
    assert sum(int((m.weight == 0).sum()) for _, m in select(plain)) == round(
        seen[-1][1] * sum(m.weight.numel() for _, m in select(plain)))
