"""Fake quantization of weights with a straight-through estimator (STE), as a parametrization.

Symmetric uniform, b bits (2 <= b <= 8): ``q = clamp(round(W / s), −(2^{b−1} − 1), 2^{b−1} − 1)``,
``Ŵ = s · q`` with ``s = max|W| / (2^{b−1} − 1)`` per tensor or per output channel (dim 0), so a
layer holds at most 2^b − 1 distinct values and the artifact stores it at b bits. b = 1 is binary:
``Ŵ = s · sign(W)`` with ``s = mean|W|`` (per tensor or channel; XNOR-Net's scaling). Backward: the
STE passes the gradient through unchanged (``Ŵ = W + (Q(W) − W).detach()``).
"""

from __future__ import annotations

import torch
from torch import nn


def quantize(w: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    """The quantized values Q(W) (no gradient trick); shapes: W [C_out, ...] → same."""
    dims = tuple(range(1, w.dim())) if per_channel and w.dim() > 1 else None
    if bits == 1:
        scale = w.abs().mean(dim=dims, keepdim=True) if dims else w.abs().mean()
        return scale * torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
    qmax = 2 ** (bits - 1) - 1
    amax = w.abs().amax(dim=dims, keepdim=True) if dims else w.abs().max()
    scale = (amax / qmax).clamp_min(torch.finfo(w.dtype).tiny)
    return (w / scale).round().clamp(-qmax, qmax) * scale


class FakeQuant(nn.Module):
    """Parametrization ``W ↦ W + (Q(W) − W).detach()``: quantized forward, straight-through grad."""

    def __init__(self, bits: int, per_channel: bool) -> None:
        super().__init__()
        if not 1 <= bits <= 8:
            raise ValueError(f"weight_bits must be in 1..8, got {bits}")
        self.bits, self.per_channel = bits, per_channel

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (quantize(w, self.bits, self.per_channel) - w).detach()
