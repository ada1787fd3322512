"""Weight-threshold balancing, ``binary``'s finalize: ±1 weights, every scale moved into the
thresholds and BN shifts; and the control ``naive_sign_`` (sign(W), nothing rebalanced).

**Finalize = weight-threshold balancing.** A layer feeding a neuron through its BatchNorm (eval
statistics μ, σ = sqrt(var + ε), γ, β) gives the neuron the input ``y = g·z + c`` with
``z = conv(x, sign W)`` and the per-channel gain and shift

    g_c = α_c γ_c / σ_c,        c_c = β_c + γ_c (b_c − μ_c) / σ_c      (b: the layer's bias or 0)

Balancing divides the neuron's input and its threshold by |g_c|: the weights become exactly
sign(W) ∈ {−1, 0, +1} (the sign of channel c flipped where g_c < 0), the BN becomes the identity
plus the shift c_c / |g_c| (γ = 1, μ = 0, σ = 1 exactly: var = 1 − ε to the ulp), and the neuron's
threshold becomes ``V_th / |g_c|`` (a per-channel buffer [C]; the model's spec switches to
``neuron_params.per_channel: true`` so the artifact rebuilds it). A layer without BN that feeds a
neuron is balanced the same way with g = α and its bias divided by α.

*Why the spikes are unchanged.* The LIF / IF / PLIF charge ``H = k·(V − V_c) + V_c + a·X``, the
fire ``S = Θ(H − V_th)`` and the reset — soft ``V = H − V_th·S`` (V_c = 0) or hard to 0
``V = H·(1 − S)`` — are linear and homogeneous in (V, X, V_th), and V starts at 0. Scaling X and
V_th by 1/|g| > 0 scales every H and V by 1/|g| and leaves every S (ties included): exactly in
float arithmetic where |g| is a power of two, otherwise up to a rounding of the input that can flip
a spike whose H lies within an ulp or so of V_th (tests/compress/test_binary.py bounds it at
0.1 % of the spikes on a non-dyadic model, where 5 seeds × 393k neuron-steps flipped none; a
dyadic model, every |g| a power of two, matches bit for bit). A hard reset to
a non-zero ``v_reset`` is not homogeneous (V_c would have to scale per channel): refused by name.
A zero gain (γ_c = 0) makes the channel's input the constant c_c: its weights are set to 0 and
nothing is divided.

**Other places.** The read-out (the layer whose output is the model's output, no neuron) is kept
full precision by default (``keep_last``, as most BNN papers keep the last layer); binarized, it
uses one α per layer during training and finalize stores ±1 weights and bias / α, so the logits
are divided by α > 0: predictions (argmax of the mean logits) are unchanged, the logits' scale is
not. A layer whose BN output is added to something before the neuron (the residual of a Spiking
ResNet block, its downsample shortcut) cannot move its scale into a threshold shared with
another input: its weights still become ±1 and α goes into that BN's per-channel gain (γ' = g,
β' = c, μ = 0, σ = 1). Any other wiring (pooling between the layer and its BN or neuron, a layer
used twice) is refused by name at attach: exclude that layer.
"""

from __future__ import annotations

import torch
from torch import nn

from spikecompress.compress.quant.binary_roles import _NEURON_TYPES, Role
from spikecompress.compress.quant.fake_quant import bake_weight_, quantize
from spikecompress.models import from_spec


def _unit_var(eps: float, like: torch.Tensor) -> torch.Tensor:
    """A variance v in ``like``'s dtype with v + eps == 1 exactly (so σ = 1 and BN is x·γ + β)."""
    one = torch.ones((), dtype=like.dtype)
    e = torch.tensor(eps, dtype=like.dtype)
    v = one - e
    for _ in range(8):
        s = v + e
        if s == 1:
            break
        v = torch.nextafter(v, -one if s > 1 else one)
    return torch.full_like(like, float(v))


