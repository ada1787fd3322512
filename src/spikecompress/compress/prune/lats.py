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

``until`` (a fraction of the stage) ends the window early: N above is then until · N steps and
d stays at its end value after it.

Two ways to set the end point D (exactly one of them):
- ``sparsity`` s (the default, 0.7): D is calibrated to the target while training, as in STDS.
  After every step D is re-estimated as D_n = the k-th smallest latent |θ_n| over the selected
  weights, k = round(s · n_weights) (the one threshold that silences exactly a fraction s now),
  and d_t = D_n · (d_t / D of the form above), over a window that ends at ``until`` = 0.5 of the
  stage by default; after it d = D_n, so the network recovers at exactly the target. Finalize
  repeats that last adjustment (a no-op after all N steps; it lands on s when the stage stopped
  early) and records its change in ``topup_``. Δd/η is then constant only up to the drift of
  D_n: λ is the L1 weight that ends at the target rather than one fixed in advance. A window up
  to the last step leaves no steps to recover from the last pruning (0.8 in 2 epochs below:
  82.8 % at ``until`` = 1, 93.3 % at 0.5).
- ``D`` (the paper's knob, weight units): no calibration; the sparsity is whatever D gives
  (``until`` defaults to 1 there: the paper's window).

Default target, measured on a digits conv_net [16, 32, 64], T = 4, trained 4 epochs (97.2 %),
then constant-LR Adam lr 1e-3 (28 steps an epoch): 2 epochs at sparsity 0.6 / 0.7 / 0.75 / 0.8 /
0.9 → accuracy 97.5 / 96.4 / 95.6 / 93.3 / 10.6 %; 8 epochs at 0.8 / 0.9 → 98.1 / 96.4 %; each
sparsity on target within 0.001 and ``topup_`` = 0 (paper knob, 8 epochs: D = 0.2 → 0.904 at
93.9 %). Every live weight is shrunk by d; 56 Adam steps of ~1e-3 win back at most ~0.056,
while d reaches 0.076 for 0.7 and 0.095 for 0.8 there (magnitude pruning keeps 97.8 % at 0.8).

``integral`` needs ``session.bind(optimizer, lr_at=..., total_steps=...)``; the sums are recomputed
from the step (cached incrementally, summed in the same order) and D_n from θ, so a resumed run
gets the same d. Finalize bakes the soft-thresholded weights (exact zeros). Layers: every conv and
linear by default, first and last included (the code's default; ``--first/last-layer-dense`` =
``exclude``); the sparsity target counts the selected layers only.
Recipe ``lats``: ``{name: lats, sparsity: 0.9}`` (or ``D: 0.4``) after a dense stage, cosine-LR
Adam.
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

LATS_FORMS = ("integral", "sinp", "lowfreq")
DEFAULT_SPARSITY = 0.7  # see the module docstring: keeps accuracy after a short fine-tuning
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

    Set ``sparsity`` (D calibrated to that target; the default, 0.7) or ``D`` (the paper's end
    threshold, uncalibrated), not both. ``until``: the fraction of the stage at which the
    schedule reaches D (default 0.5 under ``sparsity``, 1 under ``D``).
    ``form``: "integral" | "sinp" | "lowfreq"; ``beta``: PGH homotopy factor (1 = LATS);
    ``start``: fraction of the stage before which d stays 0; ``straight_through=False``: plain
    autograd through the threshold (no regrowth; not the published method).
    Distributed: the threshold follows θ, the step and the learning-rate schedule: it agrees by
    itself under DDP.
    """

    NAME: ClassVar[str] = "lats"
    PAPER: ClassVar[str] = "Chen et al., ICLR 2023 (arXiv 2302.13019)"
    KIND: ClassVar[str] = "masks"

    sparsity: float | None = None
    D: float | None = None
    form: str = "integral"
    beta: float = 1.0
    start: float = 0.0
    until: float | None = None
    straight_through: bool = True
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    layers_: list = field(default_factory=list, init=False, repr=False, compare=False)
    # the end threshold in use: D, or its latest estimate D_n under a sparsity target
    D_: float = field(default=0.0, init=False, repr=False, compare=False)
    # the sparsity change finalize's exact last adjustment made (0 when training reached it)
    topup_: float = field(default=0.0, init=False, repr=False, compare=False)
    _sums: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.sparsity = check_target(self.sparsity, "D", self.D, DEFAULT_SPARSITY)
        if self.D is not None:
            if not 0 < self.D < float("inf"):
                raise ValueError(f"D must be > 0 and finite, got {self.D}")
            self.D_ = self.D
        if self.form not in LATS_FORMS:
            raise ValueError(f"form must be one of {list(LATS_FORMS)}, got {self.form!r}")
        if not 0 < self.beta < float("inf"):
            raise ValueError(f"beta must be > 0 and finite, got {self.beta}")
        if self.form == "lowfreq" and self.beta != 1.0:
            raise ValueError(f"beta must be 1 with form 'lowfreq' (no PGH form), got {self.beta}")
        self.until = check_until(self.until, self.sparsity)
        if not 0 <= self.start < self.until:
            raise ValueError(f"start must be in [0, until = {self.until}), got {self.start}")

    def attach(self, model: nn.Module, ctx: Context) -> None:
        self.layers_ = install_all_(model, self.include, self.exclude, 0.0, self.straight_through)

    def after_step(self, model: nn.Module, ctx: Context) -> None:
        if self.sparsity is not None:
            self.D_ = sparsity_threshold(self.layers_, self.sparsity)
        set_thresholds_(self.layers_, self.threshold_at(ctx))

    def threshold_at(self, ctx: Context) -> float:
        """d after ``ctx.step`` optimizer steps of the bound stage (see the module docstring)."""
        if not ctx.total_steps:
            raise RuntimeError(f"LATS needs the stage's total_steps: {_BIND}")
        s = round(self.start * ctx.total_steps)
        n = min(max(round(self.until * ctx.total_steps), s + 1), ctx.total_steps)  # window end
        t = min(max(ctx.step, s), n)
        if t == s:
            return 0.0
        if self.form == "sinp":
            return self.D_ * sinp_fraction((t - s) / (n - s), self.beta)
        if self.form == "lowfreq":
            return self.D_ * self._lowfreq(ctx, t - s, n - s)
        if ctx.lr_at is None:
            raise RuntimeError(f"LATS needs the learning-rate schedule lr_at: {_BIND}")
        return self.D_ * self._weighted_sum(ctx, s, n, t) / self._weighted_sum(ctx, s, n, n)

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

    def current_sparsity(self, model: nn.Module | None = None) -> float:
        """Zero fraction of the re-parameterised weights (their effective values)."""
        return zero_fraction(self.layers_)

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Land on the target (if any), then bake w = sign(θ)·max(|θ| − d, 0) (exact zeros)."""
        if self.sparsity is not None:
            self.topup_ = finalize_to_target_(self.layers_, self.sparsity)
        self.layers_, self._sums = [], {}
        return bake_soft_thresholds_(model)
