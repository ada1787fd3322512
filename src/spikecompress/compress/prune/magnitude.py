"""Magnitude pruning: zero the smallest |w|, one-shot or gradually (the pruning reference).

Han et al., NeurIPS 2015 (magnitude criterion); Zhu & Gupta, ICLR-W 2018 (gradual cubic schedule).
Recipe: ``{name: magnitude, sparsity: 0.9, schedule: cubic}``; ``schedule: constant`` prunes once
at attach (one-shot) and fine-tunes with the mask fixed.

``sparsity`` is the target itself (no calibration): the masks remove exactly round(sparsity · n)
of the selected weights once the schedule ends, or at finalize when the stage ends first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from spikecompress.compress.method import Context
from spikecompress.compress.prune.masks import mask_of, set_mask_, topk_mask
from spikecompress.compress.schedules import SCHEDULES, schedule_value
from spikecompress.compress.targets import select


@dataclass
class MagnitudePruning:
    """Keep the largest-magnitude weights of the selected conv / linear layers.

    ``scope="global"`` ranks all selected weights together, ``"layer"`` prunes each layer to the
    same sparsity. The sparsity follows ``schedule`` from 0 at ``begin`` to ``sparsity`` at
    ``until`` (fractions of the stage), ranking the current masked weights, so pruned weights
    stay pruned. Exactly ``round(sparsity · n)`` weights are zero at the end (ties broken by index),
    also when the stage ends before ``until`` (``finalize`` prunes the rest).
    Distributed: the masks are a function of the weights alone, which DDP keeps identical: they
    agree by themselves.
    """

    NAME: ClassVar[str] = "magnitude"
    PAPER: ClassVar[str] = "Han et al., NeurIPS 2015; Zhu & Gupta, ICLR-W 2018"
    KIND: ClassVar[str] = "masks"

    sparsity: float = 0.8
    scope: str = "global"
    schedule: str = "cubic"
    begin: float = 0.0
    until: float = 0.8
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    targets_: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {self.scope!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.begin < self.until <= 1:
            raise ValueError(f"need 0 <= begin < until <= 1, got {self.begin}, {self.until}")

    def attach(self, model: nn.Module, ctx: Context) -> None:
        self.targets_ = [m for _, m in select(model, self.include, self.exclude)]
        for m in self.targets_:
            set_mask_(m, torch.ones_like(m.weight))
        self._prune(self.sparsity if self.schedule == "constant" else 0.0)

    def after_step(self, model: nn.Module, ctx: Context) -> None:
        if self.schedule != "constant":
            self._prune(
                schedule_value(
                    self.schedule, ctx.progress, 0.0, self.sparsity, self.begin, self.until
                )
            )

    def current_sparsity(self) -> float:
        """Zero fraction of the selected weights (effective, masks applied)."""
        zeros = sum(int((m.weight == 0).sum()) for m in self.targets_)
        return zeros / sum(m.weight.numel() for m in self.targets_)

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Prune to ``sparsity`` now if the stage ended before the schedule reached it (a stage
        of 0 epochs, a run cut short); the Session then bakes the masks."""
        if self.schedule != "constant" and ctx.progress < self.until:
            self._prune(self.sparsity)
        return model

    @torch.no_grad()
    def _prune(self, sparsity: float) -> None:
        groups = [self.targets_] if self.scope == "global" else [[m] for m in self.targets_]
        for group in groups:
            # masked weights rank below every kept one, a kept 0 included: pruned stays pruned
            scores = torch.cat([torch.where(mask_of(m).mask == 0, -1.0, m.weight.abs()).flatten()
                                for m in group])
            keep = topk_mask(scores, scores.numel() - round(sparsity * scores.numel()))
            sizes = [m.weight.numel() for m in group]
            for m, k in zip(group, keep.split(sizes), strict=True):
                set_mask_(m, k.view_as(m.weight).to(m.weight.dtype))
