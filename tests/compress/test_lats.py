"""LATS / S-LATS / PGH (Chen et al., ICLR 2023): spec §2.5, and exact resume for STDS and LATS."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from spikecompress.compress import attach
from spikecompress.compress.contract import TINY_MODELS as TINY
from spikecompress.compress.contract import check_method, method_spec
from spikecompress.compress.method import Context
from spikecompress.compress.prune.lats import LATS, lowfreq_fraction, sinp_fraction
from spikecompress.compress.prune.soft_threshold import find_all
from spikecompress.compress.prune.stds import STDS, stds_threshold
from spikecompress.data import DataConfig, load_data
from spikecompress.measurement.sparsity import weight_sparsity
from spikecompress.models import build
from spikecompress.snn import reset_state
from spikecompress.train.loop import cosine_lr

N, LR, D = 200, 0.1, 0.6
LR_SCHEDULES = {
    "constant": lambda k: LR,
    "cosine": lambda k: cosine_lr(LR, k, N),
    "steps": lambda k: LR * 0.1 ** (3 * k // N),  # ÷10 at 1/3 and 2/3 of the stage
}


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


def _ds(method, lr_at, n=N, steps_per_epoch=None):
    ctx = Context(lr_at=lr_at, total_steps=n, steps_per_epoch=steps_per_epoch)
    out = []
    for t in range(n + 1):
        ctx.step = t
        out.append(method.threshold_at(ctx))
    return out


def _ratios(ds, lr_at):
    return torch.tensor([(ds[t + 1] - ds[t]) / lr_at(t) for t in range(len(ds) - 1)],
                        dtype=torch.float64)


# -- §2.5 test 1: Δd / η is constant for any LR schedule ------------------------------------------
@pytest.mark.parametrize("lr_name", list(LR_SCHEDULES))
def test_threshold_increments_follow_the_learning_rate(lr_name):
    lr_at = LR_SCHEDULES[lr_name]
    ds = _ds(LATS(D=D), lr_at)
    assert ds[0] == 0 and ds[-1] == D
    r = _ratios(ds, lr_at)
    torch.testing.assert_close(r, torch.full_like(r, float(r[0])), rtol=1e-9, atol=0)
    if lr_name == "constant":  # a linear ramp
        ramp = D * torch.arange(N + 1, dtype=torch.float64) / N
        torch.testing.assert_close(torch.tensor(ds, dtype=torch.float64), ramp, rtol=0, atol=1e-12)
    if lr_name == "cosine":  # the S-LATS closed form, up to the left-Riemann discretisation
        cf = [D * sinp_fraction(t / N) for t in range(N + 1)]
        assert max(abs(a - b) for a, b in zip(ds, cf, strict=True)) < 0.5 * D / N
    if lr_name == "steps":  # piecewise linear, slopes ×0.1 at every LR drop
        slope = [ds[t + 1] - ds[t] for t in (0, N // 2, N - 1)]
        assert slope[1] == pytest.approx(0.1 * slope[0]) and slope[2] == pytest.approx(
            0.01 * slope[0])


@pytest.mark.parametrize("ramp", ["linear", "sine"])
def test_a_hard_coded_ramp_ignores_a_cosine_learning_rate(ramp):
    """The superficial version: STDS's fixed ramps give Δd/η far from constant under cosine LR."""
    lr_at = LR_SCHEDULES["cosine"]
    ds = [stds_threshold(ramp, D, t / N) for t in range(N + 1)]
    r = _ratios(ds, lr_at)[: N - 5]  # (the last η → 0 would only make the spread larger)
    assert float(r.max() / r.min()) > 5


