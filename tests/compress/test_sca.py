"""SCA (Li et al., ICML 2024, and its released code): activity score, keep α + regrow β by |∂L/∂γ|
every epoch, our corrections (after-BN gates, dense regrowth, gradual schedule, floor), physical
removal, and the channel_sparsity target α is calibrated to."""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F

from _exact import dyadic, dyadic_
from spikecompress.compress import attach
from spikecompress.compress.contract import TINY_MODELS as TINY
from spikecompress.compress.contract import check_method
from spikecompress.compress.prune.channel_mask import channel_mask, gate_of
from spikecompress.compress.prune.sca import SCA
from spikecompress.data import DataConfig, load_data
from spikecompress.models import build, from_spec
from spikecompress.snn import reset_state

ALL = {"after_bn": True, "dense_regrow": True, "gradual": True, "until": 1.0, "floor": 0.1}


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


def _conv(widths=(4, 8), **kw):
    torch.manual_seed(0)
    return build("conv_net", in_channels=1, input_size=8, classes=10, widths=list(widths), **kw)


def _batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.rand(2, 8, 1, 8, 8, generator=g) * 3, torch.randint(0, 10, (8,), generator=g)


def _start(model, method, total, spe, lr=0.05):
    session = attach(model, [method])
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    session.bind(opt, total_steps=total, steps_per_epoch=spe)
    return session, opt


