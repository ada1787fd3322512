"""PCA width selection (Chowdhury, Garg & Roy, IJCNN 2021): widths from the PCA of the time-averaged
membrane potential (by a variance threshold or a channel-sparsity target), then an inherited
and fine-tuned (or fresh) model of those widths."""

import copy
import functools
import logging
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from spikecompress.compress import attach
from spikecompress.compress.contract import TINY_MODELS as TINY
from spikecompress.compress.contract import check_method, method_spec
from spikecompress.compress.method import Context
from spikecompress.compress.prune.groups import channel_groups
from spikecompress.compress.prune.pca_width import (
    PCAWidth,
    common_threshold_widths,
    covariance,
    explained_variance,
    pca_width,
    top_variance,
)
from spikecompress.data import DataConfig, load_data
from spikecompress.measurement import evaluate
from spikecompress.models import build
from spikecompress.snn import reset_state


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


def _low_rank(n=4000, c=64, r=8, noise=1e-2, seed=0):
    """[n, c] observations of r latent factors mixed into c channels, plus small noise."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, r, generator=g, dtype=torch.float64)
    w = torch.randn(r, c, generator=g, dtype=torch.float64)
    return z @ w + noise * torch.randn(n, c, generator=g, dtype=torch.float64)


def test_synthetic_rank_8_of_64_channels_gives_width_8():
    cov = covariance(_low_rank())
    assert pca_width(cov, 0.999) == 8
    assert pca_width(cov, 0.9999) == 8  # the noise floor holds < 0.01 % of the variance
    # the per-channel variances are all alike: counting channels instead of components fails
    assert cov.diagonal().min() > 0.1 * cov.diagonal().max()


def test_threshold_one_keeps_every_channel():
    assert pca_width(covariance(_low_rank()), 1.0) == 64


def test_width_is_invariant_to_permuting_channels():
    scales = torch.logspace(0, -3, 64, dtype=torch.float64)  # channel variances 1 … 1e-6
    x = _low_rank(r=20, noise=1e-2) * scales
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    for tau in (0.5, 0.9, 0.99, 0.999, 1.0):
        k = pca_width(covariance(x), tau)
        assert pca_width(covariance(x[:, perm]), tau) == k
        assert pca_width(covariance(x[:, perm.flip(0)]), tau) == k
    assert pca_width(covariance(x), 0.9) < 20  # the steep scales make the threshold matter


def test_width_grows_with_the_threshold_and_matches_the_eigenvalues():
    x = _low_rank(r=16, noise=0.3)
    eig = torch.linalg.eigvalsh(torch.cov(x.T)).flip(0)
    cum = (eig.cumsum(0) / eig.sum()).tolist()
    widths = [pca_width(covariance(x), tau) for tau in (0.3, 0.6, 0.9, 0.99)]
    assert widths == sorted(widths) and widths[0] < widths[-1]
    for tau, k in zip((0.3, 0.6, 0.9, 0.99), widths, strict=True):
        assert cum[k - 1] >= tau and (k == 1 or cum[k - 2] < tau)


def _batch(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.rand(2, 8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


def _model(name="conv_net", widths=(8, 16)):
    torch.manual_seed(0)
    spec = {**TINY[name], "widths": list(widths)}
    return build(classes=10, **spec)


def _ubar_rows(neuron):
    """Brute force: Ū = mean over t of h_seq, one row per (sample, position)."""
    u = neuron.h_seq.double().mean(0)  # [B, C, H, W] (or [B, C])
    rows = [u[b, :, i, j] for b in range(u.shape[0]) for i in range(u.shape[2])
            for j in range(u.shape[3])] if u.dim() == 4 else list(u)
    return torch.stack(rows)  # [B·H·W, C]


def _train(model, method, steps, total, observe=None, session=None):
    """``steps`` more steps of ``total`` (SGD: no optimizer state); observe(step, model) after
    each step's backward. Attaches ``method`` unless a ``session`` is given; returns it."""
    session = session or attach(model, [method])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    session.bind(opt, total_steps=total, steps_per_epoch=total)
    first = session.ctx.step
    for step in range(first, first + steps):
        x_seq, y = _batch(step)
        out = model(x_seq)
        loss = F.cross_entropy(out.mean(0), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if observe is not None:
            observe(step + 1, model)
        session.after_step(progress=(step + 1) / total)
        reset_state(model)
    return session


@pytest.mark.parametrize("name", ["conv_net", "sew_resnet"])
def test_accumulated_covariance_equals_brute_force_of_the_last_collect_fraction(name):
    model = _model(name, (4, 8))
    method = PCAWidth(collect=0.5, init="scratch")  # "scratch" decides at the end of the stage
    seen: dict[str, list] = {}

    def observe(step, model):
        modules = dict(model.named_modules())
        for g in method.groups_:
            if step > 2:  # steps 3 and 4 of 4: progress 0.75 and 1.0 > 1 − 0.5
                seen.setdefault(g.name, []).extend(_ubar_rows(modules[n]) for n in g.neurons)

    _train(model, method, 4, 4, observe)
    covs = method.covariances()
    assert set(covs) == set(seen) and len(covs) == {"conv_net": 2, "sew_resnet": 4}[name]
    for group, rows in seen.items():
        x = torch.cat(rows)  # [N, C]
        assert int(method.rows_[group]) == x.shape[0]
        torch.testing.assert_close(covs[group], torch.cov(x.T), rtol=1e-9, atol=1e-12)
    stacked = [g for g in method.groups_ if len(g.neurons) > 1]
    assert len(stacked) == (2 if name == "sew_resnet" else 0)
    for g in stacked:  # a residual group stacks the rows of all its neurons, of both steps
        assert len(seen[g.name]) == 2 * len(g.neurons)


@pytest.mark.parametrize(("knobs", "counted"), [
    ({"collect": 0.25, "init": "scratch"}, [0, 0, 0, 1]),  # decide: the end of the stage
    ({"collect": 0.5, "init": "scratch"}, [0, 0, 1, 2]),
    ({"collect": 1.0, "init": "scratch"}, [1, 2, 3, 4]),
    ({"collect": 0.25, "decide": 0.5}, [0, 1, 1, 1]),  # progress in (0.25, 0.5]
    ({"collect": 0.5, "decide": 0.5}, [1, 2, 2, 2]),
    ({"collect": 0.25, "decide": 0.6}, [0, 1, 2, 2]),  # the deciding step (0.75) counts
    ({"collect": 1.0}, [1, 1, 1, 1]),  # "inherit" decides at 0.25 by default
])
def test_statistics_are_collected_only_in_the_collect_fraction_before_the_decision(
        knobs, counted):
    model = _model()
    method = PCAWidth(**knobs)
    rows, recorded, decided = [], [], []

    def observe(step, model):
        recorded.append(model.features[0].act.h_seq is not None)

    session = None
    for _ in range(4):
        session = _train(model, method, 1, 4, observe, session)
        rows.append(int(method.rows_["features.0.conv"]))
        decided.append(method.decided_)
    per_batch = 8 * 8 * 8  # B · H · W of the first conv
    assert rows == [c * per_batch for c in counted]
    # after step 1 the neurons record only where a step is collected
    assert recorded[1:] == [c > p for p, c in zip(counted, counted[1:], strict=False)]
    first = decided.index(True) + 1  # the step after which the widths were chosen
    assert first == math.ceil(4 * method.decision - 1e-9) and all(decided[first - 1:])
    session.finalize()
    assert model.features[0].act.record_v is False  # restored


def _trained(variance=0.9, init="scratch", seed=0, min_width=1):
    """A tiny conv net trained 3 steps with PCAWidth ("scratch": widths chosen at the end)."""
    model = _model()
    method = PCAWidth(variance=variance, collect=1.0, init=init, seed=seed, min_width=min_width)
    _train(model, method, 3, 3)
    return model, method


CTX = Context()


def test_scratch_builds_fresh_deterministic_weights_of_the_selected_widths(caplog):
    model, method = _trained()
    trained = copy.deepcopy(model.state_dict())
    covs = method.covariances()
    want = {n: pca_width(c, 0.9) for n, c in covs.items()}
    assert want["features.0.conv"] < 8 and want["features.1.conv"] < 16  # the widths do shrink
    copies = [copy.deepcopy((model, method)) for _ in range(2)]
    rng = torch.get_rng_state()
    with caplog.at_level(logging.INFO, logger="spikecompress.compress.prune.pca_width"):
        a = copies[0][1].finalize(copies[0][0], CTX)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left alone
    b = copies[1][1].finalize(copies[1][0], CTX)
    assert copies[0][1].widths_ == {n: [c.shape[0], want[n]] for n, c in covs.items()}
    assert a.spec["widths"] == [want["features.0.conv"], want["features.1.conv"]]
    assert a.features[1].conv.weight.shape[:2] == (want["features.1.conv"],
                                                   want["features.0.conv"])
    assert f"features.0.conv: 8 -> {want['features.0.conv']} channels" in caplog.text
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    for key in ("features.0.conv.weight", "features.1.conv.weight"):  # no trained kernel left
        new, old = sa[key].flatten(0, 1).flatten(1), trained[key].flatten(0, 1).flatten(1)
        assert not (new[:, None] == old[None]).all(-1).any()  # [k·C_in, 9] vs [C·C_in, 9]
    stats = "features.0.bn.running_mean"
    assert not sa[stats].any() and trained[stats].any()
    other = PCAWidth(variance=0.9, collect=1.0, init="scratch", seed=1)
    other.__dict__.update({k: v for k, v in method.__dict__.items() if k.endswith("_")})
    c = other.finalize(copy.deepcopy(model), CTX)
    assert not torch.equal(c.features[0].conv.weight, a.features[0].conv.weight)


def _spikes(model):
    """{neuron name: its last output spikes} for the conv neurons, filled by forward hooks."""
    out = {}
    for name in ("features.0.act", "features.1.act"):
        module = dict(model.named_modules())[name]
        module.register_forward_hook(lambda m, i, o, name=name: out.__setitem__(name, o.detach()))
    return out


def test_inherit_switches_the_rest_off_at_the_decision_then_fine_tunes_and_removes_them():
    model = _model()
    method = PCAWidth(variance=0.9, collect=1.0, decide=0.5, init="inherit")
    spikes, at_decision = _spikes(model), {}
    off = {}

    def observe(step, model):
        if step == 2:  # progress 0.5: the widths are chosen in this step's after_step
            at_decision.update({k: v.clone() for k, v in model.state_dict().items()})
        if step > 2:  # the switched-off channels never fire while the stage trains on
            for g, neuron in (("features.0.conv", "features.0.act"),
                              ("features.1.conv", "features.1.act")):
                dead = method.masks_[g] == 0
                off[g] = off.get(g, 0) + int(spikes[neuron][:, :, dead].sum())

    _train(model, method, 4, 4, observe)
    covs = method.covariances()  # of steps 1 and 2 only: collection stops at the decision
    assert int(method.rows_["features.0.conv"]) == 2 * 8 * 8 * 8
    k0, k1 = (pca_width(covs[n], 0.9) for n in ("features.0.conv", "features.1.conv"))
    keep0 = top_variance(covs["features.0.conv"], k0)
    keep1 = top_variance(covs["features.1.conv"], k1)
    assert keep0 == sorted(torch.argsort(covs["features.0.conv"].diagonal(),
                                         descending=True)[:k0].tolist())
    assert k0 < 8 and off == {"features.0.conv": 0, "features.1.conv": 0}
    old = {k: v.clone() for k, v in model.state_dict().items()}
    conv0, bn0 = model.features[0].conv.weight.detach().clone(), model.features[0].bn
    gamma0, beta0 = bn0.weight.detach().clone(), bn0.bias.detach().clone()  # γ⊙m, β⊙m
    assert not torch.equal(conv0[keep0], at_decision["features.0.conv.weight"][keep0])  # tuned
    new = method.finalize(model, CTX)
    assert method.kept_ == {"features.0.conv": keep0, "features.1.conv": keep1}
    sd = new.state_dict()
    assert torch.equal(sd["features.0.conv.weight"], conv0[keep0])
    assert torch.equal(sd["features.1.conv.weight"],
                       old["features.1.conv.weight"][keep1][:, keep0])
    assert torch.equal(sd["features.0.bn.weight"], gamma0[keep0])
    assert torch.equal(sd["features.0.bn.bias"], beta0[keep0])
    for key in ("running_mean", "running_var"):
        assert torch.equal(sd[f"features.0.bn.{key}"], old[f"features.0.bn.{key}"][keep0])
    assert new.spec["widths"] == [k0, k1]


def test_min_width_is_a_floor():
    model, method = _trained(variance=0.01, min_width=3)
    method.finalize(model, CTX)
    assert all(k == 3 for _, k in method.widths_.values())


def test_common_threshold_keeps_the_smallest_keys_with_floors_and_ties_to_the_earlier_group():
    # dyadic ratios: exact. a keeps its (j+2)-th channel iff a[j] < τ, b likewise
    a = torch.tensor([0.5, 0.75, 1.0, 1.0], dtype=torch.float64)
    b = torch.tensor([0.25, 0.5, 0.875, 1.0], dtype=torch.float64)
    dead = torch.zeros(3, dtype=torch.float64)  # a group without variance: kept last
    ratios = {"a": a, "b": b, "dead": dead}
    assert common_threshold_widths(ratios, 3) == {"a": 1, "b": 1, "dead": 1}  # the floors
    assert common_threshold_widths(ratios, 1) == {"a": 1, "b": 1, "dead": 1}
    assert common_threshold_widths(ratios, 4) == {"a": 1, "b": 2, "dead": 1}  # τ in (.25, .5]
    assert common_threshold_widths(ratios, 5) == {"a": 2, "b": 2, "dead": 1}  # tie: a first
    assert common_threshold_widths(ratios, 6) == {"a": 2, "b": 3, "dead": 1}  # τ in (.5, .75]
    assert common_threshold_widths(ratios, 11) == {"a": 4, "b": 4, "dead": 3}
    assert common_threshold_widths(ratios, 9) == {"a": 4, "b": 4, "dead": 1}  # 1.0s: a, b
    assert common_threshold_widths(ratios, 6, floor=2) == {"a": 2, "b": 2, "dead": 2}
    assert common_threshold_widths(ratios, 7, floor=2) == {"a": 2, "b": 3, "dead": 2}
    for tau in (0.3, 0.6, 0.8, 0.9):  # a common τ is one point of this curve
        want = {"a": int((a < tau).sum()) + 1, "b": int((b < tau).sum()) + 1, "dead": 1}
        assert common_threshold_widths(ratios, sum(want.values())) == want


def _channels(model):
    return sum(g.size for g in channel_groups(model))


@pytest.mark.parametrize("target", [0.3, 0.5])
@pytest.mark.parametrize("init", ["inherit", "scratch"])
def test_channel_sparsity_is_reached_by_one_common_threshold(target, init):
    model = _model(widths=(16, 32))  # 48 prunable channels: ±2 pp is one channel
    method = PCAWidth(channel_sparsity=target, collect=1.0, decide=0.5, init=init)
    again = yaml.safe_load(yaml.safe_dump(method_spec(method)))
    assert PCAWidth(**{k: v for k, v in again.items() if k != "name"}) == method
    before = _channels(model)
    session = _train(model, method, 4, 4)
    covs = method.covariances()
    new = session.finalize()
    removed = before - _channels(new)
    assert removed == round(target * before)  # 14 or 24 of 48: within 1 pp of the target
    # one τ explains them all: every kept channel's key is below every removed channel's key
    ratio = {n: explained_variance(c) for n, c in covs.items()}
    widths = {n: k for n, (_, k) in method.widths_.items()}
    kept = [float(ratio[n][k - 2]) for n, k in widths.items() if k >= 2]
    dropped = [float(ratio[n][k - 1]) for n, k in widths.items() if k < ratio[n].numel()]
    assert max(kept) <= min(dropped) and len(set(widths.values())) > 1


def evaluate_on(model, data):
    return evaluate(model, data.test)["accuracy"]


def _fine_tune(model, session, data, steps):
    """Adam at lr 1e-3 over ``data.train`` (cycled) with the session bound."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    session.bind(opt, total_steps=steps, steps_per_epoch=len(data.train))
    batches = (b for _ in range(steps) for b in data.train)
    for step, (x_seq, y) in zip(range(steps), batches, strict=False):
        loss = F.cross_entropy(model(x_seq).mean(0), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=(step + 1) / steps)
        reset_state(model)


def test_defaults_really_shrink_a_trained_small_net_and_keep_its_weights(data):
    torch.manual_seed(0)
    model = build(classes=10, **{**TINY["conv_net"], "widths": [16, 32]})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(12):  # 12 epochs of 3 batches: a trained dense model (~85 % here)
        for x_seq, y in data.train:
            loss = F.cross_entropy(model(x_seq).mean(0), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            reset_state(model)
    assert evaluate_on(model, data) > 0.7
    method = PCAWidth()
    assert (method.tau, method.decision, method.init) == (0.99, 0.25, "inherit")
    session = attach(model, [method])
    _fine_tune(model, session, data, 4 * len(data.train))
    new = session.finalize()
    assert 48 - _channels(new) >= 10  # really smaller: >= 20 % (11 here; τ = 0.999: 5)
    assert evaluate_on(new, data) > 0.6  # trained weights kept and fine-tuned (fresh: ~0.1)


@pytest.mark.parametrize("decide", [0.75, 0.25])  # killed at step 2: before / after the decision
def test_killed_and_resumed_stage_equals_uninterrupted(decide):
    def method():
        return PCAWidth(variance=0.9, collect=0.75, decide=decide)

    model, whole = _model(), method()
    _train(model, whole, 4, 4)
    half, half_method = _model(), method()
    session = _train(half, half_method, 2, 4)
    tensors, scalars = session.state_dict()
    weights = copy.deepcopy(half.state_dict())  # with the channel gates' masks
    resumed, method2 = _model(), method()  # a fresh process
    session2 = attach(resumed, [method2])
    resumed.load_state_dict(weights)
    session2.load_state_dict(tensors, scalars)
    session2.ctx.step = 2  # the Trainer restores the step count
    _train(resumed, method2, 2, 4, session=session2)
    assert int(half_method.rows_["features.0.conv"]) > 0  # step 2 was collected before the kill
    assert half_method.decided_ is (decide < 0.5) and method2.decided_ and whole.decided_
    # the same computation in the same order on this machine: bit-identical
    for field in ("sum_", "outer_", "rows_", "masks_"):
        got, want = getattr(method2, field), getattr(whole, field)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert any(not m.all() for m in whole.masks_.values())
    a, b = session2.finalize(), whole.finalize(model, CTX)
    assert method2.widths_ == whole.widths_
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_errors_are_one_line_and_name_the_cause():
    for kwargs, message in [({"variance": 0}, "variance must be in (0, 1]"),
                            ({"collect": 1.5}, "collect must be in (0, 1]"),
                            ({"init": "warm"}, "init must be one of"),
                            ({"min_width": 0}, "min_width must be an int >= 1"),
                            ({"seed": -1}, "seed must be an int"),
                            ({"channel_sparsity": 1.0}, "channel_sparsity must be in [0, 1)"),
                            ({"decide": 0}, "decide must be in (0, 1]"),
                            ({"variance": 0.9, "channel_sparsity": 0.5},
                             "variance and channel_sparsity are both set")]:
        with pytest.raises(ValueError) as err:
            PCAWidth(**kwargs)
        assert message in str(err.value) and "\n" not in str(err.value), kwargs
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 2, 3))
    with pytest.raises(ValueError, match="needs a model built by spikecompress.models"):
        attach(plain, [PCAWidth()])
    method = PCAWidth()
    session = attach(_model(), [method])
    with pytest.raises(RuntimeError, match="collected fewer than 2 rows"):
        session.finalize()


@pytest.mark.parametrize("model_name", list(TINY))
def test_contract(model_name, data):
    check_method(PCAWidth, build(classes=10, **TINY[model_name]), data)
    check_method(functools.partial(PCAWidth, init="scratch", variance=0.9),
                 build(classes=10, **TINY[model_name]), data)
