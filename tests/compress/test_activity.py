"""Activity regularisation as a method (spec §4.1, Deng et al. TNNLS 2021): the spike-rate penalty
``activity``, its weightings, target hinge and composition with every other family."""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikecompress.compress import METHODS, ActivityPenalty, attach, is_plain
from spikecompress.compress.activity.penalty import (
    SpikeRecorder,
    layer_fanouts,
    spike_rate_penalty,
)
from spikecompress.compress.contract import TINY_MODELS as TINY
from spikecompress.compress.contract import _train_steps, check_method
from spikecompress.compress.method import hook
from spikecompress.data import DataConfig, load_data
from spikecompress.measurement import count
from spikecompress.models import build
from spikecompress.snn import IF, LIF, reset_state


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


def _hand_net():
    """Linear(2, 8) → IF "1" → Linear(8, 4) → IF "3" → Linear(4, 12): fan-outs 4 and 12."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), IF(), nn.Linear(8, 4), IF(), nn.Linear(4, 12))
    net.in_shape = (2,)
    return net


def _spikes(rate_num: int, shape: tuple) -> torch.Tensor:
    """A 0/1 tensor of ``shape`` with exactly ``rate_num`` ones (a dyadic rate when numel is)."""
    s = torch.zeros(shape).flatten()
    s[:rate_num] = 1
    return s.view(shape)


# -- the defining behaviours (spec §4.1) ----------------------------------------------------------
def test_the_penalty_gradient_reaches_a_presynaptic_weight_through_the_surrogate():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 6), LIF(), nn.Linear(6, 3))
    with torch.no_grad():
        net[0].weight.mul_(4)
    net.in_shape = (4,)
    method = ActivityPenalty(weight=1.0)
    session = attach(net, [method])
    x = torch.rand(4, 5, 4)  # [T, B, F]
    out = net(x)
    penalty = session.loss(x, out)
    assert 0 < penalty.item() < 1  # the layer's rate: some neurons fire, not all
    penalty.backward()
    grad = net[0].weight.grad  # Θ has no gradient: only the surrogate gets it to W1
    assert grad is not None and bool((grad != 0).any())
    assert net[2].weight.grad is None  # downstream of the last neuron: no path
    session.finalize()
    assert is_plain(net)


def test_training_with_the_penalty_lowers_the_mean_rate_at_equal_epochs():
    """Same init, data and steps on a toy task (4 classes of 16-d points, an MLP with LIF
    neurons, T = 4): the mean firing rate on held-out points after training is lower with
    λ > 0 than with λ = 0, and the task is still learnt (well under a second)."""
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(16, 4, generator=g)
    x_all = torch.rand(320, 16, generator=g)
    y_all = (x_all - 0.5) @ proj
    y_all = y_all.argmax(1)
    seq = x_all.expand(4, -1, -1)  # [T, N, F]: the same input at every step

    def trained(weight):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(16, 32), LIF(), nn.Linear(32, 4))
        with torch.no_grad():
            net[0].weight.mul_(4)
        session = attach(net, [ActivityPenalty(weight=weight)])
        opt = torch.optim.Adam(net.parameters(), lr=2e-2)
        for _ in range(10):  # epochs of 8 batches
            for i in range(0, 256, 32):
                out = net(seq[:, i:i + 32])
                loss = F.cross_entropy(out.mean(0), y_all[i:i + 32])
                loss = loss + session.loss(seq[:, i:i + 32], out)
                opt.zero_grad()
                loss.backward()
                opt.step()
                reset_state(net)
        net = session.finalize()
        with torch.no_grad():
            hidden = net[1](net[0](seq[:, 256:]))
            reset_state(net)
            acc = (net(seq[:, 256:]).mean(0).argmax(1) == y_all[256:]).float().mean()
        return float(hidden.mean()), float(acc)

    (plain, acc_plain), (penalised, acc_pen) = trained(0.0), trained(0.5)
    assert penalised < 0.6 * plain, (plain, penalised)  # measured 0.33 → 0.13
    assert acc_plain > 0.6 and acc_pen > 0.6, (acc_plain, acc_pen)  # 0.72, 0.73 (chance 0.25)


def test_the_fanout_weighted_penalty_is_the_hand_formula():
    """Σ_l fanout_l · rate_l / Σ_l fanout_l, exactly (dyadic rates and fan-outs)."""
    net = _hand_net()
    assert layer_fanouts(net) == {"1": 4.0, "3": 12.0}  # out_features of the layer each feeds
    method = ActivityPenalty(weight=0.5, weighting="fanout")
    session = attach(net, [method])
    assert method.weights_ == {"1": 4.0, "3": 12.0}
    spikes = {"1": [_spikes(5, (2, 2, 8))], "3": [_spikes(3, (2, 2, 4))]}  # rates 5/32, 3/16
    want = 0.5 * (4 * 5 / 32 + 12 * 3 / 16) / (4 + 12)
    assert method.penalty(spikes).item() == want
    x = torch.rand(2, 2, 2) * 4  # a real forward: rates from the recorded tensors themselves
    out = net(x)
    r1, r3 = (float(s[0].detach().mean()) for s in method.recorder_.spikes.values())
    assert session.loss(x, out).item() == 0.5 * (4 * r1 + 12 * r3) / 16
    session.finalize()


def test_fanout_per_sample_tracks_the_counted_sops():
    """With per "sample" the fan-out penalty × Σ fanout is the SOPs per sample the exact counter
    counts (linear layers, every weight non-zero: no border or pooling approximation)."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 16), IF(), nn.Linear(16, 8), IF(), nn.Linear(8, 5))
    with torch.no_grad():
        net[0].weight.mul_(3)
        net[2].weight.mul_(3)
    net.in_shape = (6,)
    method = ActivityPenalty(weight=1.0, weighting="fanout", per="sample")
    session = attach(net, [method])
    x = torch.rand(4, 8, 6)
    net.eval()
    penalty = session.loss(x, net(x)).item()
    reset_state(net)
    sops = count(net, x).per_sample("sops")
    assert sops > 0
    assert penalty * (8 + 5) == pytest.approx(sops, rel=1e-6)
    session.finalize()


