"""STDS: state transition of dendritic spines — soft-threshold pruning with a growing threshold.

Chen, Yu, Fang, Ma, Huang, Tian, ICML 2022 (PMLR 162:3701-3715); code ``Yanqi-Chen/STDS``.
Every selected weight is re-parameterised as w = sign(θ) · max(|θ| − d, 0) with the
straight-through gradient ∂L/∂θ = ∂L/∂w (``soft_threshold.py``): |θ| ≤ d is a silent
"filopodium", |θ| > d a functional spine, and a silent θ still learns, so it can grow back.
The threshold d rises over the stage's N optimizer steps (n = steps taken), updated every step:

    sine:     d(n) = D · (1 + sin(π (n/N − 1/2))) / 2
    linear:   d(n) = D · n / N
    constant: d(n) = D from the start; θ is initialised to sign(w₀)(|w₀| + D) so w = w₀ at first

n/N is ``ctx.step / ctx.total_steps`` once the loop called ``session.bind`` (else ``ctx.progress``).

Two ways to set the end point (exactly one of them):
- ``sparsity`` s (the default, 0.7): D is calibrated to the target while training. After every
  step D is re-estimated as D_n = the k-th smallest latent |θ_n| over the selected weights,
  k = round(s · n_weights) (the one global threshold that silences exactly a fraction s of them
  now), and d(n) = ramp(n / (until · N)) · D_n with the paper's ramp above, compressed into the
  first ``until`` (default 0.5) of the stage; after it d = D_n, so the network recovers at
  exactly the target. Finalize repeats the last adjustment (a no-op when the loop ran all N
  steps; it lands on s when the stage stopped early) and records the change in ``topup_``.
  Silent θ keep learning (straight-through) and spread outward, so D_n grows through training;
  with the ramp ending at N, the last steps prune a large slice at once with no steps left to
  recover (0.8 in 2 epochs below: 86.9 % at ``until`` = 1, 93.9 % at 0.5). ``constant`` with a
  target prunes to s at attach (θ = w₀, d = D_0) and then tracks D_n.
- ``D`` (the paper's knob, weight units): the threshold's end value, no calibration; the sparsity
  is whatever it gives (``until`` defaults to 1 there: the paper's schedule). The paper's D = 1…5
  belong to its 2048-epoch Adam runs; pick D relative to the typical |w| of the layers.

Default target, measured on a digits conv_net [16, 32, 64], T = 4, trained 4 epochs (97.2 %),
then Adam lr 1e-3 (28 steps an epoch): 2 epochs at sparsity 0.6 / 0.7 / 0.75 / 0.8 / 0.9 →
accuracy 97.2 / 97.2 / 95.3 / 93.9 / 13.1 %; 8 epochs at 0.8 / 0.9 → 97.8 / 95.0 %; each
sparsity on target within 0.001 and ``topup_`` = 0. (Paper knob, 8 epochs: D = 0.2 → 0.893 at
95.6 %, after falling to 12 % mid-stage.) Every live weight is shrunk by d (|w| = |θ| − d), and
56 Adam steps of ~1e-3 win back at most ~0.056 while d reaches 0.076 for 0.7 and 0.095 for 0.8
there (magnitude pruning, which keeps the survivors' values, keeps 97.8 % at 0.8).

d is a buffer of each parametrization and θ is the model's parameter, so a resumed run recomputes
the same D_n and reproduces d exactly. Finalize bakes w = soft threshold of θ: the zeros are exact,
nothing is removed physically. The sparsity target counts the selected layers only.

Layers: every conv and linear by default, first conv and classifier included (the CIFAR-10 code
re-parameterises all of them; its ImageNet SEW-ResNet keeps the final ``nn.Linear`` dense — use
``exclude`` for that). The official optimizer's optional Grad R prior (``alpha_gr``, off by
default there) is not part of this method. The CIFAR-10 code trains with a constant LR; under a
decaying LR the late rise of d meets a small LR and the network cannot compensate (the mismatch
LATS removes).
Recipe ``stds``: ``{name: stds, sparsity: 0.9, schedule: sine}`` (or ``D: 0.5`` instead of
``sparsity``) after a dense stage, constant-LR Adam.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from spikecompress.compress.method import Context
from spikecompress.compress.prune.soft_threshold import (
    bake_soft_thresholds_,
    check_target,
    check_until,
    finalize_to_target_,
    install_all_,
    set_thresholds_,
    sparsity_threshold,
    zero_fraction,
)

STDS_SCHEDULES = ("sine", "linear", "constant")
DEFAULT_SPARSITY = 0.7  # see the module docstring: keeps accuracy after a short fine-tuning


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
    """Soft-threshold pruning with d rising from 0 to D along ``schedule`` (module docstring).

    Set ``sparsity`` (D calibrated to that target; the default, 0.7) or ``D`` (the paper's end
    threshold, uncalibrated), not both. ``until``: the fraction of the stage at which the
    schedule reaches D (default 0.5 under ``sparsity``, 1 under ``D``).
    ``straight_through=False`` switches to plain autograd through the threshold (the code's
    unpublished ``'st'`` mode: no gradient in the dead zone, no regrowth).
    Distributed: the threshold follows θ (D_n an order statistic of it) and the step: it agrees by
    itself under DDP.
    """

    NAME: ClassVar[str] = "stds"
    PAPER: ClassVar[str] = "Chen et al., ICML 2022"
    KIND: ClassVar[str] = "masks"

    sparsity: float | None = None
    D: float | None = None
    schedule: str = "sine"
    until: float | None = None
    straight_through: bool = True
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    layers_: list = field(default_factory=list, init=False, repr=False, compare=False)
    # the end threshold in use: D, or its latest estimate D_n under a sparsity target
    D_: float = field(default=0.0, init=False, repr=False, compare=False)
    # the sparsity change finalize's exact last adjustment made (0 when training reached it)
    topup_: float = field(default=0.0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.sparsity = check_target(self.sparsity, "D", self.D, DEFAULT_SPARSITY)
        if self.D is not None:
            if not 0 < self.D < float("inf"):
                raise ValueError(f"D must be > 0 and finite, got {self.D}")
            self.D_ = self.D
        self.until = check_until(self.until, self.sparsity)
        if self.schedule not in STDS_SCHEDULES:
            raise ValueError(
                f"schedule must be one of {list(STDS_SCHEDULES)}, got {self.schedule!r}"
            )

    def attach(self, model: nn.Module, ctx: Context) -> None:
        # a target starts from θ = w₀ (d₀ = 0); the paper's constant variant from θ = w₀ ± D
        d0 = stds_threshold(self.schedule, self.D_, 0.0) if self.sparsity is None else 0.0
        self.layers_ = install_all_(model, self.include, self.exclude, d0, self.straight_through)
        if self.sparsity is not None:
            self.after_step(model, Context(progress=0.0))

    def after_step(self, model: nn.Module, ctx: Context) -> None:
        if self.sparsity is not None:
            self.D_ = sparsity_threshold(self.layers_, self.sparsity)
        set_thresholds_(self.layers_, self.threshold_at(ctx))

    def threshold_at(self, ctx: Context) -> float:
        """d after ``ctx.step`` optimizer steps (n/N from the bound total, else ``progress``; the
        ramp ends at ``until`` of the stage)."""
        if ctx.total_steps:
            fraction = ctx.step / ctx.total_steps
        else:
            fraction = ctx.progress
        return stds_threshold(self.schedule, self.D_, fraction / self.until)

    def current_sparsity(self, model: nn.Module | None = None) -> float:
        """Zero fraction of the re-parameterised weights (their effective values)."""
        return zero_fraction(self.layers_)

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Land on the target (if any), then bake w = sign(θ)·max(|θ| − d, 0) (exact zeros)."""
        if self.sparsity is not None:
            self.topup_ = finalize_to_target_(self.layers_, self.sparsity)
        self.layers_ = []
        return bake_soft_thresholds_(model)
