"""Binary-weight SNN by weight-threshold balancing (Wang, Xu, Yan, Tang, IEEE TCDS 13(3), 2020).

The paper converts a binary-weight ANN (BinaryConnect / BWN: forward ``α·sign(W)``) into an SNN
whose weights stay in {−1, +1}: every scale is moved into the firing thresholds instead of into the
weights, as the usual data-based weight normalisation would do (which destroys binarity). No code
of the paper was found; the balancing rule below is our reconstruction (spec quant-kd.md §2.7,
tagged [D]), written for an SNN trained directly with surrogate gradients (not converted).

**Training (QAT).** Every selected conv / linear weight forwards as ``α·sign(W)`` (BinaryConnect,
Courbariaux et al. 2015; the scale α = mean |W| of the non-zero weights of BWN / XNOR-Net,
Rastegari et al. 2016), per output channel (``per_channel``, default) or per layer; zeros stay 0,
so a pruned layer is {−α, 0, +α}. The backward is the clipped straight-through estimator
``∂Ŵ/∂W = 1[|W| ≤ 1]`` (BinaryConnect's hard-tanh STE; α is not differentiated). There is no
ReLU: the spiking neurons are the nonlinearity.

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

**How this differs from ``uniform_quant`` at 1 bit.** ``uniform_quant`` with ``weight_bits: 1``
trains the same ``s·sign(W)`` (identity STE) but finalizes to float weights ±s (codes times a
weight scale) with BN and thresholds untouched: the scale stays in the weights, every synaptic
event is a multiply (or the accumulator is rescaled before the neuron). ``binary`` stores the
weights as ±1 with no weight scale (a 2-value codebook: 1 bit per weight in the artifact, per
channel or not) and moves every scale into the thresholds and BN shifts, rebalanced so the spikes
match the trained model: a multiplier-free accumulate of ±1 and a per-channel compare, the
deployable form of the paper. ``naive_sign_`` is the control: sign(W) with nothing rebalanced.
benchmarks/binary_balance.py compares the three (docs/benchmarks_binary.md).

Recipe: ``{name: binary}`` (defaults: per-channel α; first layer and read-out full precision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from spikecompress.compress.method import Context
from spikecompress.compress.quant.fake_quant import bake_weight_, quantize
from spikecompress.compress.targets import compile_patterns, select
from spikecompress.models import from_spec
from spikecompress.snn.neuron import NEURONS

SYNAPSES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NEURON_TYPES = tuple(NEURONS.values())
_BN = nn.modules.batchnorm._BatchNorm
# balanced: layer [→ BN] → neuron, the scale moves into the threshold; readout: the model's output;
# bn_gain: layer → BN → (added to another input) → neuron, the scale stays in the BN's gain;
# unsupported: anything else (refused when selected)
ROLE_KINDS = ("balanced", "readout", "bn_gain", "unsupported")


@dataclass(frozen=True)
class Role:
    """Where a conv / linear layer's output goes: ``kind`` (``ROLE_KINDS``), its BN and the neuron
    it feeds (qualified names, None where there is none)."""

    kind: str
    bn: str | None = None
    neuron: str | None = None


class BinarySTE(nn.Module):
    """Parametrization ``W ↦ α·sign(W)`` (zeros stay 0; α the mean |W| of the non-zero weights,
    per output channel or per tensor), backward the clipped STE ``∂Ŵ/∂W = 1[|W| ≤ 1]``.

    ``q + (W − W.detach())·keep`` forwards exactly q (the second term is +0)."""

    def __init__(self, per_channel: bool) -> None:
        super().__init__()
        self.per_channel = bool(per_channel)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        q = quantize(w.detach(), 1, self.per_channel)
        keep = (w.detach().abs() <= 1).to(w.dtype)
        return q + (w - w.detach()) * keep


@dataclass
class BinaryWeights:
    """Binary weights trained with BinaryConnect's STE, finalized by weight-threshold balancing.

    ``per_channel``: one α per output channel (else per layer; the read-out always per layer).
    ``keep_first`` / ``keep_last``: leave the first layer (the first conv / linear of the forward,
    reading the analog input) / the read-out full precision, as most BNN papers do; the first
    layer is binarized anyway when it is the only one left (a one-hidden-layer MLP).
    ``include`` / ``exclude``: regexes, see ``targets.select``; the kept first / last layers are
    removed from what they select.
    """

    NAME: ClassVar[str] = "binary"
    PAPER: ClassVar[str] = "Wang, Xu, Yan, Tang, IEEE TCDS 2020 (binary weights, balancing)"
    KIND: ClassVar[str] = "quant"

    per_channel: bool = True
    keep_first: bool = True
    keep_last: bool = True
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    targets_: list = field(default_factory=list, init=False, repr=False, compare=False)
    roles_: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("per_channel", "keep_first", "keep_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
                raise ValueError(f"{name} must be a list of regex strings, got {value!r}")
            compile_patterns(value, name)

    def attach(self, model: nn.Module, ctx: Context) -> None:
        roles, order = layer_roles(model)
        picked = [n for n, _ in select(model, self.include, self.exclude)]
        drop = {n for n, r in roles.items() if r.kind == "readout"} if self.keep_last else set()
        if self.keep_first and order and any(n not in drop | {order[0]} for n in picked):
            drop.add(order[0])  # unless it is the only layer left (a one-hidden-layer MLP)
        self.targets_ = [n for n in picked if n not in drop]
        if not self.targets_:
            raise ValueError(f"binary: no layer left to binarize (selected {picked}; keep_first="
                             f"{self.keep_first}, keep_last={self.keep_last} keep {sorted(drop)})")
        modules = dict(model.named_modules())
        self.roles_ = {n: roles.get(n, Role("unsupported")) for n in self.targets_}
        for name, role in self.roles_.items():
            _check_role(name, role, modules)
        for name in self.targets_:
            per_channel = self.per_channel and self.roles_[name].kind != "readout"
            parametrize.register_parametrization(modules[name], "weight", BinarySTE(per_channel))

    @torch.no_grad()
    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        modules = dict(model.named_modules())
        plans = [(name, role, _fold(modules, name, role, self.per_channel))
                 for name, role in self.roles_.items()]
        if any(role.kind == "balanced" for _, role, _ in plans):
            _per_channel_neurons_(model)
            modules = dict(model.named_modules())
        for name, role, (codes, scale, shift) in plans:
            _apply(modules, name, role, codes, scale, shift)
        return model


def _check_role(name: str, role: Role, modules: dict[str, nn.Module]) -> None:
    """Refuse, by name, a selected layer whose scale has nowhere exact to go."""
    if role.kind == "unsupported":
        raise ValueError(f"binary: {name}'s output reaches neither a BatchNorm nor a neuron "
                         "directly (nor the model's output), so its scale cannot be moved into "
                         "a threshold: exclude it")
    if role.bn is not None:
        bn = modules[role.bn]
        if not bn.affine or not bn.track_running_stats:
            raise ValueError(f"binary: {role.bn} needs affine parameters and running statistics "
                             "to hold the folded scale (BatchNorm affine=True, "
                             "track_running_stats=True)")
    if role.kind == "balanced":
        v_reset = modules[role.neuron].reset.v_reset
        if v_reset not in (None, 0.0):
            raise ValueError(f"binary: neuron {role.neuron} has v_reset={v_reset}; threshold "
                             "balancing needs soft reset (v_reset: null) or a hard reset to 0")


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


# ---------------------------------------------------------------- tracing the wiring


def layer_roles(model: nn.Module) -> tuple[dict[str, Role], list[str]]:
    """Every conv / linear layer's ``Role`` and the layers in forward-call order, from one forward
    of a zero input [1, 1, *in_shape] in eval mode (state and modes restored after).

    A layer is ``balanced`` when its output tensor is consumed only by a BN whose output is
    consumed only by a neuron (or only by a neuron directly), ``readout`` when it is the model's
    output, ``bn_gain`` when it feeds only a BN whose output goes elsewhere (an addition).
    Consumption is seen at module boundaries (forward hooks on the leaf modules) and, for the
    operations written between modules (``out + identity``), by a TorchFunctionMode."""
    in_shape = getattr(model, "in_shape", None)
    if in_shape is None:
        raise ValueError("binary needs a model of spikecompress.models (with in_shape)")
    param = next(model.parameters())
    x_seq = torch.zeros(1, 1, *in_shape, dtype=param.dtype, device=param.device)
    flow = _Flow()
    modules = dict(model.named_modules())
    handles = []
    for name, m in modules.items():
        parts = name.split(".")
        if not name or "parametrizations" in parts:
            continue
        if any(n != "parametrizations" for n, _ in m.named_children()):
            continue  # a container: its own operations are the "between modules" ones
        handles += [m.register_forward_pre_hook(flow.before(name)),
                    m.register_forward_hook(flow.after(name))]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), flow:
            out = model(x_seq)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
        _reset(model)
    order = [n for n in flow.order if isinstance(modules[n], SYNAPSES)]
    roles = {name: _role(name, flow, modules, id(out)) for name in order}
    return roles, order


def _role(name: str, flow: _Flow, modules: dict, out_id: int) -> Role:
    if flow.calls[name] != 1:
        return Role("unsupported")
    first = id(flow.outputs[name])
    if first == out_id:
        return Role("readout") if not flow.users(first) and first not in flow.used else Role(
            "unsupported")
    users = flow.users(first)
    if len(users) != 1 or first in flow.used or flow.calls[users[0]] != 1:
        return Role("unsupported")
    nxt = modules[users[0]]
    if isinstance(nxt, _NEURON_TYPES):
        return Role("balanced", None, users[0])
    if not isinstance(nxt, _BN):
        return Role("unsupported")
    bn_out = id(flow.outputs[users[0]])
    after = flow.users(bn_out)
    if (len(after) == 1 and bn_out not in flow.used and bn_out != out_id
            and isinstance(modules[after[0]], _NEURON_TYPES) and flow.calls[after[0]] == 1):
        return Role("balanced", users[0], after[0])
    return Role("bn_gain", users[0], None)


def _reset(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, _NEURON_TYPES):
            m.v = None


def _tensors(value: object):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


class _Flow(TorchFunctionMode):
    """Which leaf module consumes which tensor, and which tensors an operation outside every leaf
    module consumes (``used``); tensors seen stay alive so their ids stay theirs."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.used: set[int] = set()
        self.consumers: dict[int, list[str]] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self.order: list[str] = []
        self.alive: list[object] = []

    def users(self, tensor_id: int) -> list[str]:
        return self.consumers.get(tensor_id, [])

    def before(self, name: str):
        def hook(module, inputs) -> None:
            for t in _tensors(inputs):
                self.consumers.setdefault(id(t), []).append(name)
            self.alive.append(inputs)
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.calls[name] == 1:
                self.order.append(name)
            self.depth += 1
        return hook

    def after(self, name: str):
        def hook(module, inputs, output) -> None:
            self.depth -= 1
            self.alive.append(output)
            if isinstance(output, torch.Tensor):
                self.outputs[name] = output
        return hook

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.depth == 0:
            for t in _tensors((args, kwargs)):
                self.used.add(id(t))
                self.alive.append(t)
        return func(*args, **kwargs)
