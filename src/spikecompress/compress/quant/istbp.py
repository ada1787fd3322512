"""Integer-STBP: integer-only training and inference of an SNN (Tan & Wu, ASP-DAC 2023).

Only the paper's abstract is verified (spec quant-kd §2.5): every floating-point operation of STBP
(forward, backward through time, weight update) is replaced by low-bitwidth integer operations.
No code was found. **What follows is our reconstruction**, the spec's integer datapath made
concrete; each choice is ours and named as such.

Lowering (``attach``, float, once). Every conv / linear of the network becomes an int8 weight
tensor ``w`` with a per-layer power-of-two scale 2^-fw (fw the largest exponent that keeps
max |W| within ±127: round to nearest); the BatchNorm after it is folded in with its running
statistics (its scale γ/√(σ²+ε) into the weights, its shift into an int32 bias), so the integer
network has no BN. Every LIF / IF neuron gets a membrane exponent fu (the threshold sits at
2^12: θ_int = round(θ · 2^fu), range ±8 θ in int16), an integer reset value, and its leak as a
shift: τ must be a power of two, 2^k (1 − 1/τ = 1 − 2^-k). PLIF (learnable τ), a ``leak``
override, non-power-of-two τ, residual nets whose addition is into currents (``resnet``), dropout
and ANN twins are refused with a one-line error naming the module; SEW-ResNet (spike addition)
is supported. A synapse that feeds a neuron delivers its current in the neuron's membrane units
(its bias too); the read-out's logits are in units 2^-(fw + 8).

Input (``encode``): the one float op, at the boundary: x → int8 codes ``round(x · 2^fx)``, fx
fixed on the first batch: the smallest exponent that represents that batch exactly (digits, grey
levels k/16: fx = 4; spikes and event counts: fx = 0), else the largest one that fits the codes
in ``input_bits`` (a runtime field, checkpointed).

Forward (``integer_forward``), per time step, int8 × int8 → int32 products (``torch._int_mm``;
convolutions by im2col) and adds/shifts only:

    I  = align(W q_in) + b                        int32, membrane units (a shift, rounding half up)
    H  = V + ((I − (V − V_r)) >> k)   decay_input     (V − ((V − V_r) >> k) + I otherwise;
                                                       V + I for IF); >> k rounds half up
    H  = clamp(H, int16);  S = H ≥ θ_int (ties fire);  V = S ? V_r : H  (hard) | H − θ_int S (soft)
    max pooling of spikes: OR; average pooling / SEW addition: spike sums with the exponent + 2

Loss (our choice): the cross-entropy of the mean logits, as the project's float loop uses, with
an integer softmax: base 2 after a fixed-point multiply by log2(e)/T, 2^x by Mitchell's
piecewise-linear shift-and-add (within 6 %), p = (e << 12) // Σ e. The output error is
p − onehot in units 2^-12 (``int_ops.softmax_q12``). The loss this step returns (for logging
only) is the CE of that integer softmax.

Backward (BPTT, manual, no autograd). Errors are int8 mantissas with a per-layer dynamic power-of-
two exponent (``int_ops.requant``: the leading-one position of max |δ|, rounding half up), kept
as a Python int beside them; sums of errors with different exponents (SEW) are aligned first.

    surrogate  h(H) = 1 if |H − θ_int| < window/2 · θ_int else 0     a comparator window, height 1
    ε_H[t] = (ε_S[t] << 8) · h(H[t]) + λ(ε_H[t+1]) · (1 − S[t])      int32, 8 guard bits;
             λ(g) = g − (g >> k) (the leak, 1 for IF); the reset is detached; no (1 − S) factor
             for a soft reset
    ε_I = ε_H (exponent − k with decay_input) → int8;  ε_in = W^T ε_I → int8 at the next layer
    ΔW = Σ_{t,b,positions} ε_I q_in^T   int32 accumulators (chunks added in int64 past 133k terms)
    Δb = Σ ε_I

Update (stochastic rounding, seeded by ``seed``; the generator state ``rng_`` is checkpointed):

    w ← clamp(w − SR(ΔW · L_m >> s), ±(2^(b−1) − 1))     and the same for b (int32)

with the learning rate as a 16-bit fixed-point multiplier L_m · 2^-s (a host scalar, as a
hardware register would hold it) of ``lr_scale · ctx.lr_at(step)`` (the loop's schedule):
``update="normalized"`` (default) divides each tensor's ΔW by 2^n, n = the bit length of
max |ΔW| (a per-tensor dynamic exponent of the gradient, so the largest step is lr · [0.5, 1)
in weight units: the update scale of the loop's Adam learning rates); ``update="sgd"`` uses the
exact gradient (the exponents and the 1/(T·B) of the mean loss go into L).

Float mirror. After every step (``after_step``) and at ``finalize`` the float model gets the
integer network exactly: weights w · 2^-fw, each folded BN set to an exact per-channel shift
(weight 1, running mean 0, running var 1 − ε: 1/√(var + ε) rounds to 1 in float32, checked) with
bias b · 2^-f, thresholds θ_int · 2^-fu: dyadic values, stored exactly by the artifact, which
rebuilds it from ``model.spec`` + the state dict. The float forward is the same network *without*
the integer datapath's roundings: it agrees with the integer forward except where (a) the current
is rounded into membrane units (when fx + fw > fu, e.g. small first-layer weights), (b) the leak
shift drops a set bit (odd membranes), (c) the int16 membrane saturates (|H| > 8 θ). Measured on
the digits CNN [16, 32, 64] trained in float (T = 4, seed 0), lowered: the spikes of its three
layers differ in 0.008 / 0.019 / 0.125 % of (neuron, step, sample), no membrane saturates, the
test predictions are 100 % equal (θ at 2^10: 5× more spike mismatches; at 2^14: 1.2 % of the
membranes saturate). The float model is never trained: its BN, surrogate and
``detach_reset`` do not take part (the integer path has its own window and detaches the reset).

Recipe: ``{name: istbp}`` (see ``recipes/istbp.yaml``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.compress.method import Context
from spikecompress.compress.quant.int_ops import (
    bit_length,
    col2im,
    fit_int8,
    im2col,
    imm,
    pad_zeros,
    requant,
    shift,
    softmax_q12,
    stochastic_shift,
)
from spikecompress.models.common import Network
from spikecompress.models.resnet import SEWBlock
from spikecompress.snn.neuron import IF, LIF

UPDATES = ("normalized", "sgd")
THETA_BITS = 12  # the threshold sits at 2^12 in the int16 membrane: range ±8 θ (see the docstring)
OUT_BITS = 8  # the read-out's logits carry 8 fraction bits below the weights' LSB
GUARD = 8  # guard bits of the error recursion through time
I16 = (-(2**15), 2**15 - 1)
I32 = (-(2**31), 2**31 - 1)
B32 = 2**30  # bias clamp


# -- the lowered network ---------------------------------------------------------------------------
class _Synapse:
    """A conv / linear with its folded BN: int8 weight, int32 bias in units 2^-out_exp."""

    def __init__(self, name: str, module: nn.Module, bn: nn.Module | None, index: int):
        self.name, self.module, self.bn, self.index = name, module, bn, index
        self.conv = isinstance(module, nn.Conv1d | nn.Conv2d)
        if self.conv:
            self.kernel, self.stride = tuple(module.kernel_size), tuple(module.stride)
            self.padding = module.padding
        self.trains_bias = bn is not None or getattr(module, "bias", None) is not None
        self.out_exp: int | None = None  # the next neuron's fu, or fw + OUT_BITS
        self.cache: tuple | None = None
        self.grad: tuple | None = None

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W', b') in float64: BN's scale folded into W, its shift (and the layer bias) into b."""
        w = self.module.weight.detach().double()
        bias = getattr(self.module, "bias", None)
        b = bias.detach().double() if bias is not None else torch.zeros(w.shape[0]).double()
        if self.bn is not None:  # the scale as the float BN computes it (exactly 1 for a mirror)
            bn = self.bn
            scale = (bn.weight.detach() * torch.rsqrt(bn.running_var + bn.eps)).double()
            w = w * scale.view(-1, *[1] * (w.dim() - 1))
            b = (b - bn.running_mean.double()) * scale + bn.bias.detach().double()
        return w, b

    def forward(self, m: IntegerSTBP, x: tuple[torch.Tensor, int]) -> tuple[torch.Tensor, int]:
        q, f = fit_int8(*x)
        self.cache = (q, f)
        w, fw = m.weights_[self.name], int(m.exps_[self.index])
        o = w.shape[0]
        T, B = q.shape[:2]
        if self.conv:
            cols, out = im2col(q.flatten(0, 1), self.kernel, self.stride, self.padding)
            acc = imm(cols, w.reshape(o, -1).t()).reshape(T, B, *out, o).movedim(-1, 2)
        else:
            out = ()
            acc = imm(q.reshape(-1, q.shape[-1]), w.t()).reshape(T, B, o)
        bias = m.biases_[self.name].view(-1, *[1] * len(out))
        c = shift(acc.to(torch.int64), self.out_exp - f - fw) + bias
        return c.clamp(*I32).to(torch.int32), self.out_exp

    def backward(self, m: IntegerSTBP, err: tuple[torch.Tensor, int], need_input: bool):
        eps, e = requant(*err, bits=m.error_bits)  # ε_I: int8, dL/dI = eps · 2^e
        q, f = self.cache
        w, fw = m.weights_[self.name], int(m.exps_[self.index])
        o = w.shape[0]
        flat = eps.movedim(2, -1).reshape(-1, o)  # [N·positions, O]
        if self.conv:
            x = q.flatten(0, 1)
            cols, _ = im2col(x, self.kernel, self.stride, self.padding)
        else:
            cols = q.reshape(-1, q.shape[-1])
        dw = imm(cols.t(), flat).t().reshape(w.shape)  # Σ ε q: units 2^(e − f)
        db = flat.sum(0, dtype=torch.int64) if self.trains_bias else None
        self.grad = (dw, e - f, db, e)
        self.cache = None
        if not need_input:
            return None
        g = imm(flat, w.reshape(o, -1))  # W^T ε: units 2^(e − fw)
        if self.conv:
            g = col2im(g, tuple(x.shape), self.kernel, self.stride, self.padding)
        return g.reshape(q.shape), e - fw


