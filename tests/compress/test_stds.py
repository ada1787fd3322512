"""STDS (Chen et al., ICML 2022) and the shared soft-threshold re-parameterisation: spec §2.4."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.compress import attach, is_plain
from spikecompress.compress.contract import TINY_MODELS as TINY
from spikecompress.compress.contract import check_method
from spikecompress.compress.method import Context
from spikecompress.compress.prune.soft_threshold import (
    SoftThreshold,
    find_all,
    install_soft_threshold_,
    soft_threshold,
    soft_threshold_of,
)
from spikecompress.compress.prune.stds import STDS, stds_threshold
from spikecompress.data import DataConfig, load_data
from spikecompress.models import build
from spikecompress.snn import reset_state


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


def _theta(lin: nn.Module) -> torch.Tensor:
    return lin.parametrizations.weight.original


# -- §2.4 test 1: the mapping ---------------------------------------------------------------------
def test_dead_zone_is_exactly_zero_and_live_weights_shrink_by_d():
    theta = torch.tensor([-0.9, -0.3, -0.2999, 0.0, 0.1, 0.3, 0.30001, 2.0])
    d = torch.tensor(0.3)
    w = soft_threshold(theta, d)
    dead = theta.abs() <= d
    assert torch.equal(w[dead], torch.zeros(int(dead.sum())))  # |θ| = d included
    live = ~dead
    assert torch.equal(w[live].abs(), theta[live].abs() - d)  # a hard threshold keeps |θ|
    assert torch.equal(torch.sign(w[live]), torch.sign(theta[live]))


# -- §2.4 test 2: straight-through gradient ----------------------------------------------------
def _loss(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((torch.tanh(x @ w.T) - y) ** 2).sum()


@pytest.mark.parametrize("straight_through", [True, False])
def test_dead_zone_gradient_equals_finite_difference_of_the_live_path(straight_through):
    torch.manual_seed(0)
    lin = nn.Linear(6, 3, bias=False).double()
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    st = install_soft_threshold_(lin, 0.0, straight_through=straight_through)
    st.set_(float(_theta(lin).detach().abs().median()))
    dead = (lin.weight == 0).detach()
    assert 0 < int(dead.sum()) < dead.numel()
    _loss(lin.weight, x, y).backward()
    grad = _theta(lin).grad
    w_eff, eps = lin.weight.detach().clone(), 1e-6
    fd = torch.zeros_like(w_eff)
    for i in range(w_eff.numel()):  # perturb w as if every synapse existed: the w = θ path
        e = torch.zeros_like(w_eff).view(-1)
        e[i] = eps
        e = e.view_as(w_eff)
        fd.view(-1)[i] = (_loss(w_eff + e, x, y) - _loss(w_eff - e, x, y)) / (2 * eps)
    assert fd[dead].abs().min() > 1e-4  # the oracle is informative in the dead zone
    torch.testing.assert_close(grad[~dead], fd[~dead], rtol=1e-6, atol=1e-9)
    if straight_through:
        torch.testing.assert_close(grad[dead], fd[dead], rtol=1e-6, atol=1e-9)
    else:  # plain autograd ('st' mode): no gradient reaches a silent synapse
        assert torch.equal(grad[dead], torch.zeros_like(grad[dead]))


# -- §2.4 test 3: the schedule -----------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["sine", "linear"])
def test_threshold_schedule_end_points_midpoint_and_monotone(schedule):
    D, N = 0.7, 1000
    ds = [stds_threshold(schedule, D, n / N) for n in range(N + 1)]
    assert ds[0] == 0 and ds[-1] == pytest.approx(D, abs=1e-15)
    assert ds[N // 2] == pytest.approx(D / 2, abs=1e-15)
    assert all(b >= a for a, b in zip(ds, ds[1:], strict=False))
    if schedule == "sine":  # slow start: a linear ramp is not the published sine
        assert ds[N // 10] == pytest.approx(D * (1 - math.cos(math.pi / 10)) / 2)
        assert ds[N // 10] < 0.05 * D


def test_method_sets_d_from_the_bound_step_count():
    torch.manual_seed(0)
    model = build(classes=10, **TINY["mlp"])
    method = STDS(D=0.4, schedule="sine")
    session = attach(model, [method])
    params = find_all(model)
    assert len(params) == 2 and all(float(p.d) == 0 for p in params)  # first + classifier
    session.bind(torch.optim.SGD(model.parameters(), lr=0.1), total_steps=10)
    for n in range(1, 11):
        session.after_step(progress=0.0)  # progress ignored once total_steps is bound
        assert float(params[0].d) == pytest.approx(stds_threshold("sine", 0.4, n / 10), abs=1e-7)
    assert float(params[1].d) == pytest.approx(0.4)
    unbound = STDS(D=0.4, schedule="linear")
    assert unbound.threshold_at(Context(progress=0.25)) == pytest.approx(0.1)


# -- §2.4 test 4: regrowth ---------------------------------------------------------------------
@pytest.mark.parametrize("straight_through", [True, False])
def test_silent_synapse_pushed_outward_regrows(straight_through):
    """Gradient oracle: L = (w·x − 1)² with x = 1 pulls w towards 1 from anywhere below."""
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.05)
    st = install_soft_threshold_(lin, 0.0, straight_through=straight_through)
    st.set_(0.2)  # θ = 0.05 is now silent
    assert float(lin.weight.detach()) == 0
    opt = torch.optim.SGD(lin.parameters(), lr=0.05)
    for _ in range(20):
        loss = (lin(torch.ones(1, 1)) - 1).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    theta, w = float(_theta(lin).detach()), float(lin.weight.detach())
    if straight_through:  # re-crossed d: alive again
        assert theta > 0.2 and w > 0
    else:  # plain autograd soft threshold: θ never moves, the synapse stays dead
        assert theta == pytest.approx(0.05) and w == 0


# -- installation and finalize ---------------------------------------------------------------------
def test_install_keeps_the_effective_weight():
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    w0 = lin.weight.detach().clone()
    install_soft_threshold_(lin, 0.0)
    assert torch.equal(lin.weight, w0) and torch.equal(_theta(lin), w0)  # d = 0: θ = w
    lin2 = nn.Linear(8, 4)
    w2 = lin2.weight.detach().clone()
    install_soft_threshold_(lin2, 0.5)  # fixed-threshold variant: θ = sign(w)(|w| + d0)
    torch.testing.assert_close(_theta(lin2), torch.sign(w2) * (w2.abs() + 0.5))
    torch.testing.assert_close(lin2.weight, w2, rtol=0, atol=1e-7)
    assert (_theta(lin2).abs() > 0.5).all()
    with pytest.raises(ValueError, match="already has a soft threshold"):
        install_soft_threshold_(lin, 0.1)
    with pytest.raises(ValueError, match="d must be >= 0"):
        SoftThreshold(-1.0)


def test_constant_schedule_starts_at_D_with_the_dense_weights():
    torch.manual_seed(0)
    model = build(classes=10, **TINY["mlp"])
    w0 = [m.weight.detach().clone() for m in model.modules() if isinstance(m, nn.Linear)]
    attach(model, [STDS(D=0.3, schedule="constant")])
    ws = [m.weight for m in model.modules() if soft_threshold_of(m) is not None]
    assert all(float(p.d) == pytest.approx(0.3) for p in find_all(model))
    for a, b in zip(w0, ws, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def _train(model, session, first, last, total, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(first, last):
        g = torch.Generator().manual_seed(step)
        x, y = torch.rand(2, 8, 64, generator=g), torch.randint(0, 10, (8,), generator=g)
        out = model(x)
        loss = F.cross_entropy(out.mean(0), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=(step + 1) / total)
        reset_state(model)


def test_finalize_bakes_exact_zeros_and_leaves_a_plain_module():
    torch.manual_seed(0)
    model = build(classes=10, **TINY["mlp"])
    session = attach(model, [STDS(D=0.05, schedule="linear")])
    _train(model, session, 0, 20, 20)
    layers = [m for m in model.modules() if soft_threshold_of(m) is not None]
    effective = [m.weight.detach().clone() for m in layers]
    sparsity = session.methods[0].current_sparsity(model)
    assert 0.05 < sparsity < 1
    model = session.finalize()
    assert is_plain(model)
    assert not any(parametrize.is_parametrized(m) for m in layers)
    for m, w in zip(layers, effective, strict=True):
        assert torch.equal(m.weight, w) and isinstance(m.weight, nn.Parameter)
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    assert zeros / sum(m.weight.numel() for m in layers) == pytest.approx(sparsity)
    assert not any("original" in k for k in model.state_dict())


def test_fields_are_validated():
    with pytest.raises(ValueError, match="D must be"):
        STDS(D=0)
    with pytest.raises(ValueError, match="schedule must be"):
        STDS(schedule="cubic")


@pytest.mark.parametrize("model_name", list(TINY))
def test_contract(model_name, data):
    torch.manual_seed(0)
    check_method(STDS, build(classes=10, **TINY[model_name]), data)
