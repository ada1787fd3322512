"""ADMM weight quantization (spec quant-kd §2.1): projection, dual, coupling and the grid."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _exact import dyadic
from spikecompress.compress import attach, is_plain, select
from spikecompress.compress.method import Context
from spikecompress.compress.quant.admm_quant import (
    ADMMQuantization,
    grid_of,
    levels,
    project,
    projection,
)
from spikecompress.compress.quant.fake_quant import quantize
from spikecompress.models import build
from spikecompress.snn import reset_state


def _model(seed=0):
    torch.manual_seed(seed)
    return build("conv_net", in_channels=1, input_size=8, classes=10, widths=[4, 8])


def _batch(step):
    g = torch.Generator().manual_seed(step)
    return torch.rand(2, 8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


def _train(model, session, opt, first, steps, total, before_after_step=None):
    """Optimizer steps first..first+steps-1 of a stage of ``total`` steps (data = f(step))."""
    for step in range(first, first + steps):
        x_seq, y = _batch(step)
        out = model(x_seq)
        loss = F.cross_entropy(out.mean(0), y) + session.loss(x_seq, out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if before_after_step is not None:
            before_after_step(step)
        session.after_step(progress=(step + 1) / total)
        reset_state(model)


def _grid(alpha, bits):
    """Every value a layer of scale ``alpha`` may hold: α · k in α's dtype, +0.0 for k = 0."""
    k = levels(bits)
    codes = [-1, 1] if bits == 1 else range(-k, k + 1)
    return {float(alpha * c + 0.0) for c in codes}


def _err(v, alpha, q):
    return float((v.double() - alpha.double() * q.double()).pow(2).sum())


# -- defining behaviour 1: the projection ----------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_projection_scale_is_least_squares_error_never_increases_and_values_are_on_the_grid(bits):
    torch.manual_seed(bits)
    # dyadic with 12 significant bits: every float64 sum below is exact, in any order
    v = dyadic(torch.distributions.Laplace(0.0, 0.05).sample((400,)), bits=12)
    k = levels(bits)
    errors = []
    for iters in range(7):
        alpha, q = project(v, bits, iters)
        assert alpha.dtype == q.dtype == torch.float32 and alpha > 0 and q.shape == v.shape
        assert torch.equal(q, q.round()) and int(q.abs().max()) <= k
        if bits == 1:
            assert set(q.unique().tolist()) == {-1.0, 1.0}
        # the scale is the closed-form least squares of the returned codes, exactly
        qn, vn = q.numpy().astype(np.float64), v.numpy().astype(np.float64)
        assert alpha.item() == np.float32(vn @ qn / (qn @ qn))
        errors.append(_err(v, alpha, q))
        for nudge in (0.99, 1.01):  # and a better scale for these codes does not exist
            assert _err(v, alpha * nudge, q) > errors[-1]
        values = projection(v, bits, iters)
        assert torch.equal(values, alpha * q + 0.0)
        assert len(values.unique()) <= (2 if bits == 1 else 2 * k + 1)
        assert set(values.unique().tolist()) <= _grid(alpha, bits)
        assert not bool((torch.signbit(values) & (values == 0)).any())  # no −0.0
    assert all(b <= a * (1 + 1e-12) for a, b in zip(errors, errors[1:], strict=False)), errors
    # better than the max-abs uniform quantizer of the same width (one of the start candidates)
    uniform = float((v.double() - quantize(v, bits, False).double()).pow(2).sum())
    if bits == 1:
        assert errors[-1] == pytest.approx(uniform, rel=1e-6)  # both: α = mean |v|, q = sign
    else:
        assert errors[-1] <= uniform * (1 + 1e-9)
        assert errors[-1] < 0.9 * uniform or bits == 8  # at 8 bits max-abs is near the best
        assert len(values.unique()) > (2 * k + 1) // 2 or bits == 8  # a grid, not a few levels


