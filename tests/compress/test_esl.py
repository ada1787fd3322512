"""ESL-SNN (spec pruning.md §2.2, §12.6): ER init, prune and regrow at constant layer density."""

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from spikecompress.compress import attach, select
from spikecompress.compress.contract import TINY_MODELS as TINY
from spikecompress.compress.contract import _train_steps, check_method, method_spec
from spikecompress.compress.prune.esl import ESLSNN, er_densities
from spikecompress.compress.prune.masks import mask_of
from spikecompress.data import DataConfig, load_data
from spikecompress.measurement.sparsity import weight_sparsity
from spikecompress.models import build
from spikecompress.snn import reset_state

FAST = {"update_every": 2, "drop_fraction": 0.3, "decay": "cosine", "until": 0.75}


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


def _conv():
    torch.manual_seed(0)
    return build("conv_net", in_channels=1, input_size=8, classes=10, widths=[8, 16])


def _batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.rand(2, 8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


def _masks(method):
    return [mask_of(m).mask.detach().bool().clone() for m in method.targets_]


def _train(model, session, opt, steps, first=0, total=12, events=None):
    """Steps first..first+steps-1 of ``total``; per event: (progress, masks before, after)."""
    method = session.methods[0]
    for step in range(first, first + steps):
        x_seq, y = _batch(step)
        out = model(x_seq)
        loss = F.cross_entropy(out.mean(0), y) + session.loss(x_seq, out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        before, n_events = _masks(method), method.events_
        session.after_step(progress=(step + 1) / total)
        if events is not None and method.events_ > n_events:
            events.append((session.ctx.progress, before, _masks(method)))
        reset_state(model)


def _event_counts(before, after):
    """Per layer: (nnz before, nnz after, #pruned, #grown), exact integers."""
    return [(int(b.sum()), int(a.sum()), int((b & ~a).sum()), int((~b & a).sum()))
            for b, a in zip(before, after, strict=True)]


def _density_kept(before, after):  # defining behaviour (1)
    return all(nb == na for nb, na, _, _ in _event_counts(before, after))


def _pruned_is_grown(before, after):  # defining behaviour (2)
    return all(p == g for _, _, p, g in _event_counts(before, after))


def _zeta(progress, rewire):  # ζ_t: drop_fraction · ½(1 + cos(π t / until)), independent formula
    return rewire["drop_fraction"] * 0.5 * (1 + math.cos(math.pi * progress / rewire["until"]))


def _run_events(grow="gradient", steps=12):
    model = _conv()
    method = ESLSNN(density=0.3, grow=grow, rewire=FAST, seed=3)
    session = attach(model, [method])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    session.bind(opt)
    events = []
    _train(model, session, opt, steps, total=steps, events=events)
    return method, events


# -- defining behaviours (1), (2), (4) -------------------------------------------------------------
@pytest.mark.parametrize("grow", ["gradient", "random"])
def test_every_layer_keeps_its_exact_density_through_each_event(grow):
    method, events = _run_events(grow)
    assert len(events) == 4  # steps 2, 4, 6, 8 (progress < 0.75)
    for _, before, after in events:
        assert _density_kept(before, after)
        assert any(p > 0 for *_, p, _ in _event_counts(before, after))  # connectivity did move


@pytest.mark.parametrize("grow", ["gradient", "random"])
def test_pruned_equals_grown_equals_round_zeta_nnz(grow):
    _, events = _run_events(grow)
    for progress, before, after in events:
        assert _pruned_is_grown(before, after)
        for b, (nnz, _, pruned, _) in zip(before, _event_counts(before, after), strict=True):
            assert pruned == min(round(_zeta(progress, FAST) * nnz), b.numel() - nnz)


def test_superficial_random_rewiring_fails_the_density_and_count_checks():
    """The public 'reimplementation' (spec §2.2): random prune + random regrow over the whole
    tensor, density left to drift. The checks used above must reject it."""
    model = _conv()
    method = ESLSNN(density=0.3, rewire=FAST)
    attach(model, [method])
    g = torch.Generator().manual_seed(0)
    before = _masks(method)
    after = []
    for m in before:
        dropped = (torch.rand(m.shape, generator=g) < 0.3) & m
        regrown = torch.rand(m.shape, generator=g) < 0.3 * m.float().mean()  # whole tensor
        after.append((m & ~dropped) | regrown)
    assert not _density_kept(before, after)
    assert not _pruned_is_grown(before, after)


def _oracle_layer():
    """One bias-free linear layer 20 → 10 and distinct weight magnitudes."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 10, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.randperm(200).float().add(1).view(10, 20) / 200)
    return net


def test_gradient_regrowth_follows_the_gradient_oracle_and_skips_just_dropped():
    """Loss = Σ C ⊙ W_eff, so ∂L/∂W_eff = C exactly (spec §1.5 gradient oracle). The just-dropped
    weights get the largest |C| of all: a rule that let them regrow would pick them."""
    net = _oracle_layer()
    rewire = {"update_every": 1, "drop_fraction": 0.2, "decay": "constant", "until": 1.0}
    method = ESLSNN(density=0.5, grow="gradient", rewire=rewire)
    session = attach(net, [method])
    layer = net[0]
    active = mask_of(layer).mask.bool().clone()
    w_abs = layer.weight.detach().abs().flatten()
    k = round(0.2 * int(active.sum()))
    assert int(active.sum()) == 100 and k == 20
    act_idx = torch.nonzero(active.flatten()).flatten()
    drop_expect = set(act_idx[w_abs[act_idx].argsort()[:k]].tolist())
    c = torch.randperm(200, generator=torch.Generator().manual_seed(1)).float().add(1)
    c[list(drop_expect)] = 1e4  # the largest gradients of all sit on the weights to be dropped
    c = c * torch.where(torch.arange(200) % 2 == 0, 1.0, -1.0)  # signs must not matter: |grad|
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    session.bind(opt)
    loss = (c.view(10, 20) * layer.weight).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    session.after_step(progress=0.5)
    after = mask_of(layer).mask.bool().flatten()
    inact_idx = torch.nonzero(~active.flatten()).flatten()
    grow_expect = set(inact_idx[c[inact_idx].abs().argsort(descending=True)[:k]].tolist())
    dropped = set(torch.nonzero(active.flatten() & ~after).flatten().tolist())
    grown = set(torch.nonzero(~active.flatten() & after).flatten().tolist())
    assert dropped == drop_expect
    assert grown == grow_expect  # (4): every grown position was inactive before, top-|grad|
    assert int(after.sum()) == 100


def test_grown_weights_start_at_exactly_zero_with_fresh_adam_moments():
    model = _conv()
    method = ESLSNN(density=0.3, grow="random", rewire=FAST, seed=1)
    session = attach(model, [method])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    session.bind(opt)
    _train(model, session, opt, 1)  # step 1: no event; Adam state exists now
    with torch.no_grad():  # zombies: stale values and moments under the masked-out positions
        for m in method.targets_:
            orig = m.parametrizations.weight.original
            off = ~mask_of(m).mask.bool()
            orig[off] = 7.0
            opt.state[orig]["exp_avg"][off] = 3.0
            opt.state[orig]["exp_avg_sq"][off] = 5.0
    events = []
    _train(model, session, opt, 1, first=1, events=events)  # step 2: an event
    (_, before, after), = events
    n_grown = 0
    for m, b, a in zip(method.targets_, before, after, strict=True):
        grown = ~b & a
        orig = m.parametrizations.weight.original
        n_grown += int(grown.sum())
        assert torch.all(m.weight.detach()[grown] == 0) and torch.all(orig.detach()[grown] == 0)
        assert torch.all(opt.state[orig]["exp_avg"][grown] == 0)
        assert torch.all(opt.state[orig]["exp_avg_sq"][grown] == 0)
    assert n_grown > 0
    _train(model, session, opt, 1, first=2)  # and they train from 0 like any active weight
    moved = sum(int((m.weight.detach()[~b & a] != 0).sum())
                for m, b, a in zip(method.targets_, before, after, strict=True))
    assert moved > 0


# -- defining behaviour (3): the Erdős–Rényi initial graph ---------------------------------------
def test_er_initial_densities_larger_layers_sparser_and_global_density_hits_target():
    torch.manual_seed(0)
    model = build("mlp", in_features=256, widths=[128, 32], classes=10)
    method = ESLSNN(density=0.1, init="er")
    attach(model, [method])
    shapes = [m.weight.shape for m in method.targets_]  # (128,256), (32,128), (10,32)
    nnz = [int(mask_of(m).mask.sum()) for m in method.targets_]
    n = [s.numel() for s in shapes]
    dens = [a / b for a, b in zip(nnz, n, strict=True)]
    assert dens[0] < dens[1] < dens[2]  # larger layers sparser
    eps = [d * s[0] * s[1] / (s[0] + s[1]) for d, s in zip(dens, shapes, strict=True)]
    assert max(eps) - min(eps) < 0.02 * eps[0]  # one ε for all: d_l = ε (n_in + n_out)/(n_in n_out)
    assert abs(sum(nnz) - 0.1 * sum(n)) <= len(n) / 2  # global density = target up to rounding
    expect = er_densities(shapes, 0.1, "er")
    assert nnz == [round(d * k) for d, k in zip(expect, n, strict=True)]  # exact counts
    pruned = [bool((m.weight.detach()[~mask_of(m).mask.bool()] == 0).all())
              for m in method.targets_]
    assert all(pruned)
    original = method.targets_[0].parametrizations.weight.original
    assert torch.all(original.detach()[~mask_of(method.targets_[0]).mask.bool()] == 0)


def test_er_clamps_dense_layers_and_redistributes_epsilon():
    shapes = [torch.Size([128, 256]), torch.Size([32, 128]), torch.Size([10, 32])]
    d = er_densities(shapes, 0.5, "er")
    assert d[1] == 1.0 and d[2] == 1.0  # ER would ask for > 1 here
    n = [s.numel() for s in shapes]
    assert sum(di * ni for di, ni in zip(d, n, strict=True)) == pytest.approx(0.5 * sum(n))
    assert d[0] == pytest.approx((0.5 * sum(n) - n[1] - n[2]) / n[0])


def test_erk_counts_kernel_dims_and_er_counts_fan_in():
    shapes = [torch.Size([8, 1, 3, 3]), torch.Size([16, 8, 3, 3]), torch.Size([10, 64])]
    erk = er_densities(shapes, 0.2, "erk")
    er = er_densities(shapes, 0.2, "er")
    raw_erk = [sum(s) / s.numel() for s in shapes]
    raw_er = [(s[0] + s[1:].numel()) / s.numel() for s in shapes]
    for dens, raw in ((erk, raw_erk), (er, raw_er)):
        free = [i for i, x in enumerate(dens) if x < 1]
        ratios = [dens[i] / raw[i] for i in free]
        assert len(free) >= 2 and max(ratios) == pytest.approx(min(ratios))
    assert er_densities(shapes, 0.2, "uniform") == pytest.approx([0.2, 0.2, 0.2])


# -- determinism and exact resume ----------------------------------------------------------------
@pytest.mark.parametrize("grow", ["gradient", "random"])
def test_killed_and_resumed_training_equals_uninterrupted(grow):
    def fresh():
        model = _conv()
        method = ESLSNN(density=0.3, grow=grow, rewire=FAST, seed=5)
        session = attach(model, [method])
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        session.bind(opt)
        return model, session, opt

    model, session, opt = fresh()
    _train(model, session, opt, 12)
    ref = copy.deepcopy(model.state_dict())

    model, session, opt = fresh()
    _train(model, session, opt, 5)  # killed after step 5 (events at 2, 4; next at 6)
    saved = (copy.deepcopy(model.state_dict()), session.state_dict(),
             copy.deepcopy(opt.state_dict()), session.ctx.step, session.ctx.progress)
    del model, session, opt
    model, session, opt = fresh()
    model.load_state_dict(saved[0])
    session.load_state_dict(*saved[1])
    opt.load_state_dict(saved[2])
    session.ctx.step, session.ctx.progress = saved[3], saved[4]
    _train(model, session, opt, 7, first=5)
    out = model.state_dict()
    assert set(out) == set(ref)
    assert all(torch.equal(out[k], ref[k]) for k in ref)
    assert session.methods[0].events_ == 4


def test_randomness_is_a_function_of_the_seed():
    def masks(seed):
        model = _conv()
        method = ESLSNN(density=0.3, placement="random", seed=seed)
        attach(model, [method])
        return _masks(method)

    assert all(torch.equal(a, b) for a, b in zip(masks(0), masks(0), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(masks(0), masks(1), strict=True))


# -- configuration, contract ---------------------------------------------------------------------
def test_invalid_hyper_parameters_raise_one_line_errors_naming_the_field():
    for kwargs, field in [
        (dict(density=0.0), "density"),
        (dict(init="bernoulli"), "init"),
        (dict(grow="momentum"), "grow"),
        (dict(rewire={"every": 3}), "rewire"),
        (dict(rewire={"update_every": 0}), "rewire.update_every"),
        (dict(rewire={"drop_fraction": 1.5}), "rewire.drop_fraction"),
        (dict(rewire={"decay": "cubic"}), "rewire.decay"),
        (dict(rewire={"until": 0.0}), "rewire.until"),
    ]:
        with pytest.raises(ValueError, match=f"^{field}") as e:
            ESLSNN(**kwargs)
        assert "\n" not in str(e.value)
    full = ESLSNN(rewire={"update_every": 7}).rewire
    assert full == {"update_every": 7, "drop_fraction": 0.3, "decay": "cosine", "until": 0.75}


def test_gradient_growth_without_a_backward_pass_asks_for_one():
    net = _oracle_layer()
    rewire = {"update_every": 1, "drop_fraction": 0.2, "decay": "constant", "until": 1.0}
    session = attach(net, [ESLSNN(density=0.5, rewire=rewire)])
    with pytest.raises(RuntimeError, match="backward"):
        session.after_step(progress=0.5)


@pytest.mark.parametrize("model_name", list(TINY))
def test_contract(model_name, data):
    torch.manual_seed(0)
    check_method(ESLSNN, build(classes=10, **TINY[model_name]), data)
    torch.manual_seed(0)  # and with an event at every step of the contract's short run
    every_step = {"update_every": 1, "drop_fraction": 0.3, "decay": "cosine", "until": 1.0}
    check_method(functools.partial(ESLSNN, rewire=every_step),
                 build(classes=10, **TINY[model_name]), data)


# -- the target: sparsity = 1 − density, exact from the first step to the last -------------------
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
    names = [n for n, _ in select(model)]
    method = ESLSNN(sparsity=target, rewire=FAST)  # events at steps 2, 4, 6 of 9
    session = attach(model, [method])
    _train_steps(model, session, data, 9, lr=1e-3, per_epoch=3)
    assert method.events_ == 3
    plain = session.finalize()
    assert abs(weight_sparsity(plain, names) - target) <= 0.01


def test_magnitude_placement_keeps_each_layers_largest_weights_and_random_ignores_them(trained):
    model = copy.deepcopy(trained)
    before = [m.weight.detach().abs().clone() for _, m in select(model)]
    method = ESLSNN(sparsity=0.7)
    attach(model, [method])
    dens = er_densities([w.shape for w in before], 0.3, "er")
    for w, m, d in zip(before, method.targets_, dens, strict=True):
        keep = mask_of(m).mask.bool()
        assert int(keep.sum()) == round(d * w.numel())  # the ER count of the layer ...
        assert w[keep].min() >= w[~keep].max()  # ... at its largest |w|
    model = copy.deepcopy(trained)
    method = ESLSNN(sparsity=0.7, placement="random")
    attach(model, [method])
    overlap = [float(w[mask_of(m).mask.bool()].mean() / w.mean())
               for w, m in zip(before, method.targets_, strict=True)]
    assert all(0.5 < o < 1.5 for o in overlap)  # a random graph: no preference for large |w|


def test_density_is_the_other_spelling_of_sparsity_and_not_both():
    assert ESLSNN(density=0.1) == ESLSNN(sparsity=0.9)
    assert ESLSNN().sparsity == 0.8 and ESLSNN(density=0.25).density is None
    with pytest.raises(ValueError, match="^set sparsity or density, not both$"):
        ESLSNN(sparsity=0.9, density=0.1)
    for kwargs, field in [(dict(sparsity=1.0), "sparsity"), (dict(placement="top"), "placement")]:
        with pytest.raises(ValueError, match=f"^{field}"):
            ESLSNN(**kwargs)
    for method in (ESLSNN(), ESLSNN(density=0.1, placement="random")):
        spec = yaml.safe_load(yaml.safe_dump(method_spec(method)))
        assert ESLSNN(**{k: v for k, v in spec.items() if k != "name"}) == method