def _rows(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A per-output-channel vector [C] viewed to broadcast against a weight [C, ...]."""
    return t.view(-1, *[1] * (w.dim() - 1))


def _fold(modules: dict, name: str, role: Role, per_channel: bool):
    """(codes, scale, shift) of one layer, from its effective (binarized, masked) weight and its
    BN: codes ∈ {−1, 0, 1} of the weight's shape, and per channel [C] the gain (|g| for balanced,
    signed g for bn_gain, α for the read-out) and the new shift, all in float64."""
    m = modules[name]
    w = m.weight.detach()  # α·sign(W) with masks applied; the exact α is its max |w| per row
    rows = w.abs().flatten(1).amax(1)
    if not bool(((w.abs() == _rows(rows, w)) | (w == 0)).all()):  # not binary yet (no QAT)
        w = quantize(w, 1, per_channel and role.kind != "readout")
        rows = w.abs().flatten(1).amax(1)
    codes = torch.sign(w)
    alpha = rows.double()
    bias = m.bias.detach().double() if m.bias is not None else torch.zeros_like(alpha)
    if role.kind == "readout":
        a = float(alpha.max()) or 1.0
        return codes, torch.full_like(alpha, a), bias / a
    if role.bn is not None:
        bn = modules[role.bn]
        sigma = torch.sqrt(bn.running_var + bn.eps).double()  # σ as the BN kernel rounds it
        gamma, beta = bn.weight.detach().double(), bn.bias.detach().double()
        gain = alpha * gamma / sigma
        shift = beta + gamma * (bias - bn.running_mean.double()) / sigma
    else:
        gain, shift = alpha, bias
    if role.kind == "bn_gain":
        return codes, gain, shift
    dead = gain == 0  # the channel's input is the constant shift: no weight contributes
    codes = codes * _rows(torch.where(gain < 0, -1.0, 1.0).to(codes.dtype), codes)
    codes[dead] = 0.0
    scale = torch.where(dead, torch.ones_like(gain), gain.abs())
    out = shift / scale
    if not bool(torch.isfinite(out).all()) or not bool(torch.isfinite(1 / scale).all()):
        raise ValueError(f"binary: {name}'s gain α·γ/σ is too small to balance (thresholds "
                         "would overflow)")
    return codes + 0.0, scale, out


def _apply(modules: dict, name: str, role: Role, codes, scale, shift) -> None:
    """Write one layer's folded form: ±1 weights, the BN / bias shift, the neuron's threshold."""
    m = modules[name]
    bake_weight_(m, codes)
    dtype = m.weight.dtype
    if role.bn is not None:
        bn = modules[role.bn]
        gain = scale if role.kind == "bn_gain" else torch.ones_like(scale)
        bn.weight.copy_(gain.to(dtype))
        bn.bias.copy_(shift.to(dtype))
        bn.running_mean.zero_()
        bn.running_var.copy_(_unit_var(bn.eps, bn.running_var))
        if m.bias is not None:
            m.bias.zero_()
    elif m.bias is not None:
        m.bias.copy_(shift.to(dtype))
    if role.kind == "balanced":
        neuron = modules[role.neuron]
        v_th = neuron.v_threshold.double()
        neuron.v_threshold = (v_th / scale).to(neuron.v_threshold.dtype)


@torch.no_grad()
def _per_channel_neurons_(model: nn.Module) -> None:
    """Give every neuron per-channel parameters ([C] thresholds, τ, PLIF w) and record it in the
    model's spec (``neuron_params.per_channel: true``) so the artifact rebuilds the same shapes.
    Without a spec only the scalar thresholds are expanded (to the channels of the neuron's BN)."""
    spec = getattr(model, "spec", None)
    if not (isinstance(spec, dict) and isinstance(spec.get("neuron_params"), dict)):
        return
    if spec["neuron_params"].get("per_channel"):
        return
    new = {**spec, "neuron_params": {**spec["neuron_params"], "per_channel": True}}
    with torch.random.fork_rng(devices=[]):  # building initialises weights: keep the caller's RNG
        ref = from_spec(new)
    ref_modules = dict(ref.named_modules())
    for name, m in model.named_modules():
        if not isinstance(m, _NEURON_TYPES):
            continue
        r = ref_modules.get(name)
        if r is None:
            raise ValueError(f"binary: neuron {name} is not in the model its spec rebuilds")
        for key, want in list(r.named_parameters(recurse=False)) + list(
                r.named_buffers(recurse=False)):
            have = getattr(m, key, None)
            if have is None or want is None or have.shape == want.shape:
                continue
            value = have.detach().expand(want.shape).clone()
            if isinstance(have, nn.Parameter):
                setattr(m, key, nn.Parameter(value, requires_grad=have.requires_grad))
            else:
                setattr(m, key, value)
    model.spec = new


@torch.no_grad()
def naive_sign_(model: nn.Module, names: list[str]) -> nn.Module:
    """The control: the layers ``names`` get sign(W) of their effective weights (±1, 0 kept) with
    BN, biases and thresholds left as they are — what balancing corrects. In place; returns it."""
    modules = dict(model.named_modules())
    for name in names:
        bake_weight_(modules[name], torch.sign(modules[name].weight.detach()) + 0.0)
    return model
