"""Binary-weight SNN by weight-threshold balancing (``binary``, spec quant-kd.md §2.7).

The defining behaviours: (1) finalize leaves every selected weight exactly ±1 (0 where pruned) and
the artifact stores it at 1 bit; (2) scaling a neuron's input gain and its threshold by the same c
leaves every spike unchanged; (3) the balanced model reproduces the QAT model's spikes and
predictions (bit for bit on dyadic models); (4) the naive sign(W) without rebalancing does not.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _exact import dyadic, power_of_four_var
from spikecompress.compress import attach, is_plain
from spikecompress.compress.prune.magnitude import MagnitudePruning
from spikecompress.compress.prune.masks import mask_of
from spikecompress.compress.quant.binary import (
    BinarySTE,
    BinaryWeights,
    layer_roles,
    naive_sign_,
)
from spikecompress.export import load, read_spec, save
from spikecompress.models import build
from spikecompress.models.common import Network
from spikecompress.snn import (
    IF,
    LIF,
    PLIF,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    Linear,
    reset_state,
)

SYNAPSES = (nn.Conv2d, nn.Linear)


def _model(widths=(8, 16), **neuron_params):
    torch.manual_seed(0)
    return build("conv_net", in_channels=1, input_size=8, classes=10, widths=list(widths),
                 neuron_params=neuron_params or None)


def _x(seed=0, T=4, B=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 17, (T, B, 1, 8, 8), generator=g).float() / 16  # dyadic pixels


def _train(model, session, steps=3):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        x_seq, y = _x(step), torch.randint(0, 10, (8,), generator=g)
        out = model(x_seq)
        loss = F.cross_entropy(out.mean(0), y) + session.loss(x_seq, out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=(step + 1) / steps)
        reset_state(model)


@torch.no_grad()
def _spikes(model, x_seq):
    """Every neuron's spike train and the logits of one forward (state reset before and after)."""
    out, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (LIF, IF, PLIF)):
            handles.append(m.register_forward_hook(
                lambda _m, _i, o, name=name: out.__setitem__(name, o.clone())))
    reset_state(model)
    try:
        logits = model(x_seq)
    finally:
        for h in handles:
            h.remove()
        reset_state(model)
    return out, logits


@torch.no_grad()
def _calibrate(model, batches=4):
    """BN running statistics from train-mode forwards (no weight update), then eval, with BN
    shifts β ~ U(0.5, 1.5) so that every layer fires (a random net with β = 0 stays silent)."""
    model.train()
    for i in range(batches):
        model(_x(100 + i))
        reset_state(model)
    g = torch.Generator().manual_seed(7)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.bias.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model.eval()


def _firing(spikes):
    return all(0.02 < s.mean() < 0.98 for s in spikes.values())


# ---------------------------------------------------------------- (1) ±1 weights, 1-bit artifact


def test_finalize_leaves_plus_minus_one_weights_stored_at_one_bit(tmp_path):
    model = _model()
    method = BinaryWeights()
    session = attach(model, [method])
    _train(model, session)
    model = session.finalize().eval()
    assert is_plain(model)
    modules = dict(model.named_modules())
    assert method.targets_ == ["features.1.conv"]  # first layer and read-out kept (defaults)
    for name in method.targets_:
        w = modules[name].weight
        assert set(torch.unique(w).tolist()) <= {-1.0, 1.0}
    path = save(model, tmp_path / "a")
    entry = read_spec(path)["tensors"]["features.1.conv.weight"]
    assert entry["format"] == "codebook" and entry["bits"] == 1
    assert model.spec["neuron_params"]["per_channel"] is True
    x_seq = _x()
    loaded = load(path)
    assert torch.equal(loaded(x_seq), model(x_seq))


def test_pruned_weights_stay_zero_and_the_rest_is_plus_minus_one():
    model = _model()
    prune, binary = MagnitudePruning(sparsity=0.5, schedule="constant"), BinaryWeights()
    session = attach(model, [prune, binary])
    _train(model, session, steps=2)
    masks = {n: mask_of(m).mask.clone() for n, m in model.named_modules() if n in binary.targets_}
    assert all(not bool(m.all()) for m in masks.values())
    model = session.finalize()
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        w = modules[name].weight
        assert torch.equal(w == 0, mask == 0)
        assert set(torch.unique(w).tolist()) <= {-1.0, 0.0, 1.0}


# ---------------------------------------------------------------- the quantizer during training


def test_ste_forward_is_alpha_sign_and_gradient_is_zero_beyond_one():
    w = torch.tensor([[0.5, -0.25, 1.5, 0.0], [-2.0, 0.75, -0.5, 0.25]], requires_grad=True)
    per_channel = BinarySTE(per_channel=True)(w)
    alpha = torch.tensor([[2.25 / 3], [3.5 / 4]])  # mean |W| of the non-zero weights per row
    assert torch.equal(per_channel, alpha * torch.sign(w.detach()))
    per_tensor = BinarySTE(per_channel=False)(w)
    assert torch.equal(per_tensor, torch.sign(w.detach()) * (5.75 / 7))
    per_channel.backward(torch.ones_like(w))
    assert torch.equal(w.grad, (w.detach().abs() <= 1).float())


