"""Fake-quantization primitives: max-|W| codes and scale, the straight-through estimator, baking.

Symmetric narrow-range uniform quantizer (per tensor, as in Jacob et al., CVPR 2018), b bits,
2 <= b <= 8::

    q = clamp(round(W / s), −qmax, qmax),  qmax = 2^{b−1} − 1,  Ŵ = s · q,  s = max|W| / qmax

per tensor or per output channel (dim 0), so a tensor holds at most 2^b − 1 distinct values
(2 bits = ternary) and 0 maps to 0 (pruned weights stay pruned). b = 1 is binary:
``Ŵ = s · sign(W)`` with ``s`` the mean |W| of the non-zero weights (XNOR-Net's scaling, Rastegari
et al., ECCV 2016; zeros stay 0, so a pruned binary layer is {−s, 0, +s}).

The parametrization that trains through them (max, LSQ or least-squares scale) is
``quantizers.WeightQuantizer``. Backward is the identity STE, ``dŴ/dW = 1`` (Bengio et al. 2013;
with the max-abs scale nothing is clipped, so the clipped STE is the same). It is written
``Q(W).detach() + (W − W.detach())`` rather than ``W + (Q(W) − W).detach()``: the second form
rounds twice, which is exact only while Q(W) is within a factor 2 of W (Sterbenz); binary weights
(W = 0.01, Q(W) = s) land a few ulp off the grid, one more distinct value each. ``W − W.detach()``
is exactly +0, so the forward value is exactly Q(W) (and −0.0 becomes +0.0).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


def check_bits(bits: object, field: str = "weight_bits") -> int:
    """``bits`` as an int in 1..8; ValueError naming ``field`` otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"{field} must be an int in 1..8, got {bits!r}")
    return bits


def _reduce_dims(w: torch.Tensor, per_channel: bool) -> tuple[int, ...] | None:
    """Dimensions a scale is taken over: all but dim 0 per channel, None (all) per tensor."""
    return tuple(range(1, w.dim())) if per_channel and w.dim() > 1 else None


def quantize_codes(
    w: torch.Tensor, bits: int, per_channel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes and scale with ``Q(W) = scale · codes``.

    Shapes: W [C_out, ...] → codes int8 of W's shape (in [−qmax, qmax], or {−1, 0, 1} for 1 bit),
    scale [C_out, 1, ...] per channel or [] per tensor (W's dtype, > 0).
    """
    check_bits(bits)
    dims = _reduce_dims(w, per_channel)
    keep = dict(dim=dims, keepdim=True) if dims else {}
    tiny = torch.finfo(w.dtype).tiny
    if bits == 1:
        nonzero = (w != 0).to(w.dtype).sum(**keep).clamp_min(1)
        scale = (w.abs().sum(**keep) / nonzero).clamp_min(tiny)
        return torch.sign(w).to(torch.int8), scale
    qmax = 2 ** (bits - 1) - 1
    scale = (w.abs().amax(**keep) / qmax).clamp_min(tiny)
    return (w / scale).round().clamp(-qmax, qmax).to(torch.int8), scale


def quantize(w: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    """The quantized values Q(W) = scale · codes (no gradient trick); W [C_out, ...] → same."""
    codes, scale = quantize_codes(w, bits, per_channel)
    return codes.to(w.dtype) * scale + 0.0  # + 0.0 turns −0.0 into +0.0


def ste(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Forward value exactly ``q``, gradient passed to ``w`` unchanged (identity STE)."""
    return q.detach() + (w - w.detach())


@torch.no_grad()
def bake_weight_(module: nn.Module, value: torch.Tensor, name: str = "weight") -> None:
    """Remove every parametrization of ``module.name`` and set the (same) parameter to ``value``.

    The parameter object is kept, so an optimizer built on the model still owns it.
    """
    value = value.detach().clone()
    if parametrize.is_parametrized(module, name):
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    getattr(module, name).copy_(value)
