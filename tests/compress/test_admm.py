"""ADMM pruning (spec §2.1) and the spike-rate penalty (activity regularisation)."""

import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from spikecompress.compress import attach, is_plain, select
from spikecompress.compress.activity.penalty import SpikeRecorder, spike_rate_penalty
from spikecompress.compress.contract import TINY_MODELS as TINY
from spikecompress.compress.contract import _train_steps, check_method, method_spec
from spikecompress.compress.method import Context
from spikecompress.compress.prune.admm import ADMMPruning, project, topk_mask
from spikecompress.compress.prune.masks import mask_of
from spikecompress.data import DataConfig, load_data
from spikecompress.measurement.sparsity import weight_sparsity
from spikecompress.models import build
from spikecompress.snn import IF, LIF, reset_state


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


def _model(seed=0):
    torch.manual_seed(seed)
    return build("conv_net", in_channels=1, input_size=8, classes=10, widths=[4, 8])


def _batch(step):
    g = torch.Generator().manual_seed(step)
    return torch.rand(2, 8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


def _train(model, session, opt, first, steps, total):
    """Optimizer steps first..first+steps-1 of a stage of ``total`` steps (data = f(step))."""
    for step in range(first, first + steps):
        x_seq, y = _batch(step)
        out = model(x_seq)
        loss = F.cross_entropy(out.mean(0), y) + session.loss(x_seq, out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=(step + 1) / total)
        reset_state(model)


def _weights(method):
    return [m.weight.detach().clone() for m in method.targets_]


# -- defining behaviour 1: exact projection --------------------------------------------------------
def test_projection_keeps_exactly_k_largest_with_deterministic_ties():
    t = torch.tensor([3.0, -1.0, 2.0, -2.0, 2.0, 0.5])
    assert topk_mask(t.abs(), 3).tolist() == [True, False, True, True, False, False]
    assert torch.equal(project(t, 3), torch.tensor([3.0, 0, 2.0, -2.0, 0, 0]))
    # the official percentile rule (|w| < t pruned) keeps every tie: 4 entries, not k = 3
    official = (t.abs() >= np.percentile(t.abs().numpy(), 50)).sum()
    assert int(official) == 4
    # Z-step on a net: each Z_l has exactly k_l non-zeros, the k_l largest |W_l + U_l|
    model = _model()
    method = ADMMPruning(sparsity=0.7, scope="layer", update_every=1)
    session = attach(model, [method])
    torch.manual_seed(1)
    method.u_ = [torch.randn_like(u) * 0.1 for u in method.u_]
    v = [w + u for w, u in zip(_weights(method), method.u_, strict=True)]
    session.after_step(progress=0.1)
    for z, vl, k in zip(method.z_, v, method.ks_, strict=True):
        assert k == round(0.3 * z.numel()) and int((z != 0).sum()) == k
        kept, dropped = vl.abs()[z != 0], vl.abs()[z == 0]
        assert kept.min() >= dropped.max()
        assert torch.equal(z[z != 0], vl[z != 0])


# -- defining behaviours 2 and 4: the dual accumulates; a superficial version does not -------------
def test_dual_accumulates_residual_and_superficial_penalty_differs():
    model = _model()
    method = ADMMPruning(sparsity=0.75, scope="layer", update_every=1, rho=1.0)
    session = attach(model, [method])
    session.after_step(progress=0.1)  # first update with W fixed: U_1 = W − Proj(W)
    u_prev = [u.clone() for u in method.u_]
    assert any(bool(u.abs().sum() > 0) for u in u_prev)
    ws = _weights(method)
    session.after_step(progress=0.2)  # W still fixed (no optimizer step)
    for u, up, w, z in zip(method.u_, u_prev, ws, method.z_, strict=True):
        assert torch.allclose(u, up + (w - z))
        assert torch.equal(z, project(w + up, int((z != 0).sum())))
    # superficial: penalty toward Proj(W) with no dual (U ≡ 0, Z = Proj(W) after every update)
    z_sup = [project(w, k) for w, k in zip(ws, method.ks_, strict=True)]
    u_sup = [torch.zeros_like(w) for w in ws]
    assert not all(torch.allclose(a, b) for a, b in zip(method.u_, u_sup, strict=True))
    grad_admm = torch.autograd.grad(
        method.coupling_loss(), method.targets_[0].parametrizations.weight.original
    )[0]
    grad_sup = ws[0] - z_sup[0]  # ρ (W − Proj(W)), ρ = 1
    assert torch.allclose(grad_admm, ws[0] - method.z_[0] + method.u_[0])
    assert not torch.allclose(grad_admm, grad_sup)


# -- defining behaviour 3: exact k after the hard prune, no zombie weights under Adam --------------
@pytest.mark.parametrize("sparsity", [0.75, {"default": 0.9, r"features\.0\..*": 0.5}])
def test_hard_prune_exact_k_and_pruned_weights_stay_zero_through_adam(sparsity):
    model = _model()
    method = ADMMPruning(sparsity=sparsity, scope="layer", update_every=1, admm_until=0.5)
    session = attach(model, [method])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, session, opt, 0, 4, 8)  # ADMM phase: Adam moments on every weight
    assert method.pruned_
    names = [n for n, _ in select(model)]
    expect = [
        round((1 - method.layer_sparsity(n)) * m.weight.numel())
        for n, m in zip(names, method.targets_, strict=True)
    ]
    assert method.ks_ == expect and (expect[0] == 18 if isinstance(sparsity, dict) else True)
    zero_before = [(w == 0) for w in _weights(method)]
    for m, k in zip(method.targets_, expect, strict=True):
        assert int((m.weight != 0).sum()) == k == int(mask_of(m).mask.sum())
    _train(model, session, opt, 4, 4, 8)  # retraining with the mask fixed
    revived = False
    for m, z in zip(method.targets_, zero_before, strict=True):
        assert torch.equal(m.weight == 0, z)
        revived |= bool((m.parametrizations.weight.original[z] != 0).any())
    assert revived  # Adam moved the pruned originals: zeroing .data once would not have held
    plain = session.finalize()
    assert is_plain(plain)
    assert [int((m.weight != 0).sum()) for _, m in select(plain)] == expect


