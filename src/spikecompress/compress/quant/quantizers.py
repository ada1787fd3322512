"""Weight quantizers with a choice of scale: max-|W|, learned step size (LSQ) or least squares.

``WeightQuantizer(bits, per_channel, scale)`` maps a weight W [C_out, ...] to integer codes q and
a scale s (one per tensor, or per output channel with ``per_channel``), Q(W) = s · q:

* ``scale="max"``: s = max|W| / qmax, recomputed from W at every forward (no state). Simple, but
  at 2–3 bits the largest weight sets a coarse step and most weights round to 0.
* ``scale="lsq"``: s is a learned Parameter (LSQ, Esser et al., ICLR 2020), initialised to the
  least-squares scale below (``lsq_init="least_squares"``; LSQ+, Bhalgat et al. 2020, also
  starts from the MSE-optimal step) or to the paper's 2·mean|W| / sqrt(qmax)
  (``lsq_init="paper"``), and trained with the gradient ∂Q/∂s = round(W/s) − W/s inside the
  range, ±qmax outside, scaled by 1 / sqrt(n·qmax) (n = weights per scale), as the paper does.
  The paper's start is far off on folded SNN weights (MNIST-1D, 4 bits per channel, before any
  training: 78.7 % vs 95.9 % from the least-squares start) and a short fine-tune does not
  recover it (docs/benchmarks_quantization.md).
* ``scale="least_squares"``: s minimises ‖W − s·q‖² by alternating s = <W, q> / <q, q> and
  q = clamp(round(W / s)) a few times from the max-|W| start, recomputed at every forward
  (detached): the error never increases over the iterations.

qmax = 2^(b−1) − 1 (narrow symmetric grid, 0 representable, so pruned weights stay 0). b = 1 is
binary: q = sign(W) ∈ {−1, 0, +1} (0 only for W = 0) with s = mean|W| over the non-zeros ("max",
"least_squares": that mean is the least-squares scale of sign(W)) or learned ("lsq").
``tanh=True`` quantizes tanh(W) instead of W (MINT's re-parameterisation, Yin et al. 2024).

The codes carry a straight-through graph (identity inside the range, zero outside, and the LSQ
scale gradient), so ``codes(W)`` feeds integer-grid layers (``snn.quantized``) and ``forward(W)``
= s · q serves as a weight parametrization.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SCALES = ("max", "lsq", "least_squares")
LSQ_INITS = ("least_squares", "paper")
LS_ITERS = 5


def check_bits(bits: object, field: str, low: int = 1, high: int = 16) -> int:
    """``bits`` as an int in low..high; ValueError naming ``field`` otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= high:
        raise ValueError(f"{field} must be an int in {low}..{high}, got {bits!r}")
    return bits


def _qmax(bits: int) -> int:
    return 1 if bits == 1 else 2 ** (bits - 1) - 1


