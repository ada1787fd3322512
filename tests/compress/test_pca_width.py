"""PCA width selection (spec pruning.md §3.2, §12.3): widths from the PCA of the time-averaged
membrane potential, then a fresh (or inherited) model of those widths."""

import copy
import functools
import logging

import pytest
import torch
import torch.nn.functional as F

from spikecompress.compress import attach
from spikecompress.compress.contract import TINY_MODELS as TINY
from spikecompress.compress.contract import check_method
from spikecompress.compress.method import Context
from spikecompress.compress.prune.pca_width import PCAWidth, covariance, pca_width
from spikecompress.data import DataConfig, load_data
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
    method = PCAWidth(collect=0.5)
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


def test_statistics_are_collected_only_in_the_last_collect_fraction():
    for collect, counted in ((0.25, [0, 0, 0, 1]), (0.5, [0, 0, 1, 2]), (1.0, [1, 2, 3, 4])):
        model = _model()
        method = PCAWidth(collect=collect)
        rows, recorded = [], []

        def observe(step, model, recorded=recorded):
            recorded.append(model.features[0].act.h_seq is not None)

        session = None
        for _ in range(4):
            session = _train(model, method, 1, 4, observe, session)
            rows.append(int(method.rows_["features.0.conv"]))
        per_batch = 8 * 8 * 8  # B · H · W of the first conv
        assert rows == [c * per_batch for c in counted], collect
        # after step 1 the neurons record only where a step is collected
        assert recorded[1:] == [c > p for p, c in zip(counted, counted[1:], strict=False)]
        session.finalize()
        assert model.features[0].act.record_v is False  # restored


def _trained(variance=0.9, init="scratch", seed=0):
    model = _model()
    method = PCAWidth(variance=variance, collect=1.0, init=init, seed=seed)
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
    other = PCAWidth(variance=0.9, collect=1.0, seed=1)
    other.__dict__.update({k: v for k, v in method.__dict__.items() if k.endswith("_")})
    c = other.finalize(copy.deepcopy(model), CTX)
    assert not torch.equal(c.features[0].conv.weight, a.features[0].conv.weight)


def test_inherit_keeps_the_highest_variance_channels_with_their_weights():
    model, method = _trained(init="inherit")
    old = {k: v.clone() for k, v in model.state_dict().items()}
    covs = method.covariances()
    new = method.finalize(model, CTX)
    k0, k1 = (pca_width(covs[n], 0.9) for n in ("features.0.conv", "features.1.conv"))
    keep0 = sorted(torch.argsort(covs["features.0.conv"].diagonal(), descending=True)[:k0].tolist())
    keep1 = sorted(torch.argsort(covs["features.1.conv"].diagonal(), descending=True)[:k1].tolist())
    assert method.kept_ == {"features.0.conv": keep0, "features.1.conv": keep1} and k0 < 8
    sd = new.state_dict()
    assert torch.equal(sd["features.0.conv.weight"], old["features.0.conv.weight"][keep0])
    assert torch.equal(sd["features.1.conv.weight"],
                       old["features.1.conv.weight"][keep1][:, keep0])
    for key in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(sd[f"features.0.bn.{key}"], old[f"features.0.bn.{key}"][keep0])
    assert new.spec["widths"] == [k0, k1]


def test_min_width_is_a_floor():
    model, method = _trained(variance=0.01)
    method.min_width = 3
    method.finalize(model, CTX)
    assert all(k == 3 for _, k in method.widths_.values())


def test_killed_and_resumed_statistics_equal_uninterrupted():
    model, method = _model(), PCAWidth(collect=0.75)
    _train(model, method, 4, 4)
    half, half_method = _model(), PCAWidth(collect=0.75)
    session = _train(half, half_method, 2, 4)
    tensors, scalars = session.state_dict()
    weights = copy.deepcopy(half.state_dict())
    resumed, method2 = _model(), PCAWidth(collect=0.75)  # a fresh process
    session2 = attach(resumed, [method2])
    resumed.load_state_dict(weights)
    session2.load_state_dict(tensors, scalars)
    session2.ctx.step = 2  # the Trainer restores the step count
    _train(resumed, method2, 2, 4, session=session2)
    assert int(half_method.rows_["features.0.conv"]) > 0  # step 2 was collected before the kill
    for field in ("sum_", "outer_", "rows_"):
        got, want = getattr(method2, field), getattr(method, field)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_errors_are_one_line_and_name_the_cause():
    for kwargs, message in [({"variance": 0}, "variance must be in (0, 1]"),
                            ({"collect": 1.5}, "collect must be in (0, 1]"),
                            ({"init": "warm"}, "init must be one of"),
                            ({"min_width": 0}, "min_width must be an int >= 1"),
                            ({"seed": -1}, "seed must be an int")]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
            PCAWidth(**kwargs)
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
    check_method(functools.partial(PCAWidth, init="inherit", variance=0.9),
                 build(classes=10, **TINY[model_name]), data)