def test_the_target_hinge_is_zero_below_the_target():
    spikes = {"a": [_spikes(8, (2, 4, 4)).requires_grad_()]}  # rate 1/4
    below = spike_rate_penalty(spikes, 1.0, target=0.5, normalise=True)
    assert below.item() == 0
    below.backward()
    assert not spikes["a"][0].grad.any()  # no push below the target
    assert spike_rate_penalty(spikes, 2.0, target=0.125, normalise=True).item() == 0.25
    net = _hand_net()
    method = ActivityPenalty(weight=1.0, target=0.25)
    attach(net, [method])
    both = {"1": [_spikes(4, (2, 2, 8))], "3": [_spikes(8, (2, 2, 4))]}  # 1/8 below, 1/2 above
    assert method.penalty(both).item() == (0 + (0.5 - 0.25)) / 2  # per layer, uniform mean


def test_weightings_and_layer_weights_by_hand():
    net = _hand_net()
    spikes = {"1": [_spikes(8, (2, 2, 8))], "3": [_spikes(12, (2, 2, 4))]}  # rates 1/4, 3/4
    cases = [
        (dict(), (0.25 + 0.75) / 2),  # uniform: the mean of the layers' rates
        (dict(weighting="neurons"), (8 * 0.25 + 4 * 0.75) / 12),  # Deng: all neurons' mean
        (dict(layer_weights={"3": 3.0}), (0.25 + 3 * 0.75) / 4),
        (dict(layer_weights={"1": 0.0}), 0.75),  # weight 0 leaves a layer out
        (dict(layer_weights={"default": 0.0, "1": 1.0}), 0.25),
        (dict(per="sample"), (8 / 2 + 12 / 2) / 2),  # spikes per sample of each layer
    ]
    for kwargs, want in cases:
        method = ActivityPenalty(weight=1.0, **kwargs)
        attach(net, [method])
        got = method.penalty(spikes).item()
        method.finalize(net, None)
        assert got == pytest.approx(want, rel=1e-6), kwargs
    assert is_plain(net)
    # ADMM's `activity` knob is the same function with no option: λ · Σ_l r_l
    assert spike_rate_penalty(spikes, 0.5).item() == 0.5 * (0.25 + 0.75)


def test_weight_zero_adds_nothing_and_hooks_nothing():
    net = _hand_net()
    session = attach(net, [ActivityPenalty(weight=0.0)])
    assert is_plain(net)
    x = torch.rand(2, 3, 2)
    assert session.loss(x, net(x)).item() == 0


# -- contract, composition, validation ------------------------------------------------------------
@pytest.mark.parametrize("model_name", list(TINY))
def test_contract_with_every_weighting(model_name, data):
    for weighting in ("uniform", "neurons", "fanout"):
        torch.manual_seed(0)
        cls = functools.partial(ActivityPenalty, weighting=weighting, target=0.05)
        check_method(cls, build(classes=10, **TINY[model_name]), data)