def _train(model, session, opt, steps, total, first=0, events=None):
    """Steps first..first+steps-1; per update: (progress, masks after)."""
    method = session.methods[0]
    for step in range(first, first + steps):
        x_seq, y = _batch(step)
        out = model(x_seq)
        loss = F.cross_entropy(out.mean(0), y) + session.loss(x_seq, out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n = method.updates_
        session.after_step(progress=(step + 1) / total)
        if events is not None and method.updates_ > n:
            events.append((session.ctx.progress, {k: v.clone() for k, v in method.masks_.items()}))
        reset_state(model)


def _bn_taps(model, names):
    """Forward hooks keeping each BN's input and output of the last forward."""
    seen, modules = {}, dict(model.named_modules())
    for n in names:
        modules[n].register_forward_hook(
            lambda m, i, o, n=n: seen.__setitem__(n, (i[0], o)))
    return seen


def _oracle_loss(seen, c):
    """Σ_c C_c·<y_c, sg(x̂_c)>/n: ∂L/∂(γ⊙m)_c = C_c·mean(x̂_c²) ≈ C_c, 0 when x = 0."""
    total = 0.0
    for n, (x, y) in seen.items():
        dims = [d for d in range(x.dim()) if d != 2]
        xhat = (x - x.mean(dims, keepdim=True)) / (x.var(dims, unbiased=False, keepdim=True)
                                                    + 1e-5).sqrt()
        total = total + (c[n].view(1, 1, -1, 1, 1) * y * xhat.detach()).mean(dims).sum()
    return total


def _expected(scores, grads, alpha, beta):
    """Independent rule: global top ⌊Nα⌋ by score, then top ⌊Nβ⌋ of the rest by |grad|."""
    order = _ranked(scores, list(scores))
    kept = set(order[: int(len(order) * alpha)])
    rest = [gc for gc in _ranked(grads, list(scores)) if gc not in kept]
    return kept | set(rest[: int(len(order) * beta)])


def _as_set(masks):
    return {(gi, c) for gi, n in enumerate(masks) for c in range(len(masks[n])) if masks[n][c]}


def _ranked(values, names):
    """[(gi, c)] by value descending; ties: earlier group, lower index (last = dropped first)."""
    flat = [(-float(v), gi, c) for gi, n in enumerate(names) for c, v in enumerate(values[n])]
    return [(gi, c) for _, gi, c in sorted(flat)]


def _one_shot_lowest_firing(model, x_seq, names, keep):
    """The superficial version: prune the lowest-firing channels once, globally."""
    modules, rates = dict(model.named_modules()), {}
    hooks = [modules[n].register_forward_hook(
        lambda m, i, o, n=n: rates.__setitem__(n, o.detach().mean((0, 1, 3, 4)))) for n in names]
    model(x_seq)
    reset_state(model)
    for h in hooks:
        h.remove()
    order = _ranked(rates, names)
    return set(order[: int(len(order) * keep)])


def _regrowth_event(corrections, epochs=1, score="activity"):
    """conv_net [4, 8] (N = 12), α = 0.5, β = 0.25, lr 0; per epoch one forward and the oracle
    loss. X = the lowest-scored channel of epoch 1 gets the largest |C| in the last epoch and the
    smallest before (with 2 epochs it is pruned at the first update). Returns (method, X,
    scores, the |γ-gradients| regrowth should rank by (read here), masks) of the last update."""
    model = _conv()
    method = SCA(alpha=0.5, beta=0.25, l1=0.0, score=score, corrections=corrections)
    session, opt = _start(model, method, epochs, 1, lr=0.0)
    bns = [model.features[0].bn, model.features[1].bn]
    seen = _bn_taps(model, ["features.0.bn", "features.1.bn"])
    names, x = [g.name for g in method.groups_], None
    for epoch in range(epochs):
        model(_batch(epoch)[0])
        scores = method.scores()
        x = x or _ranked(scores, names)[-1]
        perm = torch.randperm(12, generator=torch.Generator().manual_seed(epoch)).float() + 2
        perm[4 * x[0] + x[1]] = 100.0 if epoch == epochs - 1 else 1.0  # X's flat index
        c = {"features.0.bn": perm[:4], "features.1.bn": -perm[4:]}  # signs must not matter
        opt.zero_grad()
        _oracle_loss(seen, c).backward()
        opt.step()
        dense = corrections.get("dense_regrow")
        grads = {n: (gate_of(b, "weight").grad if dense else b.parametrizations.weight.original.grad
                     ).abs() for n, b in zip(names, bns, strict=True)}
        session.after_step(progress=(epoch + 1) / epochs)
        reset_state(model)
    return method, x, scores, grads, method.masks_


# -- (1) BN leak: gates after BN silence a channel exactly; masking the conv output does not ----
def _consumer_test(model, channel, x_seq):
    """Does perturbing features.1.conv's input weights of ``channel`` change the output?"""
    ref = model(x_seq)
    reset_state(model)
    w = model.features[1].conv.weight
    with torch.no_grad():
        w[:, channel] += torch.randn_like(w[:, channel])
    out = model(x_seq)
    reset_state(model)
    return torch.equal(ref, out)


def test_after_bn_gate_is_exactly_zero_downstream_while_conv_output_masking_leaks():
    model = _conv()
    method = SCA(alpha=0.5, beta=0.0, l1=0.0, corrections={"after_bn": True},
                 exclude=["features\\.1\\..*"])
    session, opt = _start(model, method, 8, 4)
    _train(model, session, opt, 4, 8)
    off = int((method.masks_["features.0.conv"] == 0).nonzero()[0])
    x_seq = _batch(50)[0]
    _train(model, session, opt, 3, 8, first=4)  # momentum cannot revive it either
    for mode in (True, False):
        model.train(mode)
        assert _consumer_test(model, off, x_seq)
    leaky = _conv()  # the superficial version: the conv output multiplied by the mask before BN
    mask = torch.ones(4)
    mask[off] = 0
    leaky.features[0].conv.register_forward_hook(lambda m, i, o: o * mask.view(1, 1, 4, 1, 1))
    with torch.no_grad():
        leaky.features[0].bn.bias.fill_(2.0)  # a trained BN's β, large enough to fire
    leaky.train()
    assert not _consumer_test(leaky, off, x_seq)  # BN turns the zero channel into β


def test_code_default_zeroes_in_place_once_and_momentum_revives_it():
    model = _conv()
    method = SCA(alpha=0.5, beta=0.0, l1=0.0)
    session, opt = _start(model, method, 4, 2)
    _train(model, session, opt, 2, 4)
    off = (method.masks_["features.1.conv"] == 0).nonzero().flatten()
    bn, conv = model.features[1].bn, model.features[1].conv
    assert len(off) > 0 and torch.all(conv.weight[off] == 0)
    assert torch.all(bn.weight[off] == 0) and torch.all(bn.bias[off] == 0)
    assert torch.all(channel_mask(model, method.groups_[1]) == 1)  # no gate: in-place only
    _train(model, session, opt, 1, 4, first=2)
    assert bool((conv.weight[off] != 0).any())  # SGD momentum revived the pruned filters


# -- (2) regrowth by |∂L/∂γ| ---------------------------------------------------------------------
@pytest.mark.parametrize("corrections", [{}, {"after_bn": True}])
def test_regrowth_picks_the_just_dropped_channels_with_the_largest_gamma_gradient(corrections):
    method, x, scores, grads, masks = _regrowth_event(corrections)
    assert _as_set(masks) == _expected(scores, grads, 0.5, 0.25)
    assert x in _as_set(masks)  # the lowest-scored channel came back by its gradient
    assert int(sum(m.sum() for m in masks.values())) == 6 + 3


@pytest.mark.parametrize("corrections, returns", [
    ({}, False), ({"after_bn": True}, False), ({"after_bn": True, "dense_regrow": True}, True)])
def test_only_dense_regrowth_brings_a_long_pruned_channel_back(corrections, returns):
    method, x, scores, grads, masks = _regrowth_event(corrections, epochs=2)
    assert float(scores[method.groups_[x[0]].name][x[1]]) == 0  # pruned in epoch 1: silent
    assert (x in _as_set(masks)) == returns
    assert _as_set(masks) == _expected(scores, grads, 0.5, 0.25)


# -- (3) the number of active channels follows the schedule ---------------------------------------
def _counts(corrections):
    model = _conv((8, 16))
    method = SCA(alpha=0.5, beta=0.1, corrections=corrections)
    session, opt = _start(model, method, 8, 2)
    events = []
    _train(model, session, opt, 8, 8, events=events)
    return model, method, events


@pytest.mark.parametrize("corrections", [{}, {"after_bn": True}, {"gradual": True, "until": 1.0}])
def test_active_channels_follow_the_schedule_after_every_update(corrections):
    model, method, events = _counts(corrections)
    assert [p for p, _ in events] == [0.25, 0.5, 0.75, 1.0]  # one update per epoch, to the end
    for progress, masks in events:
        assert sum(int(m.sum()) for m in masks.values()) == _schedule(progress, corrections)
    gated = sum(int(channel_mask(model, g).sum()) for g in method.groups_)
    live = sum(int((model.features[i].bn.weight != 0).sum()) for i in (0, 1))
    assert (gated if corrections.get("after_bn") else live) == _schedule(1.0, corrections)


def _schedule(p, corrections, n=24, alpha=0.5, beta=0.1):
    if corrections.get("gradual") and p < 1.0:
        alpha = alpha + (1 - alpha - beta) * (1 - p) ** 3  # cubic, until = 1
    return int(n * alpha + 1e-9) + int(n * beta + 1e-9)


def test_per_group_floor_keeps_a_fraction_of_every_group():
    model = _conv((8, 16))
    method = SCA(alpha=0.1, beta=0.0, corrections={"floor": 0.5})
    session, opt = _start(model, method, 2, 2)
    _train(model, session, opt, 2, 2)
    assert [int(m.sum()) for m in method.masks_.values()] == [4, 8]  # ⌈0.5·C⌉ > ⌊24·0.1⌋ = 2


# -- (4) the superficial one-shot "prune lowest firing" fails (2) and (3) ------------------------
def test_one_shot_lowest_firing_fails_the_regrowth_and_schedule_checks():
    _, x, scores, grads, masks = _regrowth_event({}, score="firing")
    acts = ["features.0.act", "features.1.act"]
    static = _one_shot_lowest_firing(_conv(), _batch(0)[0], acts, keep=0.75)
    assert _as_set(masks) == _expected(scores, grads, 0.5, 0.25) and x in _as_set(masks)
    assert static != _expected(scores, grads, 0.5, 0.25) and x not in static  # fails (2)
    _, _, events = _counts({"gradual": True, "until": 1.0})
    want = [_schedule(p, {"gradual": True}) for p, _ in events]
    assert [sum(int(m.sum()) for m in e.values()) for _, e in events] == want  # SCA passes (3)
    model = _conv((8, 16))
    static = _one_shot_lowest_firing(model, _batch(0)[0], acts, keep=0.6)  # once, never again
    assert [len(static)] * len(want) != want


# -- (5) the score ---------------------------------------------------------------------------------
def _hand_lif(x_seq, tau=2.0, v_th=1.0):
    """LIF with hard reset to 0 by hand: spikes and membrane after reset, [T, B, ...] each."""
    v, spikes, mems = torch.zeros_like(x_seq[0]), [], []
    for x in x_seq:
        h = (1 - 1 / tau) * v + x / tau
        s = (h >= v_th).float()
        v = h * (1 - s)
        spikes.append(s)
        mems.append(v)
    return torch.stack(spikes), torch.stack(mems)


@pytest.mark.parametrize("model_name", ["conv_net", "sew_resnet"])
@pytest.mark.parametrize("kind", ["activity", "firing", "membrane"])
def test_score_is_the_batch_mean_of_spike_plus_abs_membrane_averaged_over_neurons(model_name, kind):
    torch.manual_seed(0)
    model = build(classes=10, **TINY[model_name])
    method = SCA(score=kind)
    attach(model, [method])
    modules, inputs = dict(model.named_modules()), {}
    for n in method.neuron_names():
        modules[n].register_forward_pre_hook(
            lambda m, i, n=n: inputs.setdefault(n, []).append(i[0].detach()))
    for step in range(3):
        model.train(step != 1)  # the eval-mode batch must not count
        out = model(_batch(step)[0])
        reset_state(model)
    out.sum().backward()  # the update below regrows by ∂L/∂γ
    got = method.scores()
    for g in method.groups_:
        per_neuron = []
        for n in g.neurons:
            parts = [_hand_lif(x) for x in (inputs[n][0], inputs[n][2])]
            f = {"activity": lambda s, u: s + u.abs(), "firing": lambda s, u: s,
                 "membrane": lambda s, u: u.abs()}[kind]
            per_neuron.append(sum(f(s, u).mean((0, 1, 3, 4)) for s, u in parts) / 2)
        want = torch.stack(per_neuron).mean(0)
        assert torch.allclose(got[g.name], want, atol=1e-6), g.name
        assert float(got[g.name].sum()) > 0
    method.update(model, 1.0)
    with pytest.raises(RuntimeError, match="no training-mode forward"):
        method.scores()  # reset after every update


# -- (6) contract, physical removal, exact resume, configuration --------------------------------
@pytest.mark.parametrize("model_name", list(TINY))
def test_contract_and_physically_smaller_model_whose_spec_rebuilds_it(model_name, data):
    for cls in (SCA, functools.partial(SCA, corrections=ALL)):
        torch.manual_seed(0)
        dense = build(classes=10, **TINY[model_name])
        n_dense = sum(p.numel() for p in dense.parameters())
        out = check_method(cls, dense, data)
        n_out = sum(p.numel() for p in out.parameters())
        assert (n_out == n_dense) if model_name == "mlp" else (n_out < n_dense)
        from_spec(out.spec).load_state_dict(out.state_dict())  # strict: shapes and keys fit


def test_finalize_removes_exactly_the_masked_channels_and_keeps_the_function():
    model = _conv((8, 16))
    method = SCA(alpha=0.5, beta=0.1, corrections={"after_bn": True})
    session, opt = _start(model, method, 4, 2)
    _train(model, session, opt, 4, 4)
    kept = [int(m.sum()) for m in method.masks_.values()]
    # dyadic weights, BN and input (tests/_exact.py): the smaller model sums other terms in
    # another order, and must still equal the gated one bit for bit (a tolerance would not
    # survive a flipped spike)
    dyadic_(model)
    x_seq = dyadic(_batch(99)[0])
    ref = model.eval()(x_seq)
    reset_state(model)
    small = session.finalize().eval()
    assert small.spec["widths"] == kept and sum(kept) == 14
    assert torch.equal(small(x_seq), ref)
    assert all(not getattr(m, "record_v", False) for m in small.modules())


@pytest.mark.parametrize("corrections", [{}, ALL])
def test_killed_and_resumed_training_equals_uninterrupted(corrections):
    def fresh():
        model = _conv()
        session, opt = _start(model, SCA(alpha=0.5, beta=0.2, corrections=corrections), 8, 2)
        return model, session, opt

    model, session, opt = fresh()
    _train(model, session, opt, 8, 8)
    ref, ref_masks = copy.deepcopy(model.state_dict()), session.methods[0].masks_
    model, session, opt = fresh()
    _train(model, session, opt, 3, 8)  # killed mid-epoch: partial score sums must survive
    scores = session.methods[0].scores()
    saved = (copy.deepcopy(model.state_dict()), session.state_dict(),
             copy.deepcopy(opt.state_dict()), session.ctx.step, session.ctx.progress)
    model, session, opt = fresh()
    model.load_state_dict(saved[0])
    session.load_state_dict(*saved[1])
    opt.load_state_dict(saved[2])
    session.ctx.step, session.ctx.progress = saved[3], saved[4]
    assert all(torch.equal(scores[k], v) for k, v in session.methods[0].scores().items())
    _train(model, session, opt, 5, 8, first=3)
    out = model.state_dict()
    assert set(out) == set(ref) and all(torch.equal(out[k], ref[k]) for k in ref)
    assert all(torch.equal(ref_masks[k], v) for k, v in session.methods[0].masks_.items())
    assert session.methods[0].updates_ == 4


def test_l1_term_gives_l1_sign_w_on_the_pruned_convs_only():
    model = _conv()
    method = SCA(l1=0.5)
    session = attach(model, [method])
    x_seq = _batch(0)[0]
    out = model(x_seq)
    session.loss(x_seq, out).backward()
    for i in (0, 1):
        w = model.features[i].conv.weight
        assert torch.equal(w.grad, 0.5 * torch.sign(w.detach()))
    assert model.classifier.fc.weight.grad is None


def test_groups_default_to_convs_and_include_exclude_refine():
    def names(**kw):
        return [g.name for g in SCA(**kw).select(_conv(hidden=[6]))]

    assert names() == ["features.0.conv", "features.1.conv"]  # hidden FC group not pruned
    assert names(include=["classifier\\..*"]) == ["classifier.fc0"]
    assert names(exclude=["features\\.0\\..*"]) == ["features.1.conv"]


def test_invalid_hyper_parameters_raise_one_line_errors_naming_the_field():
    for kwargs, name in [
        (dict(alpha=0.0), "alpha"), (dict(alpha=0.8, beta=0.3), "beta"),
        (dict(score="rate"), "score"), (dict(l1=-1.0), "l1"), (dict(include=["("]), "include"),
        (dict(corrections={"regrow": True}), "corrections"),
        (dict(corrections={"after_bn": 1}), "corrections.after_bn"),
        (dict(corrections={"until": 0.0}), "corrections.until"),
        (dict(corrections={"floor": 2.0}), "corrections.floor"),
        (dict(alpha=0.8, corrections={"dense_regrow": True}), "corrections.dense_regrow"),
        (dict(channel_sparsity=0.3, alpha=0.8), "channel_sparsity and alpha"),
        (dict(channel_sparsity=0.95), "beta"), (dict(channel_sparsity=1.0), "channel_sparsity"),
    ]:
        with pytest.raises(ValueError, match=f"^{name}") as e:
            SCA(**kwargs)
        assert "\n" not in str(e.value)
    assert SCA(corrections={"gradual": True}).corrections == {  # the target mode gates after BN
        "after_bn": True, "dense_regrow": False, "gradual": True, "until": 0.5, "floor": 0.0}
    assert SCA(alpha=0.8).corrections["after_bn"] is False  # the paper's knob: the code's masking
    session = attach(_conv(), [SCA()])
    with pytest.raises(RuntimeError, match="steps_per_epoch"):
        session.after_step(progress=0.5)


# -- (7) the target: channel_sparsity calibrates α -----------------------------------------------
@pytest.mark.parametrize("target, floor", [(0.25, 0.0), (0.5, 0.0), (0.75, 0.4)])
def test_channel_sparsity_sets_the_kept_count_at_every_update(target, floor):
    model = _conv((8, 16))  # N = 24: keep K = N − round(N·s), ⌊N·β⌋ = 2 of them by regrowth
    method = SCA(channel_sparsity=target, beta=0.1, corrections={"floor": floor})
    assert method.alpha is None and method.corrections["after_bn"]  # the driver's gates
    session, opt = _start(model, method, 6, 2)
    events = []
    _train(model, session, opt, 6, 6, events=events)
    kept = 24 - round(24 * target)
    if floor:  # ⌈0.4·8⌉ + ⌈0.4·16⌉ = 4 + 7 = 11 > K − 2 = 4 by score: the floors keep 11 and
        kept = 11  # nothing is left to regrow (K = 6 cannot be reached)
    assert [sum(int(m.sum()) for m in e.values()) for _, e in events] == [kept] * 3
    gated = sum(int(channel_mask(model, g).sum()) for g in method.groups_)
    assert gated == kept