def test_global_scope_one_threshold_and_finalize_prunes_inside_admm_phase():
    model = _model()
    method = ADMMPruning(sparsity=0.8, scope="global", admm_until=1.0, update_every=1, activity=0.1)
    session = attach(model, [method])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, session, opt, 0, 2, 10)  # stage cut at progress 0.2 < admm_until
    assert not method.pruned_
    plain = session.finalize()
    assert is_plain(plain)  # spike hooks removed
    w = torch.cat([m.weight.flatten() for _, m in select(plain)])
    assert int((w != 0).sum()) == round(0.2 * w.numel())
    per_layer = [float((m.weight != 0).float().mean()) for _, m in select(plain)]
    assert max(per_layer) - min(per_layer) > 0.01  # one global threshold, not per layer


# -- coupling gradients ----------------------------------------------------------------------------
@pytest.mark.parametrize("coupling", ["squared", "norm"])
def test_coupling_gradient_matches_formula(coupling):
    model = _model()
    method = ADMMPruning(sparsity=0.6, coupling=coupling, rho=0.3)
    attach(model, [method])
    torch.manual_seed(2)
    method.u_ = [torch.randn_like(u) for u in method.u_]
    out = torch.zeros(2, 8, 10)
    loss = method.loss(model, None, out, Context())
    originals = [m.parametrizations.weight.original for m in method.targets_]
    grads = torch.autograd.grad(loss, originals)
    for g, w, z, u in zip(grads, _weights(method), method.z_, method.u_, strict=True):
        r = w - z + u
        expect = 0.3 * r if coupling == "squared" else 0.3 * r / r.norm()
        assert torch.allclose(g, expect, atol=1e-6)
    value = sum(
        (w - z + u).pow(2).sum() / 2 if coupling == "squared" else (w - z + u).norm()
        for w, z, u in zip(_weights(method), method.z_, method.u_, strict=True)
    )
    assert loss.item() == pytest.approx(0.3 * value.item(), rel=1e-5)