# ---------------------------------------------------------------- (2) gain and threshold scale


@pytest.mark.parametrize("neuron", ["lif", "if", "plif"])
@pytest.mark.parametrize("v_reset", [None, 0.0])
@pytest.mark.parametrize("c", [2.0, 0.25, 0.75])
def test_scaling_input_and_threshold_by_one_c_leaves_every_spike(neuron, v_reset, c):
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-16, 33, (12, 5, 6), generator=g).float() / 16  # dyadic currents
    cls = {"lif": LIF, "if": IF, "plif": PLIF}[neuron]
    kw = {"v_threshold": torch.tensor([0.5, 1.0, 0.75, 1.25, 1.0, 0.625]), "v_reset": v_reset}
    a, b = cls(**kw), cls(**{**kw, "v_threshold": kw["v_threshold"] * c})
    assert torch.equal(a(x), b(x * c))
    assert a(x).sum() > 0


def test_scaling_a_balanced_layers_gain_and_threshold_leaves_the_network_spikes():
    model = _calibrate(_model())
    method = BinaryWeights()
    session = attach(model, [method])
    model = session.finalize().eval()
    x_seq = _x()
    ref, logits = _spikes(model, x_seq)
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        for block, c in ((scaled.features[0], 2.0), (scaled.features[1], 0.125)):
            block.bn.weight.mul_(c)  # the neuron's input gain (identity BN after finalize)
            block.bn.bias.mul_(c)
            block.act.v_threshold.mul_(c)
    got, logits2 = _spikes(scaled, x_seq)
    assert all(torch.equal(ref[k], got[k]) for k in ref) and torch.equal(logits, logits2)


# ---------------------------------------------------------------- (3) balanced == QAT


@torch.no_grad()
def _dyadic_binary(model, per_channel: bool, seed: int = 1):
    """Weights ±2^-k (one magnitude per row, or per layer), BN σ and |γ| powers of two (some γ
    negative), dyadic μ, β, biases: every gain g = αγ/σ is a power of two, so the balanced model
    is exact and must match the QAT model bit for bit."""
    g = torch.Generator().manual_seed(seed)
    for name, m in model.named_modules():
        if isinstance(m, SYNAPSES):
            rows = m.weight.shape[0]
            mags = 2.0 ** -torch.randint(2, 5, (rows,), generator=g).float()
            if not per_channel or name == "classifier.fc":
                mags = mags[:1].expand(rows)
            signs = torch.where(torch.rand(m.weight.shape, generator=g) < 0.5, -1.0, 1.0)
            m.weight.copy_(signs * mags.view(-1, *[1] * (m.weight.dim() - 1)))
            if m.bias is not None:
                m.bias.copy_(dyadic(torch.randn(rows, generator=g)))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_var.copy_(power_of_four_var(torch.rand(c, generator=g) * 4, m.eps))
            m.running_mean.copy_(dyadic(torch.randn(c, generator=g)))
            sign = torch.where(torch.arange(c) % 3 == 1, -1.0, 1.0)  # every third γ negative
            m.weight.copy_(sign * 2.0 ** torch.randint(-1, 2, (c,), generator=g).float())
            m.bias.copy_(dyadic(torch.randn(c, generator=g)))
    return model


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("v_reset", [None, 0.0])
@pytest.mark.parametrize("keep_last", [True, False])
def test_balanced_model_reproduces_the_qat_spikes_bit_for_bit(per_channel, v_reset, keep_last):
    model = _dyadic_binary(_model(v_reset=v_reset), per_channel).eval()
    method = BinaryWeights(per_channel=per_channel, keep_first=False, keep_last=keep_last)
    session = attach(model, [method])
    x_seq = _x(T=6)
    qat, qat_logits = _spikes(model, x_seq)
    assert all(0 < s.mean() < 1 for s in qat.values())  # the neurons do fire, not always
    alpha = model.classifier.fc.weight.abs().max()  # the read-out's α (when binarized)
    block = model.features[1]
    signs = torch.sign(block.conv.weight)
    sigma = torch.sqrt(block.bn.running_var + block.bn.eps)
    gain = block.conv.weight.abs().flatten(1).amax(1) * block.bn.weight / sigma  # α γ / σ
    assert torch.equal(torch.log2(gain.abs()), torch.log2(gain.abs()).round())  # powers of two
    model = session.finalize().eval()
    got, logits = _spikes(model, x_seq)
    for name in qat:
        assert torch.equal(qat[name], got[name]), name
    if keep_last:
        assert torch.equal(logits, qat_logits)
    else:  # the read-out is divided by its (per-tensor) α: the same argmax, logits / α
        assert set(torch.unique(model.classifier.fc.weight).tolist()) <= {-1.0, 1.0}
        assert torch.equal(logits * alpha, qat_logits)
        assert torch.equal(logits.mean(0).argmax(1), qat_logits.mean(0).argmax(1))
    # the thresholds now hold every scale: V_th / |g|; the BN is the identity plus a shift
    bn = model.features[1].bn
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.running_mean.any()
    assert torch.equal(model.features[1].act.v_threshold, 1 / gain.abs())
    flipped = gain < 0  # a negative γ flips the channel's weight signs
    assert torch.equal(model.features[1].conv.weight[flipped],
                       -signs[flipped])


