"""Parametrizations (masks, fake quantization, re-parameterisations) baked to a plain module."""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize


def bake_(model: nn.Module) -> nn.Module:
    """Remove every parametrization, keeping the parametrized values; returns the plain model."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model


def is_plain(model: nn.Module) -> bool:
    """True when no module carries a parametrization or a forward (pre-)hook."""
    for m in model.modules():
        if parametrize.is_parametrized(m) or m._forward_hooks or m._forward_pre_hooks:
            return False
    return True