def _view(s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A scalar or per-output-channel [C] scale viewed against W [C, ...]."""
    return s.view(-1, *([1] * (w.dim() - 1))) if s.dim() else s


def _reduce(w: torch.Tensor, per_channel: bool, fn) -> torch.Tensor:
    """``fn`` over all of W ([]), or per output channel ([C]); fn(t, dim) reduces dims."""
    if per_channel and w.dim() > 1:
        return fn(w.flatten(1), 1)
    return fn(w.flatten(), 0)


def max_scale(w: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    """max|W| / qmax (b ≥ 2) or the mean |W| of the non-zeros (b = 1); [] or [C], > 0."""
    tiny = torch.finfo(w.dtype).tiny
    a = w.detach().abs()
    if bits == 1:
        nz = _reduce((a > 0).to(a.dtype), per_channel, lambda t, d: t.sum(d)).clamp_min(1)
        return (_reduce(a, per_channel, lambda t, d: t.sum(d)) / nz).clamp_min(tiny)
    return (_reduce(a, per_channel, lambda t, d: t.amax(d)) / _qmax(bits)).clamp_min(tiny)


def round_codes(w: torch.Tensor, s: torch.Tensor, bits: int) -> torch.Tensor:
    """clamp(round(W / s), −qmax, qmax), or sign(W) at 1 bit (no gradient)."""
    if bits == 1:
        return torch.sign(w)
    m = _qmax(bits)
    return (w / _view(s, w)).round().clamp(-m, m)


def fit_scale(w: torch.Tensor, q: torch.Tensor, per_channel: bool = False,
              fallback: torch.Tensor | None = None) -> torch.Tensor:
    """The least-squares scale of fixed codes, argmin_s ‖W − s·q‖ = <W, q> / <q, q>, over all of
    W ([]) or per output channel ([C]), in W's dtype; ``fallback`` (else 0) where q is all 0."""
    num = _reduce(w * q, per_channel, lambda t, d: t.sum(d))
    den = _reduce(q * q, per_channel, lambda t, d: t.sum(d))
    s = num / den.clamp_min(1)  # <q, q> sums squared integers: >= 1 unless q is all 0
    return s if fallback is None else torch.where(den > 0, s, fallback)


def alternating_least_squares(w: torch.Tensor, s: torch.Tensor, bits: int, iters: int,
                              per_channel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """From the scale ``s``, ``iters`` times: q ← round_codes(W, s), then s ← fit_scale(W, q)
    (the old s kept where q is all 0, clamped > 0). Each half-step minimises ‖W − s·q‖ over its
    variable, so the error never increases. Returns (s, q): s is exactly the least-squares scale
    of the codes q (``iters`` ≥ 1; with 0, (s, None)). In W's dtype, [] or [C] like ``s``."""
    tiny = torch.finfo(w.dtype).tiny
    q = None
    for _ in range(iters):
        q = round_codes(w, s, bits)
        s = fit_scale(w, q, per_channel, fallback=s).clamp_min(tiny)
    return s, q


def least_squares_scale(w: torch.Tensor, bits: int, per_channel: bool,
                        iters: int = LS_ITERS) -> torch.Tensor:
    """The alternating least-squares scale from the max-|W| start (see the module docstring); []
    or [C], > 0. ``admm_quant.project`` runs the same alternation with another start and in
    float64, once per ADMM step rather than at every forward (see there)."""
    w = w.detach()
    s = max_scale(w, bits, per_channel)
    if bits == 1:
        return s
    return alternating_least_squares(w, s, bits, iters, per_channel)[0]


class WeightQuantizer(nn.Module):
    """Codes and scale of a weight; see the module docstring. ``weight``: the tensor it will
    quantize (its shape and, for LSQ, the initial scale)."""

    def __init__(self, weight: torch.Tensor, bits: int, per_channel: bool = False,
                 scale: str = "max", tanh: bool = False, lsq_init: str = "least_squares") -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {list(SCALES)}, got {scale!r}")
        if lsq_init not in LSQ_INITS:
            raise ValueError(f"lsq_init must be one of {list(LSQ_INITS)}, got {lsq_init!r}")
        self.bits, self.per_channel, self.mode, self.tanh = bits, per_channel, scale, tanh
        self.scale = None
        if scale == "lsq":
            w = self._pre(weight.detach())
            m = _qmax(bits)
            if lsq_init == "paper":
                init = _reduce(w.abs(), per_channel, lambda t, d: t.mean(d)) * 2 / math.sqrt(m)
            else:
                init = least_squares_scale(w, bits, per_channel)
            self.scale = nn.Parameter(init.clamp_min(1e-8))
            n = w[0].numel() if per_channel and w.dim() > 1 else w.numel()
            self.grad_factor = 1.0 / math.sqrt(n * m)

    def _pre(self, w: torch.Tensor) -> torch.Tensor:
        return torch.tanh(w) if self.tanh else w

    def current_scale(self, w: torch.Tensor) -> torch.Tensor:
        """The scale for weight ``w`` now ([] or [C]); a graph to the Parameter under LSQ."""
        if self.mode == "lsq":
            g = self.grad_factor
            s = self.scale.abs().clamp_min(1e-8)
            return (s - s * g).detach() + s * g  # value s, gradient scaled by g (LSQ)
        if self.mode == "least_squares":
            return least_squares_scale(self._pre(w), self.bits, self.per_channel)
        return max_scale(self._pre(w), self.bits, self.per_channel)

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(integer-valued codes with the straight-through graph, scale [] or [C])."""
        w = self._pre(w)
        s = self.current_scale(w)
        if self.bits == 1:
            z = w / _view(s.detach(), w)
            return torch.sign(w).detach() + (z - z.detach()), s
        m = _qmax(self.bits)
        z = (w / _view(s, w)).clamp(-m, m)  # clamp: zero gradient outside the range
        return z + (z.round() - z).detach(), s

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """Q(W) = s · q (as a parametrization of ``weight``). Backward: LSQ's graph, else the
        identity STE written ``Q(W).detach() + (W − W.detach())`` so that the forward value is
        exactly Q(W) and the gradient exactly the incoming one (zero where least squares clips)."""
        q, s = self.codes(w)
        value = q * _view(s, q) + 0.0  # + 0.0 turns −0.0 into +0.0
        if self.mode == "lsq":
            return value
        through = w - w.detach()
        if self.mode == "least_squares" and self.bits > 1:
            inside = (w.detach().abs() <= _qmax(self.bits) * _view(s, w)).to(w.dtype)
            through = through * inside
        return value.detach() + through

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}, scale={self.mode!r}"