def test_alternation_improves_on_its_start_and_ternary_has_three_levels():
    torch.manual_seed(0)
    v = torch.randn(2000)
    start, best = project(v, 4, 0), project(v, 4, 5)
    assert _err(v, *best) < _err(v, *start)  # the iterations move
    alpha, q = project(v, 2, 5)
    assert set(projection(v, 2).unique().tolist()) == {-alpha.item(), 0.0, alpha.item()}
    assert 0.3 < float((q == 0).float().mean()) < 0.6  # threshold α/2 near 0.6 σ
    zero_alpha, zero_q = project(torch.zeros(5), 3)
    assert zero_alpha.item() == 1.0 and torch.equal(zero_q, torch.zeros(5))


# -- defining behaviour 2: the dual bookkeeping ----------------------------------------------------
def test_dual_increment_equals_the_primal_residual_exactly():
    """Rounds with weights built so that every value is a multiple of 1/16: Proj(W + U) is then
    0.25 · q exactly, and U_new − U_old = W − Z_new holds bit for bit."""
    model = nn.Sequential(nn.Linear(16, 2, bias=False))
    method = ADMMQuantization(weight_bits=3, update_every=1, rho=1.0)  # K = 3
    session = attach(model, [method])
    q0 = torch.tensor([3, 3, -3, -3, 2, 2, -2, -2, 1, 1, -1, -1, 0, 0, 0, 0] * 2).float()
    signs = torch.tensor([1.0, -1.0] * 16)
    g = torch.Generator().manual_seed(0)
    for rnd in range(4):
        u_old = method.u_[0].clone()
        perm = torch.randperm(32, generator=g)
        v = 0.25 * q0[perm] + signs[perm] / 16 * (-1) ** rnd  # pairs k/4 ± 1/16: LS α = 1/4
        w = (v - u_old.reshape(-1)).reshape(2, 16)
        with torch.no_grad():
            model[0].parametrizations.weight.original.copy_(w)
        session.after_step(progress=(rnd + 1) / 10)
        z = method.z_[0]
        assert torch.equal(z, (0.25 * q0[perm]).reshape(2, 16))  # the construction holds
        assert torch.equal(method.u_[0] - u_old, w - z)
        if rnd:  # the dual accumulates: U is not just the last residual
            assert bool(u_old.abs().sum() > 0)
            assert not torch.equal(method.u_[0], w - z)


def test_dual_accumulates_through_training_and_z_is_the_projection_of_w_plus_u():
    model = _model()
    method = ADMMQuantization(weight_bits=2, update_every=2, admm_until=1.0, rho=0.5)
    session = attach(model, [method])
    assert all(torch.equal(z, projection(m.weight.detach(), 2))
               for z, m in zip(method.z_, method.targets_, strict=True))
    assert all(not bool(u.any()) for u in method.u_)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    seen = []

    def check(step):  # before after_step: W is final for this step, U and Z are the old ones
        seen.append(([m.weight.detach().clone() for m in method.targets_],
                     [u.clone() for u in method.u_], [z.clone() for z in method.z_]))

    _train(model, session, opt, 0, 6, 20, before_after_step=check)
    updates = 0
    for step, (ws, u_old, _) in enumerate(seen):
        after = seen[step + 1][1:] if step + 1 < len(seen) else (method.u_, method.z_)
        u_new, z_new = after
        if (step + 1) % 2:  # no update on this step
            assert all(torch.equal(a, b) for a, b in zip(u_new, u_old, strict=True))
            continue
        updates += 1
        for w, uo, un, zn in zip(ws, u_old, u_new, z_new, strict=True):
            assert torch.equal(zn, projection(w + uo, 2))
            assert torch.equal(un, uo + w - zn)  # the increment is the residual W − Z_new
    assert updates == 3 and any(bool(u.any()) for u in method.u_)


