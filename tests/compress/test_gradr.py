"""Grad R (Chen et al., IJCAI 2021): the defining behaviours of spec §2.3 and the contract."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from spikecompress.compress import attach, is_plain
from spikecompress.compress.contract import TINY_MODELS as TINY
from spikecompress.compress.contract import check_method, method_spec
from spikecompress.compress.prune.gradr import GradR, land_on_target_, rewiring_of, theta_of
from spikecompress.data import DataConfig, load_data
from spikecompress.measurement.sparsity import weight_sparsity
from spikecompress.models import build
from spikecompress.snn import reset_state


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


def _linear(seed=0, shape=(6, 5)):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(shape[1], shape[0], bias=False)).double()


def _rewired(model, **kw):
    method = GradR(**kw)
    session = attach(model, [method])
    return method, session


def _mlp(seed):
    torch.manual_seed(seed)
    return build(classes=10, **TINY["mlp"])


def _batch(step):
    g = torch.Generator().manual_seed(step)
    return torch.rand(2, 8, 64, generator=g), torch.randint(0, 10, (8,), generator=g)


def _train(model, session, opt, steps, first=0):
    for step in range(first, first + steps):
        x_seq, y = _batch(step)
        loss = F.cross_entropy(model(x_seq).mean(0), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=(step + 1) / 40)
        reset_state(model)


def test_sign_is_immutable_through_many_adam_steps():
    """§2.3-1: sign(w) ∈ {0, s} at every step, while many synapses are pushed through zero."""
    model = _linear()
    method, session = _rewired(model, alpha=0.5, prior_sparsity=0.9)
    layer = model[0]
    s = rewiring_of(layer).sign.clone()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    session.bind(opt)
    target = -2 * layer.weight.detach()  # every weight wants the opposite sign
    crossed = torch.zeros_like(s, dtype=torch.bool)
    for _ in range(40):
        loss = ((layer.weight - target) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=0.5)
        w = layer.weight.detach()
        assert ((torch.sign(w) == 0) | (torch.sign(w) == s)).all()
        crossed |= theta_of(layer).detach() < 0
    assert crossed.all()  # not vacuous: every synapse was driven past zero
    assert torch.equal(rewiring_of(layer).sign, s)


def test_pruned_synapse_regrows_only_with_the_redefined_gradient():
    """§2.3-2: θ = −0.01 (w = 0) and a gradient pointing away from zero → θ > 0 and w ≠ 0 again;
    plain autograd through relu gives θ zero gradient and the synapse stays dead."""
    model = _linear()
    method, session = _rewired(model, alpha=1e-3)
    layer = model[0]
    theta, s = theta_of(layer), rewiring_of(layer).sign
    with torch.no_grad():
        theta[2, 3] = -0.01
    assert layer.weight[2, 3] == 0
    opt = torch.optim.Adam([theta], lr=1e-2)
    session.bind(opt)
    for _ in range(4):
        loss = -s[2, 3] * layer.weight[2, 3]  # dL/dw = −s: growing |w| lowers the loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=0.5)
    assert theta[2, 3] > 0 and layer.weight[2, 3] != 0
    assert torch.sign(layer.weight[2, 3]) == s[2, 3]

    plain = torch.tensor(-0.01, dtype=torch.double, requires_grad=True)  # w = s·relu(θ)
    plain_opt = torch.optim.Adam([plain], lr=1e-2)
    for _ in range(4):
        loss = -s[2, 3] * (s[2, 3] * torch.relu(plain))
        plain_opt.zero_grad()
        loss.backward()
        assert plain.grad == 0
        plain_opt.step()
    assert plain.item() == -0.01


@pytest.mark.parametrize("optim", ["adam", "sgd"])
def test_prior_alone_moves_theta_by_the_bias_corrected_step_towards_mu(optim):
    """§2.3-3: zero task gradient → |Δθ| = lr/(1 − β1^t)·α (SGD: lr·α) at t = 1, 2, 3, towards μ,
    not normalised by Adam (a prior inside Adam would move every θ by ≈ lr)."""
    model = _linear()
    method, session = _rewired(model, alpha=2.0, prior_sparsity=0.9)
    layer = model[0]
    theta = theta_of(layer)
    with torch.no_grad():
        theta[0, :3] = torch.tensor([-3.0, -2.0, 0.7])  # μ = ln(0.2)/2 ≈ −0.80: two below μ
    lr, beta1 = 0.01, 0.8
    opt = (torch.optim.Adam([theta], lr=lr, betas=(beta1, 0.99)) if optim == "adam"
           else torch.optim.SGD([theta], lr=lr, momentum=0.9))
    session.bind(opt)
    for t in (1, 2, 3):
        before = theta.detach().clone()
        loss = (layer.weight * 0).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.equal(theta.detach(), before)  # the task term is exactly zero
        session.after_step(progress=t / 3)
        step = lr / (1 - beta1**t) if optim == "adam" else lr
        expected = before - step * 2.0 * torch.sign(before - method.mu)
        assert torch.allclose(theta.detach(), expected, rtol=0, atol=1e-15)
        assert torch.allclose((theta.detach() - before).abs(), torch.full_like(before, step * 2.0))
    assert theta[0, 0] > -3.0 and theta[0, 2] < 0.7
    if optim == "adam":  # no optimizer step since (a skipped AMP step): no prior either
        session.after_step(progress=1.0)
        assert torch.equal(theta.detach(), expected)


def test_mu_from_the_target_sparsity_and_field_checks():
    """§2.3-4: μ = ln(2(1 − s))/α; s < 0.5 would put μ above zero."""
    assert GradR(alpha=1e-3, prior_sparsity=0.95).mu == pytest.approx(-2302.585, abs=1e-3)
    assert GradR(alpha=1e-3, prior_sparsity=0.95).mu == pytest.approx(math.log(0.1) / 1e-3)
    assert GradR(alpha=1e-3).prior_sparsity == 0.95  # the paper's -s, as before
    assert GradR(alpha=0.0).mu == -math.inf
    assert GradR(sparsity=0.9).mu == -math.inf  # a target's prior is a uniform pull
    with pytest.raises(ValueError, match="prior_sparsity must be in"):
        GradR(alpha=1.0, prior_sparsity=0.4)
    with pytest.raises(ValueError, match="alpha must be"):
        GradR(alpha=-1.0)


def test_adam_on_theta_equals_the_official_update():
    """The Adam-on-θ update equals the formula of spec §2.3 (official ``gradrewire.py``):
    moments of g = ∂L/∂w, θ ← θ − step·s·m/(√v̂ + ε) − step·α·sign(θ − μ), w = s·max(θ, 0)."""
    model = _linear(seed=1, shape=(8, 7))
    layer = model[0]
    w0 = layer.weight.detach().clone()
    method, session = _rewired(model, alpha=0.05, prior_sparsity=0.95)
    lr, (b1, b2), eps = 0.03, (0.9, 0.999), 1e-8
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    session.bind(opt)
    target = torch.randn(8, 7, dtype=torch.double, generator=torch.Generator().manual_seed(3))
    s, theta = torch.sign(w0), w0.abs()
    m, v = torch.zeros_like(w0), torch.zeros_like(w0)
    for t in range(1, 41):
        loss = ((layer.weight - target) ** 2 * target.abs()).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=t / 40)
        w = s * theta.clamp(min=0)
        g = 2 * (w - target) * target.abs()  # official: the autograd gradient of w
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        step = lr / (1 - b1**t)
        prior_sign = torch.sign(theta - method.mu)
        theta = theta - step * s * m / ((v / (1 - b2**t)).sqrt() + eps)
        theta = theta - step * method.alpha * prior_sign
        assert torch.allclose(theta_of(layer).detach(), theta, rtol=0, atol=1e-12)
    assert (theta < 0).any()  # some synapses were pruned along the way


@pytest.mark.parametrize("knobs", [{"alpha": 1.0, "prior_sparsity": 0.9}, {"sparsity": 0.8}],
                         ids=["alpha", "target"])
def test_checkpoint_round_trip_keeps_theta_and_resumes_exactly(knobs):
    """§2.3-5: θ (negative θ of pruned synapses too) and s live in model.state_dict; a killed
    and resumed training equals an uninterrupted one bit for bit."""
    def start(seed):
        model = _mlp(seed)
        method = GradR(**knobs)
        session = attach(model, [method])
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        session.bind(opt)
        return model, method, session, opt

    model, method, session, opt = start(0)
    _train(model, session, opt, 20)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    thetas = [k for k in state if k.endswith("parametrizations.weight.original")]
    assert len(thetas) == 2 and all(f"{k[:-8]}0.sign" in state for k in thetas)
    assert any((state[k] < 0).any() for k in thetas) and method.current_sparsity() > 0
    sess_state = session.state_dict()
    opt_state = {"state": {k: dict(v) for k, v in opt.state_dict()["state"].items()},
                 "param_groups": opt.state_dict()["param_groups"]}
    opt_state["state"] = {k: {n: x.clone() for n, x in v.items()}
                          for k, v in opt_state["state"].items()}
    _train(model, session, opt, 20, first=20)

    model2, method2, session2, opt2 = start(1)  # another init: other signs until loaded
    model2.load_state_dict(state)
    session2.load_state_dict(*sess_state)
    opt2.load_state_dict(opt_state)
    session2.ctx.step, session2.ctx.progress = 20, 0.5
    for k in thetas:
        assert torch.equal(model2.state_dict()[k], state[k])
    _train(model2, session2, opt2, 20, first=20)
    for k, v in model.state_dict().items():
        assert torch.equal(model2.state_dict()[k], v), k
    assert method2.current_sparsity() == method.current_sparsity()


def test_attach_selects_every_conv_and_linear_and_finalize_bakes_the_weights():
    torch.manual_seed(0)
    model = build("conv_net", in_channels=1, input_size=8, classes=10, widths=[4, 8])
    with torch.no_grad():
        model.features[0].conv.weight[1, 0, 0, 0] = 0.0
    method, session = _rewired(model, alpha=1.0)
    assert len(method.targets_) == 3  # first conv and classifier included
    layer = method.targets_[0]
    s = rewiring_of(layer).sign
    assert s[1, 0, 0, 0] == 1 and set(s.unique().tolist()) == {-1.0, 1.0}  # a zero can grow
    assert torch.equal(theta_of(layer).detach(), s * layer.weight.detach())  # θ0 = |w0|
    with torch.no_grad():
        theta_of(layer)[0] = -1.0
    expected = (s * theta_of(layer).clamp(min=0)).detach()
    sparsity = method.current_sparsity()
    assert sparsity >= theta_of(layer)[0].numel() / sum(m.weight.numel() for m in method.targets_)
    with pytest.raises(RuntimeError, match="session.bind"):
        session.after_step(progress=0.1)
    final = session.finalize()
    assert is_plain(final) and torch.equal(final.features[0].conv.weight, expected)
    zeros = sum(int((m.weight == 0).sum()) for m in method.targets_)
    assert zeros / sum(m.weight.numel() for m in method.targets_) == sparsity


@pytest.mark.parametrize("model_name", list(TINY))
def test_contract(model_name, data):
    torch.manual_seed(0)
    check_method(GradR, build(classes=10, **TINY[model_name]), data)


# -- the sparsity target: the prior's pull calibrated while training ---------------------------
@pytest.fixture(scope="module")
def trained(data):
    """The tiny conv net trained for 30 steps of digits (seeded: the same model each time)."""
    torch.manual_seed(0)
    model = build(classes=10, **TINY["conv_net"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _, (x, y) in zip(range(30), (b for _ in range(30) for b in data.train), strict=False):
        loss = F.cross_entropy(model(x).mean(0), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        reset_state(model)
    return model


def _finetune(model, method, data, steps, total=None, lr=1e-2):
    """Adam on ``data`` for ``steps`` of a stage of ``total`` steps; returns the session, the
    number of θ ≤ 0 after every step and the path's count k at that step."""
    session = attach(model, [method])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    session.bind(opt, total_steps=total or steps, steps_per_epoch=len(data.train))
    n = sum(m.weight.numel() for m in method.targets_)
    dead, path, alphas = [], [], []
    batches = (b for _ in range(steps) for b in data.train)
    for step, (x, y) in zip(range(steps), batches, strict=False):
        loss = F.cross_entropy(model(x).mean(0), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=(step + 1) / (total or steps))
        reset_state(model)
        dead.append(sum(int((theta_of(m) <= 0).sum()) for m in method.targets_))
        path.append(round(method.path_at(session.ctx) * n))
        alphas.append(method.alpha_)
    return session, dead, path, alphas


