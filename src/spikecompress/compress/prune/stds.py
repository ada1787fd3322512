"""STDS: state transition of dendritic spines — soft-threshold pruning with a growing threshold.

Chen, Yu, Fang, Ma, Huang, Tian, ICML 2022 (PMLR 162:3701-3715); code ``Yanqi-Chen/STDS``.
Every selected weight is re-parameterised as w = sign(θ) · max(|θ| − d, 0) with the
straight-through gradient ∂L/∂θ = ∂L/∂w (``soft_threshold.py``): |θ| ≤ d is a silent
"filopodium", |θ| > d a functional spine, and a silent θ still learns, so it can grow back.
The threshold d rises over the stage's N optimizer steps (n = steps taken), updated every step:

    sine:     d(n) = D · (1 + sin(π (n/N − 1/2))) / 2
    linear:   d(n) = D · n / N
    constant: d(n) = D from the start; θ is initialised to sign(w₀)(|w₀| + D) so w = w₀ at first

n/N is ``ctx.step / ctx.total_steps`` once the loop called ``session.bind`` (else ``ctx.progress``),
so d is a pure function of the step and a resumed run reproduces it exactly. Finalize bakes
w = soft threshold of θ: the zeros are exact, nothing is removed physically.

Layers: every conv and linear by default, first conv and classifier included (the CIFAR-10 code
re-parameterises all of them; its ImageNet SEW-ResNet keeps the final ``nn.Linear`` dense — use
``exclude`` for that). The official optimizer's optional Grad R prior (``alpha_gr``, off by
default there) is not part of this method. D is in weight units: pick it relative to the typical
|w| of the layers (the paper's D = 1…5 belong to its 2048-epoch Adam runs). The CIFAR-10 code
trains with a constant LR; under a decaying LR the late rise of d meets a small LR and the
network cannot compensate (the mismatch LATS removes).
Recipe ``stds``: ``{name: stds, D: 0.5, schedule: sine}`` after a dense stage, constant-LR Adam.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from spikecompress.compress.method import Context
from spikecompress.compress.prune.soft_threshold import (
    bake_soft_thresholds_,
    install_all_,
    set_thresholds_,
    threshold_sparsity,
)

STDS_SCHEDULES = ("sine", "linear", "constant")


def stds_threshold(schedule: str, D: float, fraction: float) -> float:
    """d at ``fraction`` = n/N ∈ [0, 1] of the stage (clamped): sine, linear or constant ramp."""
    x = min(max(fraction, 0.0), 1.0)
    if schedule == "sine":
        return D * (1.0 + math.sin(math.pi * (x - 0.5))) / 2.0
    if schedule == "linear":
        return D * x
    if schedule == "constant":
        return D
    raise ValueError(f"schedule must be one of {list(STDS_SCHEDULES)}, got {schedule!r}")


@dataclass
class STDS:
    """Soft-threshold pruning with d rising from 0 to ``D`` along ``schedule`` (module docstring).

    ``straight_through=False`` switches to plain autograd through the threshold (the code's
    unpublished ``'st'`` mode: no gradient in the dead zone, no regrowth).
    """

    NAME: ClassVar[str] = "stds"
    PAPER: ClassVar[str] = "Chen et al., ICML 2022"
    KIND: ClassVar[str] = "masks"

    D: float = 0.05
    schedule: str = "sine"
    straight_through: bool = True
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    params_: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.D < float("inf"):
            raise ValueError(f"D must be > 0 and finite, got {self.D}")
        if self.schedule not in STDS_SCHEDULES:
            raise ValueError(
                f"schedule must be one of {list(STDS_SCHEDULES)}, got {self.schedule!r}"
            )

    def attach(self, model: nn.Module, ctx: Context) -> None:
        d0 = stds_threshold(self.schedule, self.D, 0.0)
        self.params_ = install_all_(
            model, self.include, self.exclude, d0, self.straight_through
        )

    def after_step(self, model: nn.Module, ctx: Context) -> None:
        set_thresholds_(self.params_, self.threshold_at(ctx))

    def threshold_at(self, ctx: Context) -> float:
        """d after ``ctx.step`` optimizer steps (n/N from the bound total, else ``progress``)."""
        if ctx.total_steps:
            fraction = ctx.step / ctx.total_steps
        else:
            fraction = ctx.progress
        return stds_threshold(self.schedule, self.D, fraction)

    def current_sparsity(self, model: nn.Module) -> float:
        """Zero fraction of the re-parameterised weights (their effective values)."""
        return threshold_sparsity(model)

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Bake w = sign(θ)·max(|θ| − d, 0) into the plain weights (exact zeros)."""
        self.params_ = []
        return bake_soft_thresholds_(model)