class _Neuron:
    """An LIF / IF neuron on the int16 membrane: exponent fu, θ_int, leak shift k (None: IF)."""

    def __init__(self, name: str, module: nn.Module, window: float):
        self.name, self.module = name, module
        if module.leak is not None:
            raise ValueError(f"istbp: {name} has a learned leak override; integer leaks are "
                             f"shifts of a power-of-two tau")
        theta = module.v_threshold.detach().double()
        self.exp = THETA_BITS - math.ceil(math.log2(float(theta.max())))
        scale = 2.0**self.exp
        self.theta = torch.round(theta * scale).to(torch.int32)
        self.half = torch.round(theta * scale * window / 2).clamp(min=1).to(torch.int32)
        v_reset = module.reset.v_reset
        self.soft = v_reset is None
        v_r = 0.0 if self.soft else v_reset * scale
        if v_r != round(v_r) or abs(v_r) > I16[1]:
            raise ValueError(f"istbp: {name} v_reset {v_reset} is not a multiple of the membrane "
                             f"unit 2^-{self.exp}")
        self.v_r = int(v_r)
        self.k, self.decay_input = None, False
        if isinstance(module, LIF):
            taus = {float(t) for t in module.tau.flatten()}
            k = math.log2(taus.pop()) if len(taus) == 1 else 0.5
            if k != int(k) or k < 1:
                raise ValueError(f"istbp: {name} tau {module.tau.tolist()} is not one power of "
                                 f"two >= 2; the integer leak is a shift (tau = 2^k)")
            self.k, self.decay_input = int(k), bool(module.decay_input)
        self.cache: tuple | None = None

    def _view(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        t = t.to(like.device)
        return t if t.dim() == 0 else t.view(-1, *[1] * (like.dim() - 2))  # [C] → [C, 1, ...]

    def forward(self, m: IntegerSTBP, x: tuple[torch.Tensor, int]) -> tuple[torch.Tensor, int]:
        c, f = x
        if f != self.exp:
            raise RuntimeError(f"istbp: {self.name} got a current in units 2^-{f}, its membrane "
                               f"is in 2^-{self.exp}")
        th = self._view(self.theta, c[0])
        v = torch.full_like(c[0], self.v_r)
        hs = torch.empty(c.shape, dtype=torch.int16, device=c.device)
        ss = torch.empty(c.shape, dtype=torch.int8, device=c.device)
        for t in range(c.shape[0]):
            if self.k is None:
                h = v + c[t]
            elif self.decay_input:
                h = v + shift(c[t] - (v - self.v_r), -self.k)
            else:
                h = v - shift(v - self.v_r, -self.k) + c[t]
            h = h.clamp(*I16)
            s = h >= th
            v = h - th * s if self.soft else torch.where(s, self.v_r, h)
            hs[t], ss[t] = h, s
        self.cache = (hs, ss)
        out = ss
        mask = self.module.spike_mask
        if mask is not None:
            out = ss * (mask != 0).to(device=ss.device, dtype=torch.int8)
        return out, 0

    def backward(self, m: IntegerSTBP, err: tuple[torch.Tensor, int], need_input: bool):
        eps, e = requant(*err, bits=m.error_bits)
        mask = self.module.spike_mask
        if mask is not None:
            eps = eps * (mask != 0).to(device=eps.device, dtype=torch.int8)
        hs, ss = self.cache
        self.cache = None
        th, half = self._view(self.theta, hs[0]), self._view(self.half, hs[0])
        out = torch.empty(hs.shape, dtype=torch.int32, device=hs.device)
        g = None
        for t in reversed(range(hs.shape[0])):
            window = ((hs[t].to(torch.int32) - th).abs() < half).to(torch.int32)
            gt = (eps[t].to(torch.int32) << GUARD) * window
            if g is not None:
                carry = g if self.k is None else g - shift(g, -self.k)
                gt = gt + (carry if self.soft else carry * (1 - ss[t].to(torch.int32)))
            out[t], g = gt, gt
        return out, e - GUARD - (self.k if self.decay_input else 0)


def _windows(x: torch.Tensor, k: int, d: int) -> torch.Tensor:
    """[*lead, *S] (d spatial dims) → non-overlapping k-windows [*lead, *S//k, k^d]."""
    if d == 1:
        lo = x.shape[-1] // k
        return x[..., :lo * k].unflatten(-1, (lo, k))
    ho, wo = x.shape[-2] // k, x.shape[-1] // k
    w = x[..., :ho * k, :wo * k].unflatten(-1, (wo, k)).unflatten(-3, (ho, k))
    return w.movedim(-3, -2).flatten(-2)  # [*lead, ho, wo, k·k]


def _unwindows(w: torch.Tensor, shape: tuple[int, ...], k: int, d: int) -> torch.Tensor:
    """The inverse of ``_windows`` (cropped positions get zeros) → ``shape``."""
    if d == 1:
        x = w.flatten(-2)
        return pad_zeros(x, (0, shape[-1] - x.shape[-1]))
    x = w.unflatten(-1, (k, k)).movedim(-2, -3).flatten(-4, -3).flatten(-2)
    return pad_zeros(x, (0, shape[-2] - x.shape[-2]), (0, shape[-1] - x.shape[-1]))


class _Pool:
    """Non-overlapping k-pooling of spikes: max (an OR, the error routed to the first maximum) or
    average (a sum, the exponent + log2 k^d)."""

    def __init__(self, name: str, module: nn.Module, kind: str, d: int):
        k = module.kernel_size
        k = k[0] if isinstance(k, tuple) else k
        s = module.stride
        s = s[0] if isinstance(s, tuple) else s
        p = module.padding
        p = p[0] if isinstance(p, tuple) else p
        ok = (s in (k, None) and p == 0 and not getattr(module, "ceil_mode", False)
              and getattr(module, "dilation", 1) in (1, (1, 1)))
        area = k**d
        if not ok or (kind == "avg" and area & (area - 1)):
            raise ValueError(f"istbp: {name} must pool non-overlapping windows (stride = kernel, "
                             f"no padding) of a power-of-two area, got {module}")
        self.name, self.kind, self.k, self.d = name, kind, k, d
        self.bits = int(math.log2(area))
        self.cache = None

    def forward(self, m, x):
        q, f = x
        w = _windows(q, self.k, self.d)
        if self.kind == "avg":
            self.cache = q.shape
            return w.sum(-1, dtype=torch.int32), f + self.bits
        idx = w.argmax(-1)
        self.cache = (q.shape, idx)
        return w.amax(-1), f

    def backward(self, m, err, need_input):
        g, e = err
        if self.kind == "avg":
            shape = self.cache
            w = g.unsqueeze(-1).expand(*g.shape, 2**self.bits)
            return _unwindows(w, shape, self.k, self.d), e - self.bits
        shape, idx = self.cache
        hit = idx.unsqueeze(-1) == torch.arange(2**self.bits, device=idx.device)
        return _unwindows(g.unsqueeze(-1) * hit, shape, self.k, self.d), e


class _GlobalPool:
    """``AdaptiveAvgPool2d(1)``: a sum over the positions, exponent + log2(H·W) (a power of two)."""

    def __init__(self, name: str):
        self.name, self.cache = name, None

    def forward(self, m, x):
        q, f = x
        area = q.shape[-1] * q.shape[-2]
        if area & (area - 1):
            raise ValueError(f"istbp: {self.name} averages {area} positions, not a power of two")
        self.cache = (q.shape, int(math.log2(area)))
        return q.sum((-2, -1), keepdim=True, dtype=torch.int32), f + self.cache[1]

    def backward(self, m, err, need_input):
        g, e = err
        shape, bits = self.cache
        return g.expand(shape), e - bits


class _Flatten:
    def __init__(self, name: str):
        self.name, self.cache = name, None

    def forward(self, m, x):
        q, f = x
        self.cache = q.shape
        return q.flatten(2), f

    def backward(self, m, err, need_input):
        return err[0].reshape(self.cache), err[1]


class _Residual:
    """SEW block: branch(x) + shortcut(x) (both spikes); the errors of the two paths are aligned
    to the larger exponent and added."""

    def __init__(self, name: str, branch: list, shortcut: list):
        self.name, self.branch, self.shortcut = name, branch, shortcut

    def forward(self, m, x):
        (a, fa), (b, fb) = _run(m, self.branch, x), _run(m, self.shortcut, x)
        f = max(fa, fb)
        return shift(a.to(torch.int32), f - fa) + shift(b.to(torch.int32), f - fb), f

    def backward(self, m, err, need_input):
        (a, ea), (b, eb) = _back(m, self.branch, err, True), _back(m, self.shortcut, err, True)
        e = max(ea, eb)
        return shift(a.to(torch.int32), ea - e) + shift(b.to(torch.int32), eb - e), e


def _run(m, ops: list, x):
    for op in ops:
        x = op.forward(m, x)
    return x


def _back(m, ops: list, err, need_input: bool):
    for i in reversed(range(len(ops))):
        err = ops[i].backward(m, err, need_input or i > 0)
    return err


def _flat(ops: list):
    for op in ops:
        if isinstance(op, _Residual):
            yield from _flat(op.branch)
            yield from _flat(op.shortcut)
        else:
            yield op


_POOLS = {nn.MaxPool1d: ("max", 1), nn.MaxPool2d: ("max", 2),
          nn.AvgPool1d: ("avg", 1), nn.AvgPool2d: ("avg", 2)}


def _lower(model: nn.Module, window: float) -> list:
    """The integer op list of a spikecompress ``Network`` (features → classifier)."""
    if not isinstance(model, Network):
        raise ValueError(f"istbp: model must be a spikecompress Network (features → classifier), "
                         f"got {type(model).__name__}")
    for key in ("exit_policy", "time_stages"):
        if model.spec.get(key) is not None:
            raise ValueError(f"istbp: model.spec.{key}: the integer datapath runs the plain "
                             f"network only")
    synapses: list[_Synapse] = []

    def items(module: nn.Module, prefix: str) -> list:
        out = []
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            out.extend(items(child, full) if isinstance(child, nn.Sequential) else [(full, child)])
        return out

    def lower(seq: list) -> list:
        ops, i = [], 0
        while i < len(seq):
            name, mod = seq[i]
            if parametrize.is_parametrized(mod) or mod._forward_hooks or mod._forward_pre_hooks:
                raise ValueError(f"istbp: {name} carries a parametrization or hook; lower a plain "
                                 f"model")
            if isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Linear):
                if isinstance(mod, nn.Conv1d | nn.Conv2d) and (
                        mod.groups != 1 or set(mod.dilation) != {1} or isinstance(mod.padding, str)
                        or mod.padding_mode != "zeros"):
                    raise ValueError(f"istbp: {name} must be a plain conv (groups 1, dilation 1, "
                                     f"numeric zero padding), got {mod}")
                bn = None
                if i + 1 < len(seq) and isinstance(seq[i + 1][1], nn.modules.batchnorm._BatchNorm):
                    bn, i = seq[i + 1][1], i + 1
                    _check_bn(seq[i][0], bn)
                syn = _Synapse(name, mod, bn, len(synapses))
                synapses.append(syn)
                ops.append(syn)
                if i + 1 < len(seq) and isinstance(seq[i + 1][1], LIF | IF):  # membrane units
                    neuron, i = _Neuron(*seq[i + 1], window), i + 1
                    syn.out_exp = neuron.exp
                    ops.append(neuron)
                else:
                    syn.out_exp = None  # logits: fw + OUT_BITS, set with fw
            elif isinstance(mod, LIF | IF):
                ops.append(_Neuron(name, mod, window))
            elif isinstance(mod, tuple(_POOLS)):
                kind, d = next(v for t, v in _POOLS.items() if isinstance(mod, t))
                ops.append(_Pool(name, mod, kind, d))
            elif isinstance(mod, nn.AdaptiveAvgPool2d):
                size = mod.output_size
                if size not in (1, (1, 1)):
                    raise ValueError(f"istbp: {name} must pool to 1×1, got {size}")
                ops.append(_GlobalPool(name))
            elif isinstance(mod, nn.Flatten):
                ops.append(_Flatten(name))
            elif isinstance(mod, SEWBlock):
                branch = lower([(f"{name}.{n}", getattr(mod, n)) for n in
                                ("conv1", "bn1", "act1", "conv2", "bn2", "act2")])
                short = [] if mod.downsample is None else lower(items(mod.downsample,
                                                                      f"{name}.downsample"))
                ops.append(_Residual(name, branch, short))
            elif isinstance(mod, nn.Identity):
                pass
            else:
                raise ValueError(f"istbp: cannot lower {name} ({type(mod).__name__}): the integer "
                                 f"datapath has conv / linear (+ BN), LIF / IF, pooling, flatten "
                                 f"and SEW additions")
            i += 1
        return ops

    ops = [_Flatten("input")] if len(model.in_shape) == 1 else []
    ops += lower(items(model.features, "features")) + lower(items(model.classifier, "classifier"))
    if not synapses:
        raise ValueError("istbp: the model has no conv or linear layer")
    return ops


