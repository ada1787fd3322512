"""Time folding: stateless layers on ``x_seq`` [T, B, ...] by folding time into the batch.

Stateless layers (conv, linear, BN, pooling, flatten) do the same thing at every step, so they run
once on [T·B, ...]. The classes here subclass their torch counterparts (so ``isinstance`` checks in
Torch-Pruning, counters and exporters keep working) and only change ``forward`` to take and return
[T, B, ...]. ``SeqWrap`` does the same for any other stateless module. ``reset_state(model)`` clears
the membrane state of every stateful module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from spikecompress.snn.foreign import refuse_foreign
from spikecompress.snn.quantized import conv_forward, linear_forward


def check_x_seq(
    x_seq: torch.Tensor, expected: str, min_dim: int, max_dim: int | None = None
) -> None:
    """Raise a one-line ValueError unless ``x_seq`` has between min_dim and max_dim dimensions."""
    if not isinstance(x_seq, torch.Tensor):
        raise TypeError(
            f"expected x_seq to be a tensor of shape {expected}, got {type(x_seq).__name__}"
        )
    if x_seq.dim() < min_dim or (max_dim is not None and x_seq.dim() > max_dim):
        raise ValueError(f"expected x_seq of shape {expected}, got {tuple(x_seq.shape)}")


def fold(x_seq: torch.Tensor) -> torch.Tensor:
    """[T, B, ...] → [T·B, ...] (a view when x_seq is contiguous)."""
    return x_seq.flatten(0, 1)


def unfold(x: torch.Tensor, T: int) -> torch.Tensor:
    """[T·B, ...] → [T, B, ...]."""
    return x.view(T, x.shape[0] // T, *x.shape[1:])


def seq_apply(fn: Callable[[torch.Tensor], torch.Tensor], x_seq: torch.Tensor) -> torch.Tensor:
    """Apply a stateless per-sample function to every step: [T, B, ...] → [T, B, ...']."""
    T = x_seq.shape[0]
    return unfold(fn(fold(x_seq)), T)


def _seq_forward(
    layer: nn.Module, base: type, x_seq: torch.Tensor, expected: str, dims: int
) -> torch.Tensor:
    check_x_seq(x_seq, expected, min_dim=dims, max_dim=dims)
    return seq_apply(lambda x: base.forward(layer, x), x_seq)


def _on_grid(layer: nn.Module) -> bool:
    """True for a quantized layer that computes on the integer grid (``snn.quantized``)."""
    return getattr(layer, "input_scale", None) is not None


class Conv1d(nn.Conv1d):
    """``nn.Conv1d`` over [T, B, C, L] (on the integer grid when quantized: ``snn.quantized``)."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if _on_grid(self):
            check_x_seq(x_seq, "[T, B, C, L]", min_dim=4, max_dim=4)
            return seq_apply(lambda x: conv_forward(self, x), x_seq)
        return _seq_forward(self, nn.Conv1d, x_seq, "[T, B, C, L]", 4)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` over [T, B, C, H, W] (on the integer grid when quantized)."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if _on_grid(self):
            check_x_seq(x_seq, "[T, B, C, H, W]", min_dim=5, max_dim=5)
            return seq_apply(lambda x: conv_forward(self, x), x_seq)
        return _seq_forward(self, nn.Conv2d, x_seq, "[T, B, C, H, W]", 5)


class BatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` over [T, B, C] or [T, B, C, L]; statistics over time and batch."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        check_x_seq(x_seq, "[T, B, C] or [T, B, C, L]", min_dim=3, max_dim=4)
        return seq_apply(super().forward, x_seq)


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` over [T, B, C, H, W]; statistics over time and batch together."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return _seq_forward(self, nn.BatchNorm2d, x_seq, "[T, B, C, H, W]", 5)


class Linear(nn.Linear):
    """``nn.Linear`` over [T, B, F] (any leading dimensions, as torch; on the integer grid when
    quantized)."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        check_x_seq(x_seq, "[T, B, F]", min_dim=3)
        return linear_forward(self, x_seq) if _on_grid(self) else super().forward(x_seq)


class MaxPool1d(nn.MaxPool1d):
    """``nn.MaxPool1d`` over [T, B, C, L]."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return _seq_forward(self, nn.MaxPool1d, x_seq, "[T, B, C, L]", 4)


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` over [T, B, C, H, W]."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return _seq_forward(self, nn.MaxPool2d, x_seq, "[T, B, C, H, W]", 5)


class AvgPool1d(nn.AvgPool1d):
    """``nn.AvgPool1d`` over [T, B, C, L]."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return _seq_forward(self, nn.AvgPool1d, x_seq, "[T, B, C, L]", 4)


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` over [T, B, C, H, W]."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return _seq_forward(self, nn.AvgPool2d, x_seq, "[T, B, C, H, W]", 5)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` over [T, B, C, H, W]."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return _seq_forward(self, nn.AdaptiveAvgPool2d, x_seq, "[T, B, C, H, W]", 5)


class Flatten(nn.Flatten):
    """Flatten each sample: [T, B, d1, d2, ...] → [T, B, d1·d2·...]."""

    def __init__(self) -> None:
        super().__init__(start_dim=2)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        check_x_seq(x_seq, "[T, B, ...]", min_dim=3)
        return x_seq.flatten(2)  # [T, B, C, H, W] -> [T, B, C*H*W]


class Dropout(nn.Dropout):
    """Dropout with one mask per sample shared by all T steps (a dropped unit stays silent)."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        check_x_seq(x_seq, "[T, B, ...]", min_dim=2)
        if not self.training or self.p == 0:
            return x_seq
        keep = torch.empty_like(x_seq[0]).bernoulli_(1 - self.p) / (1 - self.p)  # [B, ...]
        return x_seq * keep


class SeqWrap(nn.Module):
    """Run any stateless module on [T, B, ...] by folding time into the batch."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        check_x_seq(x_seq, "[T, B, ...]", min_dim=2)
        return seq_apply(self.module, x_seq)


def reset_state(model: nn.Module) -> nn.Module:
    """Clear the membrane state of every module with state (attribute ``v``); returns the model.

    Works on our neurons and on any module that follows the same convention, and on
    SpikingJelly's neurons (their ``reset()``); another framework's stateful module is refused by
    name (``snn.foreign``): its state would silently survive.
    """
    refuse_foreign(model, "reset_state", allow=("spikingjelly",))
    for m in model.modules():
        if hasattr(m, "v") and hasattr(m, "record_v"):
            m.v = None
            m.v_seq = m.h_seq = None
        elif callable(getattr(m, "reset", None)) and type(m).__module__.startswith("spikingjelly"):
            m.reset()
    return model
