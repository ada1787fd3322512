"""Weight masks as ``torch.nn.utils.parametrize`` entries: W_eff = W ⊙ M, removable by ``bake_``.

The mask is a buffer of the parametrization, so the optimizer never sees it and gradients reach
the original weight only where M = 1: a pruned weight is exactly zero in every forward, whatever
Adam's momentum does to the (unused) original value underneath.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


class Mask(nn.Module):
    """Parametrization ``W ↦ W ⊙ mask`` with a {0, 1} mask of W's shape."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def mask_of(module: nn.Module, name: str = "weight") -> Mask | None:
    """The Mask parametrization on ``module.name``, or None."""
    if not parametrize.is_parametrized(module, name):
        return None
    for p in module.parametrizations[name]:
        if isinstance(p, Mask):
            return p
    return None


def set_mask_(module: nn.Module, mask: torch.Tensor, name: str = "weight") -> Mask:
    """Install (or update in place) the mask of ``module.name``; returns the parametrization."""
    existing = mask_of(module, name)
    if existing is not None:
        existing.mask.copy_(mask)
        return existing
    m = Mask(mask.to(getattr(module, name).device))
    parametrize.register_parametrization(module, name, m)
    return m



def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask (shape of ``scores``) of exactly ``k`` largest entries; ties go to the lower flat
    index (a stable descending sort), so the choice is deterministic on every device."""
    flat = scores.flatten()  # [n]
    order = torch.sort(flat, descending=True, stable=True).indices
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[order[:k]] = True
    return keep.view_as(scores)
