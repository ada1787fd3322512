"""LATS: learning-rate-aware threshold scheduling for soft-threshold pruning (S-LATS, LATS, PGH).

Chen, Ma, Fang, Zheng, Yu, Tian, ICLR 2023 (arXiv 2302.13019); code ``Yanqi-Chen/LATS``
(``trainer.py``). Same re-parameterisation as STDS, w = sign(θ)·max(|θ| − d, 0) with the
straight-through gradient (``soft_threshold.py``). Soft-threshold training with SGD is an implicit
ISTA for min L(w) + λ‖w‖₁ whose threshold must grow by λ·η_t at step t (η_t the learning rate);
so d follows the integral of the learning rate. With s the first pruning step (``start`` · N,
like the code's ``pruning_start_epoch``), N the stage's steps and t the steps taken:

    integral (default, any LR schedule from ``ctx.lr_at``):
        d_t = D · Σ_{k=s}^{t−1} β^{x_k} η_k / Σ_{k=s}^{N−1} β^{x_k} η_k,   x_k = (k − s)/(N − s)
    sinp (the code's closed form for a per-step cosine LR; ``sinpInc`` / ``sinppghInc``):
        β = 1:  d = D · (x + sin(πx)/π),  x = (t − s)/(N − s)        (S-LATS)
        β ≠ 1:  d = D · [π²(β^x − 1) + (β^x − 2)l² + β^x l (l cos πx + π sin πx)]
                      / [π²(β − 1) − 2l²],  l = ln β                 (PGH)
    lowfreq (the code's ``--low-freq``, its "LATS"; a cosine LR that changes once per epoch):
        at epoch e of E (from s), after b of its n_b steps:
        d = D · ([1 + 2e + sin(π(e − ½)/E)/sin(π/(2E))] / 2 + b·(1 + cos(πe/E))/n_b) / (E + 1)

d_0 = 0 and d_N = D in every form; constant LR gives a linear ramp, steps LR a piecewise-linear one.
``beta`` ≠ 1 is PGH: λ grows as β^x over the window (the code's ``sinppgh`` scheduler; d'/η ∝ β^x).
What we found in ``trainer.py``: ``sinpInc`` and ``sinppghInc`` are the closed forms above, i.e.
∫(1 + cos πx)dx and ∫β^x(1 + cos πx)dx normalised to 1 at x = 1, and the low-frequency "LATS" is
the exact integral of a per-epoch cosine LR (it equals ``integral`` under such an LR; tested).
The paper's "early pruning" / "pruning at initialisation" variants were not reachable: not here.

``integral`` needs ``session.bind(optimizer, lr_at=..., total_steps=...)``; the sums are recomputed
from the step (cached incrementally, summed in the same order), so a resumed run gets the same d.
Finalize bakes the soft-thresholded weights (exact zeros). Layers: every conv and linear by
default, first and last included (the code's default; ``--first/last-layer-dense`` = ``exclude``).
Recipe ``lats``: ``{name: lats, D: 0.4}`` after a dense stage, cosine-LR Adam.
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

LATS_FORMS = ("integral", "sinp", "lowfreq")
_BIND = "call session.bind(optimizer, lr_at=..., total_steps=...) before training"


def sinp_fraction(x: float, beta: float = 1.0) -> float:
    """The code's closed forms, d/D at x ∈ [0, 1]: S-LATS (β = 1) or PGH (β ≠ 1)."""
    x = min(max(x, 0.0), 1.0)
    if beta == 1.0:
        return x + math.sin(math.pi * x) / math.pi
    lb, bx, pi2 = math.log(beta), beta**x, math.pi**2
    num = (pi2 * (bx - 1) + (bx - 2) * lb**2
           + bx * lb * (lb * math.cos(math.pi * x) + math.pi * math.sin(math.pi * x)))
    return num / (pi2 * (beta - 1) - 2 * lb**2)