@pytest.mark.parametrize("target", [0.5, 0.85])
def test_sparsity_target_is_followed_while_training_and_ends_on_it(target, trained, data):
    """The pull keeps at least the path's count k_n = round(s*(n)·N) of θ ≤ 0 after every step
    (integers, exact by construction: q is the k_n-th smallest θ), the path rises (not a one-shot
    prune) and reaches s at half the stage; finalize's top-up is then (almost) empty."""
    model = copy.deepcopy(trained)
    method = GradR(sparsity=target)
    session, dead, path, alphas = _finetune(model, method, data, 12)
    n = sum(m.weight.numel() for m in method.targets_)
    assert all(d >= k for d, k in zip(dead, path, strict=True))
    assert 0 < path[0] < path[2] < path[5] == round(target * n) == path[-1]
    assert dead[0] < round(target * n) * 0.8  # the first step prunes a part only
    assert max(alphas) > 0  # the prior did pull
    final = session.finalize()
    zeros = sum(int((m.weight == 0).sum()) for m in method.targets_)
    assert round(target * n) <= zeros <= round(target * n) + n // 100
    assert abs(method.topup_) < 0.05 and abs(weight_sparsity(final) - target) <= 0.01


def test_a_stage_stopped_early_still_ends_on_the_target(trained, data):
    """Finalize's exact adjustment: 2 of 12 steps leave the path low; finalize lands on s, by
    moving the θ between 0 and τ across zero (the live weights above τ keep their values)."""
    model = copy.deepcopy(trained)
    method = GradR(sparsity=0.7)
    session, dead, path, _ = _finetune(model, method, data, 2, total=12)
    n = sum(m.weight.numel() for m in method.targets_)
    assert dead[-1] < 0.6 * n
    before = [m.weight.detach().clone() for m in method.targets_]
    final = session.finalize()
    assert abs(weight_sparsity(final) - 0.7) <= 0.01 and method.topup_ > 0.1
    for w0, m in zip(before, method.targets_, strict=True):
        kept = m.weight != 0
        assert torch.equal(m.weight[kept], w0[kept])  # survivors unchanged: τ > 0 prunes only