def test_balanced_model_matches_a_float_qat_model_up_to_rounding():
    """Non-dyadic weights and BN statistics: g·z + c and z + c/g round differently, which flips a
    spike where H lands within an ulp or so of V_th; bounded at 0.1 % of the spikes."""
    model = _model(widths=(16, 32))
    session = attach(model, [BinaryWeights()])
    _calibrate(model)
    x_seq = _x(T=8, B=32)
    qat, qat_logits = _spikes(model, x_seq)
    assert _firing(qat)
    model = session.finalize().eval()
    got, logits = _spikes(model, x_seq)
    for name in qat:
        assert (qat[name] != got[name]).float().mean() <= 1e-3, name
    assert (logits.mean(0).argmax(1) == qat_logits.mean(0).argmax(1)).float().mean() >= 0.99


# ---------------------------------------------------------------- (4) naive sign(W) is not enough


def test_naive_sign_without_rebalancing_changes_the_firing_rates():
    model = _model(widths=(16, 32))
    method = BinaryWeights()
    session = attach(model, [method])
    _calibrate(model)
    x_seq = _x(T=8, B=32)
    qat, _ = _spikes(model, x_seq)
    assert _firing(qat)
    naive = _model(widths=(16, 32))  # a twin (deepcopy would share the parametrized class)
    attach(naive, [BinaryWeights()])
    naive.load_state_dict(model.state_dict())
    naive = naive_sign_(naive.eval(), method.targets_)
    assert is_plain(naive)
    bad, _ = _spikes(naive, x_seq)
    balanced, _ = _spikes(session.finalize().eval(), x_seq)
    rates = {k: (qat[k].mean().item(), balanced[k].mean().item(), bad[k].mean().item())
             for k in qat}
    assert all(abs(q - b) < 1e-3 for q, b, _ in rates.values()), rates
    assert max(abs(q - n) for q, _, n in rates.values()) > 0.1, rates


# ---------------------------------------------------------------- structure and bad input


def test_roles_follow_the_wiring_of_a_spiking_resnet():
    torch.manual_seed(0)
    model = build("resnet", in_channels=1, input_size=8, classes=10, widths=[4, 8],
                  blocks=[1, 1], hidden=[])
    roles, order = layer_roles(model)
    assert order[0] == "features.stem.conv" and order[-1] == "classifier.fc"
    assert roles["features.stage0.0.conv1"].kind == "balanced"
    assert roles["features.stage0.0.conv2"].kind == "bn_gain"  # residual added before the neuron
    assert roles["features.stage1.0.downsample.conv"].kind == "bn_gain"
    assert roles["classifier.fc"].kind == "readout"
    session = attach(model, [BinaryWeights()])
    _calibrate(model)
    x_seq = _x()
    qat, _ = _spikes(model, x_seq)
    assert _firing(qat)
    model = session.finalize().eval()
    got, _ = _spikes(model, x_seq)
    assert all((qat[k] != got[k]).float().mean() <= 1e-3 for k in qat)
    conv2 = model.features.stage0[0].conv2.weight
    assert set(torch.unique(conv2).tolist()) <= {-1.0, 1.0}


def test_a_layer_that_feeds_no_bn_or_neuron_directly_is_refused_by_name():
    feats = nn.Sequential(Conv2d(1, 4, 3, padding=1, bias=False), AvgPool2d(2), BatchNorm2d(4),
                          LIF())
    model = Network(feats, nn.Sequential(Flatten(), Linear(64, 10)), (1, 8, 8), {"name": "x"})
    with pytest.raises(ValueError, match=r"features\.0"):
        attach(model, [BinaryWeights()])


def test_a_nonzero_hard_reset_is_refused_by_name():
    with pytest.raises(ValueError, match="v_reset"):
        attach(_model(v_reset=-0.5), [BinaryWeights()])


@pytest.mark.parametrize("kwargs,field", [
    ({"per_channel": "yes"}, "per_channel"),
    ({"keep_first": 1}, "keep_first"),
    ({"keep_last": None}, "keep_last"),
    ({"include": 3}, "include"),
    ({"exclude": [1]}, "exclude"),
])
def test_bad_input_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field) as err:
        BinaryWeights(**kwargs)
    assert "\n" not in str(err.value)


def test_the_first_layer_is_binarized_when_it_is_the_only_one_left():
    torch.manual_seed(0)
    model = build("mlp", in_features=64, classes=10, widths=[16])
    method = BinaryWeights()
    attach(model, [method])
    assert method.targets_ == ["features.0.fc"]
    model = _model(widths=(8, 16, 16))
    method = BinaryWeights(keep_last=False)
    attach(model, [method])
    assert method.targets_ == ["features.1.conv", "features.2.conv", "classifier.fc"]


def test_nothing_left_to_binarize_is_refused():
    with pytest.raises(ValueError, match="binary"):
        attach(_model(), [BinaryWeights(include=["classifier.fc"])])