def test_sinp_form_is_the_official_closed_form():
    ds = _ds(LATS(D=D, form="sinp"), LR_SCHEDULES["constant"])  # the LR is not consulted
    for t in (0, 37, N // 2, N):
        x = t / N
        assert ds[t] == pytest.approx(D * (x + math.sin(math.pi * x) / math.pi), abs=1e-15)
    assert ds[N // 2] == pytest.approx(D * (0.5 + 1 / math.pi))


@pytest.mark.parametrize("beta", [0.1, 20.0])
def test_pgh_weights_the_learning_rate_by_beta_to_the_x(beta):
    lr_at = LR_SCHEDULES["cosine"]
    assert sinp_fraction(0.0, beta) == pytest.approx(0, abs=1e-12)
    assert sinp_fraction(1.0, beta) == pytest.approx(1)
    ds = _ds(LATS(D=D, beta=beta), lr_at)
    assert ds[-1] == D
    r = _ratios(ds, lr_at) / torch.tensor([beta ** (t / N) for t in range(N)],
                                          dtype=torch.float64)
    torch.testing.assert_close(r, torch.full_like(r, float(r[0])), rtol=1e-9, atol=0)
    cf = [D * sinp_fraction(t / N, beta) for t in range(N + 1)]  # the code's sinppghInc
    assert max(abs(a - b) for a, b in zip(ds, cf, strict=True)) < 2 * D / N
    plain = _ds(LATS(D=D), lr_at)
    assert (ds[N // 2] < plain[N // 2]) == (beta > 1)  # growing λ delays the pruning


def test_lowfreq_is_the_integral_of_a_per_epoch_cosine_learning_rate():
    spe, epochs = 10, 20  # N = 200 steps
    per_epoch = lambda k: LR * 0.5 * (1 + math.cos(math.pi * (k // spe) / epochs))  # noqa: E731
    low = _ds(LATS(D=D, form="lowfreq"), per_epoch, steps_per_epoch=spe)
    integral = _ds(LATS(D=D), per_epoch)
    assert low[-1] == pytest.approx(D, abs=1e-12)
    assert max(abs(a - b) for a, b in zip(low, integral, strict=True)) < 1e-12
    assert low[spe] == pytest.approx(D * lowfreq_fraction(spe, spe, epochs))
    with pytest.raises(RuntimeError, match="steps_per_epoch"):
        _ds(LATS(D=D, form="lowfreq"), per_epoch, steps_per_epoch=7)


def test_start_holds_d_at_zero_then_integrates_over_the_rest():
    lr_at = LR_SCHEDULES["cosine"]
    ds = _ds(LATS(D=D, start=0.25), lr_at)
    s = N // 4
    assert all(d == 0 for d in ds[: s + 1]) and ds[s + 1] > 0 and ds[-1] == D
    total = sum(lr_at(k) for k in range(s, N))
    assert ds[s + 20] == pytest.approx(D * sum(lr_at(k) for k in range(s, s + 20)) / total)


def test_lats_asks_for_bind():
    method = LATS(D=D)
    with pytest.raises(RuntimeError, match=r"session\.bind"):
        method.threshold_at(Context(step=3))
    with pytest.raises(RuntimeError, match=r"session\.bind"):
        method.threshold_at(Context(step=3, total_steps=10))


def test_fields_are_validated():
    for kwargs, msg in [({"D": -1}, "D must"), ({"form": "cubic"}, "form must"),
                        ({"beta": 0}, "beta must"), ({"start": 1.0}, "start must"),
                        ({"form": "lowfreq", "beta": 2.0}, "beta must be 1")]:
        with pytest.raises(ValueError, match=msg):
            LATS(**kwargs)


@pytest.mark.parametrize("straight_through", [True, False])
def test_lats_uses_the_straight_through_soft_threshold(straight_through):
    """§2.5 test 2: per-weight behaviour as STDS (test_stds.py); here: LATS wires it in."""
    model = build(classes=10, **TINY["mlp"])
    attach(model, [LATS(D=D, straight_through=straight_through)])
    params = find_all(model)
    assert len(params) == 2 and all(p.straight_through == straight_through for p in params)
    for p in params:
        p.set_(0.05)
    layer = next(m for m in model.modules() if hasattr(m, "parametrizations"))
    dead = (layer.weight == 0).detach()
    assert dead.any()
    F.cross_entropy(model(torch.rand(2, 8, 64)).mean(0), torch.arange(8)).backward()
    grad = layer.parametrizations.weight.original.grad[dead]
    assert (grad.abs().sum() > 0) == straight_through


# -- checkpoint / resume exactness (STDS and LATS) -------------------------------------------------
def _fresh(method, seed=0):
    torch.manual_seed(seed)
    model = build(classes=10, **TINY["conv_net"])
    session = attach(model, [method])
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    session.bind(opt, LR_SCHEDULES["cosine"], total_steps=12, steps_per_epoch=4)
    return model, session, opt


def _steps(model, session, opt, first, last):
    lr_at = LR_SCHEDULES["cosine"]
    for step in range(first, last):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        gen = torch.Generator().manual_seed(step)
        x, y = torch.rand(2, 8, 1, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        loss = F.cross_entropy(model(x).mean(0), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=(step + 1) / 12, epoch=step // 4)
        reset_state(model)


@pytest.mark.parametrize("make", [lambda: STDS(D=0.1), lambda: LATS(D=0.1),
                                  lambda: LATS(D=0.1, beta=5.0, start=0.25),
                                  lambda: STDS(sparsity=0.6), lambda: LATS(sparsity=0.6)],
                         ids=["stds", "lats", "pgh_start", "stds_target", "lats_target"])
def test_killed_and_resumed_training_equals_uninterrupted(make):
    model, session, opt = _fresh(make())
    _steps(model, session, opt, 0, 12)
    killed, k_session, k_opt = _fresh(make())
    _steps(killed, k_session, k_opt, 0, 5)
    saved = (copy.deepcopy(killed.state_dict()), k_session.state_dict(),
             copy.deepcopy(k_opt.state_dict()), k_session.ctx.step, k_session.ctx.progress)
    resumed, r_session, r_opt = _fresh(make(), seed=1)  # different init: loading must matter
    resumed.load_state_dict(saved[0])
    r_session.load_state_dict(*saved[1])
    r_opt.load_state_dict(saved[2])
    r_session.ctx.step, r_session.ctx.progress = saved[3], saved[4]
    _steps(resumed, r_session, r_opt, 5, 12)
    final = model.state_dict()
    assert any(k.endswith(".d") for k in final)  # the thresholds are checkpointed with θ
    assert float(find_all(model)[0].d) == pytest.approx(session.methods[0].D_)  # D, or D_N
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, final[key]), key
    assert torch.equal(r_session.finalize()(torch.ones(2, 1, 1, 8, 8)),
                       session.finalize()(torch.ones(2, 1, 1, 8, 8)))


@pytest.mark.parametrize("model_name", list(TINY))
def test_contract(model_name, data):
    torch.manual_seed(0)
    check_method(LATS, build(classes=10, **TINY[model_name]), data)


# -- sparsity targets (STDS and LATS): D calibrated while training --------------------------------
def _trained_conv(data, steps=30):
    """The tiny conv net trained ``steps`` steps on digits (seeded: the same model each time)."""
    torch.manual_seed(0)
    model = build(classes=10, **TINY["conv_net"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _, (x, y) in zip(range(steps), (b for _ in range(steps) for b in data.train),
                         strict=False):
        loss = F.cross_entropy(model(x).mean(0), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        reset_state(model)
    return model


@pytest.fixture(scope="module")
def trained(data):
    return _trained_conv(data)


def _finetune(model, method, data, steps, total=None, lr=1e-2):
    """Adam on ``data`` for ``steps`` of a stage of ``total`` steps; returns the session and
    (sparsity, d) after every step."""
    session = attach(model, [method])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    session.bind(opt, total_steps=total or steps, steps_per_epoch=len(data.train))
    trace = []
    batches = (b for _ in range(steps) for b in data.train)
    for step, (x, y) in zip(range(steps), batches, strict=False):
        loss = F.cross_entropy(model(x).mean(0), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=(step + 1) / (total or steps))
        reset_state(model)
        trace.append((method.current_sparsity(), float(find_all(model)[0].d)))
    return session, trace


def _n_selected(model):
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


SOFT = {"stds": STDS, "lats": LATS}


@pytest.mark.parametrize("target", [0.5, 0.85])
@pytest.mark.parametrize("name", list(SOFT))
def test_sparsity_target_is_reached_while_training_and_held_to_the_end(name, target, trained,
                                                                       data):
    """Calibration happens in training: the sparsity ramps up (not a one-shot prune), sits on
    the target from ``until`` (half the stage) on, and finalize's last adjustment is empty.
    Exact by construction: d is the k-th smallest |θ|, so k = round(s·n) weights are silent
    (more only on ties); the bound is ±1 pp."""
    model = copy.deepcopy(trained)
    method = SOFT[name](sparsity=target)
    n, steps = _n_selected(model), 12
    session, trace = _finetune(model, method, data, steps)
    sparsities, ds = zip(*trace, strict=True)
    assert 0 < sparsities[0] < target - 0.1  # the first step prunes a little, not everything
    assert ds[1] < ds[steps // 2 - 1]  # d follows the ramp up
    for s in sparsities[steps // 2 - 1:]:  # on target from until = 0.5 on, every step
        assert abs(s - target) <= 0.01
    final = session.finalize()
    zeros = round(weight_sparsity(final) * n)
    assert round(target * n) <= zeros <= round(target * n) + n // 100
    assert abs(method.topup_) < 0.01  # the top-up at finalize: nothing left to do


@pytest.mark.parametrize("name", list(SOFT))
def test_a_stage_stopped_early_still_ends_on_the_target(name, trained, data):
    """Finalize's exact adjustment: 3 of 12 steps leave the ramp low; finalize lands on s."""
    model = copy.deepcopy(trained)
    method = SOFT[name](sparsity=0.7)
    session, trace = _finetune(model, method, data, 3, total=12)
    assert trace[-1][0] < 0.6
    final = session.finalize()
    assert abs(weight_sparsity(final) - 0.7) <= 0.01
    assert method.topup_ > 0.1


@pytest.mark.parametrize("name", list(SOFT))
def test_paper_knob_D_is_not_calibrated(name, trained, data):
    """D keeps the paper's behaviour: d ends at D exactly, the sparsity is whatever D gives."""
    model = copy.deepcopy(trained)
    method = SOFT[name](D=0.05)
    assert method.sparsity is None and method.until == 1.0
    session, trace = _finetune(model, method, data, 6)
    assert trace[-1][1] == pytest.approx(0.05, abs=1e-9) and method.D_ == 0.05
    session.finalize()
    assert method.topup_ == 0


@pytest.mark.parametrize("name", list(SOFT))
def test_knobs_sparsity_and_D_exclude_each_other_and_round_trip(name):
    cls = SOFT[name]
    with pytest.raises(ValueError, match="set sparsity or D, not both"):
        cls(sparsity=0.5, D=0.1)
    with pytest.raises(ValueError, match="sparsity must be in"):
        cls(sparsity=1.0)
    with pytest.raises(ValueError, match="until must be in"):
        cls(until=0.0)
    assert cls().sparsity == 0.7 and cls().until == 0.5 and cls().D is None
    for method in (cls(), cls(sparsity=0.9, until=0.8), cls(D=0.3)):
        spec = yaml.safe_load(yaml.safe_dump(method_spec(method)))
        assert cls(**{k: v for k, v in spec.items() if k != "name"}) == method