def _check_bn(name: str, bn: nn.Module) -> None:
    """A foldable BN whose float image can be an exact per-channel shift (module docstring)."""
    if bn.weight is None or bn.running_var is None:
        raise ValueError(f"istbp: {name} must be an affine BatchNorm with running statistics")
    var = torch.full((), 1.0 - bn.eps, dtype=bn.running_var.dtype)
    if float(torch.rsqrt(var + bn.eps)) != 1.0:
        raise ValueError(f"istbp: {name} eps {bn.eps} leaves no running_var with 1/√(var + eps)"
                         f" = 1 in {var.dtype}")


def _fixed_point(x: float) -> tuple[int, int]:
    """x ≥ 0 as (mantissa, shift): x ≈ mantissa · 2^-shift with a 16-bit mantissa."""
    if x <= 0 or not math.isfinite(x):
        return 0, 0
    frac, ex = math.frexp(x)  # x = frac · 2^ex, frac in [0.5, 1)
    return round(frac * 2**15), 15 - ex


@dataclass
class IntegerSTBP:
    """Integer-only STBP training of the whole network (a reconstruction; see the module docstring).

    ``weight_bits`` / ``input_bits`` / ``error_bits``: widths of the weights, the input codes and
    the back-propagated errors (2..8, int8 storage); ``window``: width of the rectangular
    surrogate's comparator window in units of the threshold; ``update``: "normalized" (per-tensor
    dynamic gradient exponent) or "sgd" (the exact gradient); ``lr_scale``: multiplies the
    loop's learning rate ``ctx.lr_at(step)``; ``seed``: of the stochastic rounding.
    """

    NAME: ClassVar[str] = "istbp"
    PAPER: ClassVar[str] = "Tan & Wu, ASP-DAC 2023 (reconstruction: spec quant-kd §2.5)"
    KIND: ClassVar[str] = "quant"
    REFUSES: ClassVar[tuple[str, ...]] = ("resnet",)  # residuals into currents: not lowered

    weight_bits: int = 8
    input_bits: int = 8
    error_bits: int = 8
    window: float = 1.0
    update: str = "normalized"
    lr_scale: float = 1.0
    seed: int = 0
    weights_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    biases_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    exps_: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    input_exp_: int | None = field(default=None, init=False, repr=False, compare=False)
    rng_: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _ops: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("weight_bits", "input_bits", "error_bits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 8:
                raise ValueError(f"{name} must be an int in [2, 8], got {v!r}")
        for name in ("window", "lr_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf:
                raise ValueError(f"{name} must be a number > 0, got {v!r}")
        if self.update not in UPDATES:
            raise ValueError(f"update must be one of {list(UPDATES)}, got {self.update!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")

    # -- hooks ---------------------------------------------------------------------------------
    @torch.no_grad()
    def attach(self, model: nn.Module, ctx: Context) -> None:
        """Lower the model (float, once): int8 weights, folded BN, integer neurons; then make
        the float model the exact image of the integer one."""
        self._ops = _lower(model, self.window)
        qmax = 2 ** (self.weight_bits - 1) - 1
        exps = []
        for syn in self.synapses():
            w, b = syn.folded()
            top = float(w.abs().max())
            fw = math.floor(math.log2(qmax / top)) if top > 0 else 0
            exps.append(fw)
            if syn.out_exp is None:
                syn.out_exp = fw + OUT_BITS
            self.weights_[syn.name] = torch.round(w * 2.0**fw).clamp(-qmax, qmax).to(
                device=syn.module.weight.device, dtype=torch.int8)
            bias = torch.round(b * 2.0**syn.out_exp).clamp(-B32, B32) if syn.trains_bias else b * 0
            self.biases_[syn.name] = bias.to(device=syn.module.weight.device, dtype=torch.int32)
        self.exps_ = torch.tensor(exps, dtype=torch.int64)
        self.input_exp_ = None
        self.rng_ = torch.Generator().manual_seed(self.seed).get_state()
        self.mirror()

    def train_step(
        self, model: nn.Module, x_seq: torch.Tensor, y: torch.Tensor, ctx: Context
    ) -> tuple[float, torch.Tensor]:
        """One integer step: forward, integer softmax-CE error, BPTT, stochastic-rounding update
        of the integer state (the float model follows in ``after_step``). ``x_seq``: the float
        batch (encoded here, the one float op) or int8 codes from ``encode``. Returns (the CE of
        the integer softmax, the integer logits [T, B, classes] in units 2^-(fw + 8))."""
        if ctx.lr_at is None:
            raise ValueError("istbp: the learning rate comes from the training loop: call "
                             "Session.bind(optimizer, lr_at) first")
        q = self.encode(x_seq) if x_seq.is_floating_point() else x_seq
        if y.is_floating_point() or y.dim() != 1 or y.shape[0] != q.shape[1]:
            raise ValueError(f"y must be integer labels [B] with B = {q.shape[1]}, got "
                             f"{tuple(y.shape)} {y.dtype}")
        return self._step(q, y, ctx.lr_at(ctx.step) * self.lr_scale)

    @torch.no_grad()
    def after_step(self, model: nn.Module, ctx: Context) -> None:
        self.mirror()

    @torch.no_grad()
    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """The float model with the integer-trained network (exact dyadic values)."""
        self.mirror()
        return model

    # -- the integer datapath ------------------------------------------------------------------
    def synapses(self) -> list[_Synapse]:
        return [op for op in _flat(self._ops) if isinstance(op, _Synapse)]

    def neurons(self) -> list[_Neuron]:
        return [op for op in _flat(self._ops) if isinstance(op, _Neuron)]

    @torch.no_grad()
    def encode(self, x_seq: torch.Tensor) -> torch.Tensor:
        """The input boundary (the one float op): x → int8 codes round(x · 2^fx); fx is fixed on
        the first batch (``input_exp_``), see the module docstring."""
        if not x_seq.is_floating_point():
            raise ValueError(f"x_seq: encode takes the float input, got {x_seq.dtype}")
        qmax = 2 ** (self.input_bits - 1) - 1
        if self.input_exp_ is None:
            top = float(x_seq.abs().max())
            if not math.isfinite(top):
                raise ValueError("x_seq holds NaN or inf")
            fmax = math.floor(math.log2(qmax / top)) if top > 0 else 0
            exact = [f for f in range(fmax - 8, fmax + 1)
                     if torch.equal(torch.round(x_seq * 2.0**f), x_seq * 2.0**f)]
            self.input_exp_ = exact[0] if exact else fmax
        return torch.round(x_seq * 2.0**self.input_exp_).clamp(-qmax, qmax).to(torch.int8)

    def integer_forward(self, codes: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Integer inference: int8 codes [T, B, ...] → (logits int32 [T, B, classes], f), the
        logits being ``logits · 2^-f``."""
        if codes.is_floating_point() or self.input_exp_ is None:
            raise ValueError("x_seq: integer_forward takes int8 codes from encode")
        self._follow(codes.device)
        return _run(self, self._ops, (codes, self.input_exp_))

    def _step(self, q: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[float, torch.Tensor]:
        out, f = self.integer_forward(q)
        T, B, K = out.shape
        p = softmax_q12(out.sum(0, dtype=torch.int64), f, T)  # [B, K], units 2^-12
        target = (y.unsqueeze(1) == torch.arange(K, device=y.device)).to(torch.int64) << 12
        g = (p - target).to(torch.int32)
        _back(self, self._ops, (g.unsqueeze(0).expand(T, B, K), -12), False)
        self._update(lr, T * B)
        p_y = p.gather(1, y.unsqueeze(1)).flatten().tolist()
        loss = sum(math.log(4096 / max(v, 1)) for v in p_y) / max(len(p_y), 1)
        return loss, out

    def _update(self, lr: float, count: int) -> None:
        gen = torch.Generator()  # on the CPU on every device: the same draws everywhere
        gen.set_state(self.rng_)
        qmax = 2 ** (self.weight_bits - 1) - 1
        for syn in self.synapses():
            dw, ew, db, eb = syn.grad
            fw = int(self.exps_[syn.index])
            w = self.weights_[syn.name]
            step = self._scaled(dw, ew, fw, lr, count, gen)
            self.weights_[syn.name] = (w - step).clamp(-qmax, qmax).to(torch.int8)
            if syn.trains_bias:
                b = self.biases_[syn.name]
                step = self._scaled(db, eb, syn.out_exp, lr, count, gen)
                self.biases_[syn.name] = (b - step).clamp(-B32, B32).to(torch.int32)
            syn.grad = None
        self.rng_ = gen.get_state()

    def _scaled(self, g: torch.Tensor, e: int, frac: int, lr: float, count: int, gen):
        """The integer step of a tensor of units 2^-frac for the gradient mantissas ``g`` (units
        2^e): SR(g · lr_fixed), see the module docstring."""
        if self.update == "normalized":
            scale = lr * 2.0 ** (frac - bit_length(g))
        else:
            scale = lr * 2.0 ** (frac + e) / count
        mant, sh = _fixed_point(scale)
        return stochastic_shift(g.to(torch.int64) * mant, sh, gen)

    def _follow(self, device: torch.device) -> None:
        """Keep the integer state on ``device`` (a checkpoint loads it on the CPU)."""
        for d in (self.weights_, self.biases_):
            for k, t in d.items():
                if t.device != device:
                    d[k] = t.to(device)

    # -- the float image -----------------------------------------------------------------------
    @torch.no_grad()
    def mirror(self) -> None:
        """Write the integer network into the float model exactly (module docstring)."""
        for syn in self.synapses():
            mod, fw = syn.module, int(self.exps_[syn.index])
            w = self.weights_[syn.name]
            mod.weight.copy_(w.to(device=mod.weight.device, dtype=mod.weight.dtype) * 2.0**-fw)
            b = self.biases_[syn.name].to(device=mod.weight.device, dtype=mod.weight.dtype)
            b = b * 2.0**-syn.out_exp
            if syn.bn is not None:
                bn = syn.bn
                bn.weight.fill_(1.0)
                bn.bias.copy_(b)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
                if mod.bias is not None:
                    mod.bias.zero_()
            elif mod.bias is not None:
                mod.bias.copy_(b)
        for n in self.neurons():
            th = n.module.v_threshold
            th.copy_((n.theta.to(th.device, th.dtype) * 2.0**-n.exp).expand_as(th))