def lowfreq_fraction(t: int, steps_per_epoch: int, epochs: int) -> float:
    """The code's low-frequency LATS, d/D after t steps of an ``epochs``-epoch window."""
    if t <= 0:
        return 0.0
    e = min((t - 1) // steps_per_epoch, epochs - 1)  # epoch of the t-th step
    b = t - e * steps_per_epoch  # its steps done in epoch e, 1 … steps_per_epoch
    base = 0.5 * (1.0 + 2 * e + math.sin(math.pi * (e - 0.5) / epochs)
                  / math.sin(math.pi * 0.5 / epochs))
    return (base + b * (1 + math.cos(math.pi * e / epochs)) / steps_per_epoch) / (epochs + 1.0)


@dataclass
class LATS:
    """Soft-threshold pruning whose threshold follows the integral of the LR (module docstring).

    ``form``: "integral" | "sinp" | "lowfreq"; ``beta``: PGH homotopy factor (1 = LATS);
    ``start``: fraction of the stage before which d stays 0; ``straight_through=False``: plain
    autograd through the threshold (no regrowth; not the published method).
    """

    NAME: ClassVar[str] = "lats"
    PAPER: ClassVar[str] = "Chen et al., ICLR 2023 (arXiv 2302.13019)"
    KIND: ClassVar[str] = "masks"

    D: float = 0.05
    form: str = "integral"
    beta: float = 1.0
    start: float = 0.0
    straight_through: bool = True
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    params_: list = field(default_factory=list, init=False, repr=False, compare=False)
    _sums: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.D < float("inf"):
            raise ValueError(f"D must be > 0 and finite, got {self.D}")
        if self.form not in LATS_FORMS:
            raise ValueError(f"form must be one of {list(LATS_FORMS)}, got {self.form!r}")
        if not 0 < self.beta < float("inf"):
            raise ValueError(f"beta must be > 0 and finite, got {self.beta}")
        if self.form == "lowfreq" and self.beta != 1.0:
            raise ValueError(f"beta must be 1 with form 'lowfreq' (no PGH form), got {self.beta}")
        if not 0 <= self.start < 1:
            raise ValueError(f"start must be in [0, 1), got {self.start}")

    def attach(self, model: nn.Module, ctx: Context) -> None:
        self.params_ = install_all_(model, self.include, self.exclude, 0.0, self.straight_through)

    def after_step(self, model: nn.Module, ctx: Context) -> None:
        set_thresholds_(self.params_, self.threshold_at(ctx))

    def threshold_at(self, ctx: Context) -> float:
        """d after ``ctx.step`` optimizer steps of the bound stage (see the module docstring)."""
        if not ctx.total_steps:
            raise RuntimeError(f"LATS needs the stage's total_steps: {_BIND}")
        n = ctx.total_steps
        s = round(self.start * n)
        t = min(max(ctx.step, s), n)
        if t == s:
            return 0.0
        if self.form == "sinp":
            return self.D * sinp_fraction((t - s) / (n - s), self.beta)
        if self.form == "lowfreq":
            return self.D * self._lowfreq(ctx, t - s, n - s)
        if ctx.lr_at is None:
            raise RuntimeError(f"LATS needs the learning-rate schedule lr_at: {_BIND}")
        return self.D * self._weighted_sum(ctx, s, n, t) / self._weighted_sum(ctx, s, n, n)

    def _lowfreq(self, ctx: Context, t: int, window: int) -> float:
        spe = ctx.steps_per_epoch
        if not spe or window % spe:
            raise RuntimeError(
                f"form 'lowfreq' needs steps_per_epoch and a whole number of epochs after "
                f"start (window {window} steps, steps_per_epoch {spe}): {_BIND}")
        return lowfreq_fraction(t, spe, window // spe)

    def _weighted_sum(self, ctx: Context, s: int, n: int, t: int) -> float:
        """Σ_{k=s}^{t−1} β^{(k−s)/(n−s)} η_k, summed in order from k = s. Cached per (schedule,
        window, end point kind), so the next step adds one term; any t gives a fresh sum's bits."""
        window = (ctx.lr_at, s, n)
        if self._sums.get("window") != window:
            self._sums = {"window": window}
        k, acc = self._sums.get(t == n, (s, 0.0))
        if k > t:
            k, acc = s, 0.0
        for j in range(k, t):
            weight = 1.0 if self.beta == 1.0 else self.beta ** ((j - s) / (n - s))
            acc += weight * float(ctx.lr_at(j))
        self._sums[t == n] = (t, acc)
        if t == n and not acc > 0:
            raise ValueError("LATS: the learning rate sums to 0 over the pruning window")
        return acc

    def current_sparsity(self, model: nn.Module) -> float:
        """Zero fraction of the re-parameterised weights (their effective values)."""
        return threshold_sparsity(model)

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Bake w = sign(θ)·max(|θ| − d, 0) into the plain weights (exact zeros)."""
        self.params_, self._sums = [], {}
        return bake_soft_thresholds_(model)
