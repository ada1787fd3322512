"""Divergence: a NaN or inf loss or weight stops training at once; an exploding loss warns."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn


class DivergenceError(ValueError):
    """Training produced a non-finite loss or weights (the CLI prints it in one line, exit 2)."""


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding a NaN or inf, else None."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


class DivergenceGuard:
    """Checks every step's loss and, at each checkpoint, the weights.

    ``where``: what the message names first (the stage of a recipe, or the run folder). A loss
    over ``explode`` times the first step's warns once (finite, but the run is going wrong)."""

    def __init__(self, where: str, explode: float = 100.0) -> None:
        self.where, self.explode, self.first, self.warned = where, explode, None, False

    def loss(self, value: float, epoch: int, step: int) -> None:
        if not math.isfinite(value):
            raise DivergenceError(
                f"{self.where}: the loss is {value} at epoch {epoch + 1}, step {step}: training "
                f"diverged (lower the learning rate); the last good checkpoint is kept")
        if self.first is None:
            self.first = max(abs(value), 1e-12)
        elif not self.warned and abs(value) > self.explode * self.first:
            self.warned = True
            warnings.warn(f"{self.where}: the loss {value:.4g} at step {step} is over "
                          f"{self.explode:g}x the first step's {self.first:.4g}", stacklevel=2)

    def weights(self, model: nn.Module, epoch: int, step: int) -> None:
        name = first_non_finite(dict(model.state_dict()))
        if name is not None:
            raise DivergenceError(
                f"{self.where}: {name} holds NaN or inf at epoch {epoch + 1}, step {step}: "
                f"training diverged; the last good checkpoint is kept")