# -- the activity penalty --------------------------------------------------------------------------
def _toy():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 6), LIF(), nn.Linear(6, 3), IF())
    with torch.no_grad():
        net[0].weight.mul_(4)
        net[2].weight.mul_(4)
    return net


def test_spike_rate_penalty_equals_hand_computation():
    net, x = _toy(), torch.rand(5, 2, 4)  # [T, B, F]
    recorder = SpikeRecorder(net)
    net(x)
    spikes = recorder.take()
    reset_state(net)
    with torch.no_grad():  # by hand, layer by layer, without the hooks' help
        s1 = net[1](net[0](x))
        s2 = net[3](net[2](s1))
    assert 0 < float(s1.mean()) < 1 and 0 < float(s2.mean()) < 1
    got = spike_rate_penalty(spikes, weight=0.5)
    assert got.item() == pytest.approx(0.5 * float(s1.mean() + s2.mean()))
    per_sample = spike_rate_penalty(spikes, weight=0.5, per="sample")
    assert per_sample.item() == pytest.approx(0.5 * float(s1.sum() + s2.sum()) / 2)
    with torch.no_grad():
        net(x)
    assert recorder.take() == {}  # no_grad forwards record nothing
    recorder.remove()
    assert is_plain(net)
    with pytest.raises(ValueError, match="no spikes recorded"):
        spike_rate_penalty({})


def test_activity_gradient_lowers_the_firing_rate_in_every_phase():
    model = _model()
    method = ADMMPruning(activity=1.0, update_every=1, admm_until=0.25, rho=0.0)
    session = attach(model, [method])
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    x_seq, _ = _batch(0)

    def rate():
        rec = SpikeRecorder(model)
        model(x_seq)
        r = spike_rate_penalty(rec.take())
        rec.remove()
        reset_state(model)
        return r.item()

    before = rate()
    for step in range(8):  # penalty alone (the task loss would move the rate either way)
        out = model(x_seq)
        loss = session.loss(x_seq, out)
        if step >= 2:
            assert method.pruned_ and loss.item() > 0  # still on after the hard prune
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=(step + 1) / 8)
        reset_state(model)
    assert rate() < 0.5 * before


# -- schedule and resume ---------------------------------------------------------------------------
def test_update_every_zero_is_once_per_epoch_and_needs_bind():
    model = _model()
    method = ADMMPruning(update_every=0)
    session = attach(model, [method])
    with pytest.raises(RuntimeError, match="session.bind"):
        session.after_step(progress=0.1)
    session.bind(torch.optim.Adam(model.parameters()), total_steps=12, steps_per_epoch=3)
    session.ctx.step = 0
    changed = []
    for step in range(1, 6):
        before = [u.clone() for u in method.u_]
        session.after_step(progress=step / 12)
        changed.append(not all(torch.equal(a, b) for a, b in zip(before, method.u_, strict=True)))
    assert changed == [False, False, True, False, False]


def _run(kill_at, total=10):
    """Train ``total`` steps; when ``kill_at`` is set, checkpoint there and resume in a fresh
    model, method, session and optimizer. Returns the finalized weights."""
    kwargs = dict(sparsity=0.7, update_every=2, admm_until=0.5, activity=0.05)
    model = _model()
    session = attach(model, [ADMMPruning(**kwargs)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, session, opt, 0, kill_at or total, total)
    if kill_at:
        saved = (model.state_dict(), session.state_dict(), opt.state_dict())
        model = _model(seed=5)  # different init: everything must come from the checkpoint
        session = attach(model, [ADMMPruning(**kwargs)])
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.load_state_dict(saved[0])
        session.load_state_dict(*saved[1])
        opt.load_state_dict(saved[2])
        session.ctx.step, session.ctx.progress = kill_at, kill_at / total
        _train(model, session, opt, kill_at, total - kill_at, total)
    return [m.weight.detach().clone() for _, m in select(session.finalize())]


@pytest.mark.parametrize("kill_at", [3, 7])  # inside the ADMM phase (odd: mid-period), after it
def test_killed_and_resumed_training_equals_uninterrupted(kill_at):
    straight, resumed = _run(None), _run(kill_at)
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(straight, _run(None, total=12), strict=False))