# -- defining behaviour 3: the coupling is real ----------------------------------------------------
def _toy_residuals(rho, rounds=8, per=10):
    """½‖W − T‖² with T off the ternary grid, SGD; ‖W − Z‖ after each Z/U round."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 8, bias=False))
    target = torch.randn(8, 32)
    with torch.no_grad():
        model[0].weight.copy_(target)
    method = ADMMQuantization(weight_bits=2, rho=rho, update_every=per, admm_until=1.0)
    session = attach(model, [method])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    residuals = []
    for step in range(rounds * per):
        w = model[0].weight
        loss = 0.5 * (w - target).pow(2).sum() + session.loss(None, w.new_zeros(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=(step + 1) / (rounds * per + 1))
        if (step + 1) % per == 0:
            residuals.append(float((model[0].weight.detach() - method.z_[0]).norm()))
    return residuals


def test_primal_residual_shrinks_with_rho_and_not_without():
    with_rho, without = _toy_residuals(1.0), _toy_residuals(0.0)
    assert with_rho[-1] < 0.01 * with_rho[0]
    assert all(b < a for a, b in zip(with_rho, with_rho[1:], strict=False))
    assert without[-1] >= without[0] > 1.0  # W sits at T, off the grid: nothing pulls it on


@pytest.mark.parametrize("coupling", ["squared", "norm"])
def test_coupling_gradient_matches_formula(coupling):
    model = _model()
    method = ADMMQuantization(coupling=coupling, rho=0.3)
    attach(model, [method])
    torch.manual_seed(2)
    method.u_ = [torch.randn_like(u) for u in method.u_]
    loss = method.loss(model, None, torch.zeros(2, 8, 10), Context())
    originals = [m.parametrizations.weight.original for m in method.targets_]
    grads = torch.autograd.grad(loss, originals)
    for g, m, z, u in zip(grads, method.targets_, method.z_, method.u_, strict=True):
        r = m.weight.detach() - z + u
        expect = 0.3 * r if coupling == "squared" else 0.3 * r / r.norm()
        assert torch.allclose(g, expect, atol=1e-6)
    method.projected_ = True  # after the hard projection: no coupling
    assert method.loss(model, None, torch.zeros(2, 8, 10), Context()).item() == 0


# -- defining behaviour 4: on the grid after the projection, through fine-tuning -------------------
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_projection_then_finetuning_keeps_at_most_2k_plus_1_values(bits):
    model = _model()
    method = ADMMQuantization(weight_bits=bits, update_every=1, admm_until=0.5, rho=0.1)
    session = attach(model, [method])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = {}

    def keep(step):
        before[step] = [m.weight.detach().clone() for m in method.targets_]

    _train(model, session, opt, 0, 4, 8, before_after_step=keep)  # projected at step 4
    assert method.projected_
    alphas = [a.clone() for a in method.alphas()]
    limit = 2 if bits == 1 else 2 * levels(bits) + 1
    for m, w, a in zip(method.targets_, before[3], alphas, strict=True):
        expect_a, _ = project(w, bits)
        assert torch.equal(a, expect_a) and torch.equal(m.weight, projection(w, bits))
    projected = [m.weight.detach().clone() for m in method.targets_]
    for group in opt.param_groups:  # steps of the order of α: codes change within 4 steps
        group["lr"] = 0.05
    _train(model, session, opt, 4, 4, 8)  # fine-tuning on the fixed grids
    moved = False
    for m, a, p in zip(method.targets_, alphas, projected, strict=True):
        w = m.weight.detach()
        assert torch.equal(grid_of(m).alpha, a)  # α stays fixed
        assert len(w.unique()) <= limit and set(w.unique().tolist()) <= _grid(a, bits)
        moved |= not torch.equal(w, p)
        assert not torch.equal(m.parametrizations.weight.original, w)  # the float W trains
    assert moved  # fine-tuning changes codes: the grid is trained, not frozen
    effective = [m.weight.detach().clone() for m in method.targets_]
    plain = session.finalize()
    assert is_plain(plain)
    for (_, m), w, a in zip(select(plain), effective, alphas, strict=True):
        assert torch.equal(m.weight, w) and set(m.weight.unique().tolist()) <= _grid(a, bits)
        assert not bool((torch.signbit(m.weight) & (m.weight == 0)).any())


def test_finalize_inside_the_admm_phase_projects():
    model = _model()
    method = ADMMQuantization(weight_bits=3, admm_until=1.0, update_every=1)
    session = attach(model, [method])
    _train(model, session, torch.optim.Adam(model.parameters(), lr=1e-2), 0, 2, 10)
    assert not method.projected_ and all(a.item() == 0 for a in method.alphas())
    ws = [m.weight.detach().clone() for m in method.targets_]
    plain = session.finalize()
    for (_, m), w in zip(select(plain), ws, strict=True):
        assert torch.equal(m.weight, projection(w, 3)) and len(m.weight.unique()) <= 7


# -- schedule and resume ---------------------------------------------------------------------------
def test_update_every_zero_is_once_per_epoch_and_needs_bind():
    model = _model()
    method = ADMMQuantization(update_every=0)
    session = attach(model, [method])
    with pytest.raises(RuntimeError, match="session.bind"):
        session.after_step(progress=0.1)
    session.bind(torch.optim.Adam(model.parameters()), total_steps=12, steps_per_epoch=3)
    session.ctx.step = 0
    with torch.no_grad():
        method.targets_[0].parametrizations.weight.original.add_(0.05)  # W ≠ Proj(W): U moves
    changed = []
    for step in range(1, 6):
        before = [u.clone() for u in method.u_]
        session.after_step(progress=step / 12)
        changed.append(not all(torch.equal(a, b) for a, b in zip(before, method.u_, strict=True)))
    assert changed == [False, False, True, False, False]


def _run(kill_at, total=10):
    """Train ``total`` steps; when ``kill_at`` is set, checkpoint there and resume in a fresh
    model, method, session and optimizer. Returns the finalized weights."""
    kwargs = dict(weight_bits=2, update_every=2, admm_until=0.5, rho=0.5)
    model = _model()
    session = attach(model, [ADMMQuantization(**kwargs)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, session, opt, 0, kill_at or total, total)
    if kill_at:
        saved = (model.state_dict(), session.state_dict(), opt.state_dict())
        model = _model(seed=5)  # different init: everything must come from the checkpoint
        session = attach(model, [ADMMQuantization(**kwargs)])
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.load_state_dict(saved[0])
        session.load_state_dict(*saved[1])
        opt.load_state_dict(saved[2])
        session.ctx.step, session.ctx.progress = kill_at, kill_at / total
        _train(model, session, opt, kill_at, total - kill_at, total)
    return [m.weight.detach().clone() for _, m in select(session.finalize())]


@pytest.mark.parametrize("kill_at", [3, 7])  # inside the ADMM phase (mid-period), after it
def test_killed_and_resumed_training_equals_uninterrupted(kill_at):
    straight, resumed = _run(None), _run(kill_at)
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(straight, _run(None, total=12), strict=True))


# -- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    (dict(weight_bits=0), "weight_bits must be an int in 1..8, got 0"),
    (dict(weight_bits=9), "weight_bits must be an int in 1..8, got 9"),
    (dict(weight_bits=True), "weight_bits must be an int in 1..8, got True"),
    (dict(weight_bits=4.0), "weight_bits must be an int in 1..8, got 4.0"),
    (dict(rho=-1), "rho must be a number >= 0, got -1"),
    (dict(rho=float("nan")), "rho must be a number >= 0, got nan"),
    (dict(rho="big"), "rho must be a number >= 0, got 'big'"),
    (dict(coupling="l1"), "coupling must be one of ['squared', 'norm'], got 'l1'"),
    (dict(admm_until=0.0), "admm_until must be in (0, 1], got 0.0"),
    (dict(admm_until=1.5), "admm_until must be in (0, 1], got 1.5"),
    (dict(update_every=-1), "update_every must be an int >= 0, got -1"),
    (dict(update_every=1.5), "update_every must be an int >= 0, got 1.5"),
    (dict(projection_iters=-1), "projection_iters must be an int >= 0, got -1"),
    (dict(projection_iters=True), "projection_iters must be an int >= 0, got True"),
])
def test_bad_hyper_parameters_give_one_line_naming_the_field(kwargs, message):
    with pytest.raises(ValueError) as info:
        ADMMQuantization(**kwargs)
    assert str(info.value) == message


def test_bad_selection_names_the_field():
    with pytest.raises(ValueError, match=r"include: invalid regex"):
        attach(_model(), [ADMMQuantization(include=["("])])