def test_land_on_target_regrows_the_least_dead_when_over_the_target():
    theta = torch.tensor([-0.5, -0.3, -0.2, -0.1, 0.1, 0.4])
    land_on_target_([theta], 0.5)  # k = 3: τ = −0.2, so −0.1 regrows to 0.1
    assert int((theta <= 0).sum()) == 3
    torch.testing.assert_close(theta, torch.tensor([-0.5, -0.3, -0.2, 0.1, 0.1, 0.4]))
    land_on_target_([theta], 0.9)  # k = 5: τ = the larger 0.1, so both 0.1 die
    assert int((theta <= 0).sum()) == 5 and theta[-1] == 0.4


def test_knobs_sparsity_and_alpha_exclude_each_other_and_round_trip():
    with pytest.raises(ValueError, match="set sparsity or alpha, not both"):
        GradR(sparsity=0.9, alpha=0.4)
    with pytest.raises(ValueError, match="prior_sparsity .* needs alpha"):
        GradR(prior_sparsity=0.9)
    with pytest.raises(ValueError, match="until .* needs sparsity"):
        GradR(alpha=0.4, until=0.5)
    with pytest.raises(ValueError, match="sparsity must be in"):
        GradR(sparsity=1.0)
    assert GradR().sparsity == 0.7 and GradR().until == 0.5 and GradR().alpha is None
    for method in (GradR(), GradR(sparsity=0.9, until=0.8), GradR(alpha=0.4, prior_sparsity=0.9)):
        spec = yaml.safe_load(yaml.safe_dump(method_spec(method)))
        assert GradR(**{k: v for k, v in spec.items() if k != "name"}) == method
