"""The integer ops of Integer-STBP's lowered network, each with its forward and manual backward.

The method, what lowering makes of each layer and the design choices are in ``istbp`` (a
reconstruction, see its module docstring); ``istbp_lower`` builds the op list. Each op's
``forward(m, (x, f))`` and ``backward(m, (err, e), need_input)`` take the method ``m``
(``IntegerSTBP``) for its integer state; values travel as integer tensors with a power-of-two
exponent beside them.

Forward (``IntegerSTBP.integer_forward`` runs the ops), per time step, int8 × int8 → int32
products (``torch._int_mm``; convolutions by im2col) and adds/shifts only:

    I  = align(W q_in) + b                        int32, membrane units (a shift, rounding half up)
    H  = V + ((I − (V − V_r)) >> k)   decay_input     (V − ((V − V_r) >> k) + I otherwise;
                                                       V + I for IF); >> k rounds half up
    H  = clamp(H, int16);  S = H ≥ θ_int (ties fire);  V = S ? V_r : H  (hard) | H − θ_int S (soft)
    max pooling of spikes: OR; average pooling / SEW addition: spike sums with the exponent + 2

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
"""

from __future__ import annotations

import math

import torch
from torch import nn

from spikecompress.compress.quant.int_ops import (
    col2im,
    fit_int8,
    im2col,
    imm,
    pad_zeros,
    requant,
    shift,
)
from spikecompress.snn.neuron import LIF

THETA_BITS = 12  # the threshold sits at 2^12 in the int16 membrane: range ±8 θ (istbp: Lowering)
OUT_BITS = 8  # the read-out's logits carry 8 fraction bits below the weights' LSB
GUARD = 8  # guard bits of the error recursion through time
I16 = (-(2**15), 2**15 - 1)
I32 = (-(2**31), 2**31 - 1)


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

    def forward(self, m, x: tuple[torch.Tensor, int]) -> tuple[torch.Tensor, int]:
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

    def backward(self, m, err: tuple[torch.Tensor, int], need_input: bool):
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

    def forward(self, m, x: tuple[torch.Tensor, int]) -> tuple[torch.Tensor, int]:
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

    def backward(self, m, err: tuple[torch.Tensor, int], need_input: bool):
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