# every family; ADMM, whose `activity` knob records spikes beside ours; the methods that hook the
# neurons themselves (SOPs-aware gates, SCA, LitE-SNN counts) or rebuild the model (PCA widths).
# All other registered methods compose too (checked once by hand); the ANN conversions (ANN twin)
# and integer-only training (its own train_step) do not take a second method.
PARTNERS = ["magnitude", "admm", "sops_aware", "sca", "pca_width", "slimming", "uniform_quant",
            "mint", "binary", "temporal_pruning", "ssnn", "seenn", "lite_snn", "kl_kd", "kdsnn",
            "spike_kd", "bntt_kd"]


@pytest.mark.parametrize("partner", PARTNERS)
def test_composes_with_other_families_and_leaves_a_plain_model(partner, data):
    torch.manual_seed(0)
    options = dict(getattr(METHODS[partner], "MODEL_OPTIONS", {}))  # bntt_kd: a BNTT student
    if options.get("norm") == "bntt":
        options["steps"] = 2  # the data's T
    model = build(classes=10, **{**TINY["conv_net"], **options})
    with torch.no_grad():  # an untrained tiny net is silent at T = 2: make it fire
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(4)
    extra = {"admm": {"activity": 0.1}}.get(partner, {})
    method, other = ActivityPenalty(weight=1.0), METHODS[partner](**extra)
    session = attach(model, [method, other])
    seen, loss = [], method.loss

    def spy(*args):
        value = loss(*args)
        seen.append(value.item())
        return value

    method.loss = spy
    _train_steps(model, session, data, steps=3)
    del method.loss
    assert len(seen) == 3 and seen[0] > 0 and all(v >= 0 for v in seen), seen  # may silence
    model = session.finalize()
    assert is_plain(model) and method.recorder_ is None


def test_all_registered_methods_with_a_train_step_refuse_the_combination():
    model = build(classes=10, **TINY["conv_net"])
    steppers = [cls for cls in METHODS.values() if hook(cls, "train_step") is not None]
    assert steppers  # Integer-STBP
    for cls in steppers:
        with pytest.raises(ValueError, match="cannot be combined"):
            attach(model, [ActivityPenalty(), cls()])


@pytest.mark.parametrize("kwargs, field", [
    (dict(weight=-1.0), "weight"),
    (dict(weight=float("nan")), "weight"),
    (dict(weight=True), "weight"),
    (dict(weight="0.5"), "weight"),
    (dict(per="step"), "per"),
    (dict(weighting="sops"), "weighting"),
    (dict(layer_weights=[1.0]), "layer_weights"),
    (dict(layer_weights={"(": 1.0}), "layer_weights"),
    (dict(layer_weights={"a": -1.0}), "layer_weights"),
    (dict(layer_weights={"a": "x"}), "layer_weights"),
    (dict(target=1.0), "target"),
    (dict(target=-0.1), "target"),
    (dict(target="low"), "target"),
])
def test_bad_fields_give_one_line_errors_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}") as e:
        ActivityPenalty(**kwargs)
    assert "\n" not in str(e.value)


def test_bad_models_for_the_options_are_named_at_attach():
    net = _hand_net()
    for kwargs, message in [
        (dict(layer_weights={"conv.*": 2.0}), "layer_weights: pattern 'conv.*' matches no"),
        (dict(layer_weights={"default": 0.0}), "layer_weights: every spiking layer has weight 0"),
        (dict(layer_weights={"1|3": 1.0, "3": 2.0}), "layer_weights: layer '3' matches several"),
    ]:
        with pytest.raises(ValueError, match=message):
            attach(net, [ActivityPenalty(**kwargs)])
    del net.in_shape
    with pytest.raises(ValueError, match="fan-out weighting needs model.in_shape"):
        attach(net, [ActivityPenalty(weighting="fanout")])
    with pytest.raises(ValueError, match="no spiking neuron"):
        attach(nn.Sequential(nn.Linear(2, 2)), [ActivityPenalty()])


def test_a_teacher_copy_of_the_model_does_not_record_into_the_students_recorder():
    """Distillation deep-copies the model as it enters the stage, hooks included: the copy (made
    while spikes are held) and its forward, even with autograd on, leave the student's spikes."""
    net = _hand_net()
    rec = SpikeRecorder(net)
    x = torch.rand(2, 3, 2) * 4
    net(x)
    reset_state(net)
    twin = copy.deepcopy(net)
    twin(x)
    got = rec.take()
    assert set(got) == {"1", "3"} and all(len(v) == 1 for v in got.values())
    rec.remove()