# -- contract and validation -----------------------------------------------------------------------
@pytest.mark.parametrize("model_name", list(TINY))
def test_contract(model_name, data):
    torch.manual_seed(0)
    check_method(ADMMPruning, build(classes=10, **TINY[model_name]), data)


def test_contract_with_activity_and_norm_coupling(data):
    torch.manual_seed(0)
    cls = functools.partial(ADMMPruning, activity=0.1, coupling="norm", update_every=1)
    check_method(cls, build(classes=10, **TINY["conv_net"]), data)


def test_bad_hyper_parameters_name_the_field():
    for kwargs, field in [
        (dict(sparsity=1.0), "sparsity"),
        (dict(sparsity={"(": 0.5}), "sparsity"),
        (dict(sparsity={".*": 0.5}, scope="global"), "sparsity"),
        (dict(scope="row"), "scope"),
        (dict(rho=-1.0), "rho"),
        (dict(coupling="l1"), "coupling"),
        (dict(admm_until=0.0), "admm_until"),
        (dict(update_every=-1), "update_every"),
        (dict(activity=-0.1), "activity"),
    ]:
        with pytest.raises(ValueError, match=field):
            ADMMPruning(**kwargs)
    with pytest.raises(ValueError, match="no pattern matches"):
        attach(_model(), [ADMMPruning(sparsity={"classifier.*": 0.5})])
    with pytest.raises(ValueError, match="several patterns"):
        attach(_model(), [ADMMPruning(sparsity={"default": 0.5, "classifier.*": 0.5, ".*fc": 0.6})])


# -- the target: one sparsity is one global budget, met exactly; a mapping is per layer ------------
@pytest.fixture(scope="module")
def trained(data):
    """A small conv net trained dense on the digits for a few steps."""
    torch.manual_seed(0)
    model = build("conv_net", in_channels=1, input_size=8, classes=10, widths=[8, 16])
    _train_steps(model, attach(model, []), data, 12, lr=1e-2)
    return model


@pytest.mark.parametrize("target", [0.5, 0.9])
def test_sparsity_target_is_met_on_a_trained_model(target, trained, data):
    model = copy.deepcopy(trained)
    method = ADMMPruning(sparsity=target)
    assert method.scope == "global"
    names = [n for n, _ in select(model)]
    n = sum(m.weight.numel() for _, m in select(model))
    session = attach(model, [method])
    _train_steps(model, session, data, 8, lr=1e-3, per_epoch=3)
    plain = session.finalize()
    zeros = sum(int((m.weight == 0).sum()) for _, m in select(plain))
    assert zeros == round(target * n)  # one global top-k; kept weights are trained, non-zero
    assert abs(weight_sparsity(plain, names) - target) <= 0.01


def test_scope_follows_the_form_of_sparsity_and_round_trips_through_yaml():
    mapping = {"default": 0.9, r"features\.0\..*": 0.5}
    assert ADMMPruning().scope == "global" and ADMMPruning(sparsity=mapping).scope == "layer"
    assert ADMMPruning(sparsity=0.5, scope="layer").scope == "layer"
    for method in (ADMMPruning(), ADMMPruning(sparsity=mapping), ADMMPruning(scope="layer")):
        spec = yaml.safe_load(yaml.safe_dump(method_spec(method)))
        assert ADMMPruning(**{k: v for k, v in spec.items() if k != "name"}) == method
