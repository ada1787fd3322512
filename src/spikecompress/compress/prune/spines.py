"""Dendritic-spine state for SD-SNN (Han, Zhao, Zeng, Pan — "Adaptive Sparse Structure
Development with Pruning and Regeneration for Spiking Neural Networks", arXiv 2211.12219;
Information Sciences 2025): per-weight ranges [r−, r+], their streak counters, the masks, and
the rules of the authors' released code (BrainCog ``examples/Structural_Development/SD-SNN``)
that update them. The schedule of these rules and the method around them are in ``sdsnn``.

    spines = Spines(weight, rate)          # a parametrization: W ⊙ M forward, dense gradient
    init_ranges_(spines, w); update_ranges_(spines, w, count_thre, shrink)
    regenerate_(spines, w, q, count_thre); prune_rows_(spines, n); spine_row_scores(spines)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.compress.prune.masks import Mask

CONV_TAU = 5.0  # conv rate increments decay as exp(−k/5)
FC_A0, FC_LATE, FC_SWITCH, FC_GAIN = 0.5, 5e-4, 23, 51.2  # the code's fc rate rule
Q_BASE, Q_MAX = 1.1, 99.0  # regeneration percentile q = min(99, q0 + 1.1^k)


@dataclass(frozen=True)
class Schedule:
    """Initial pruning rates (percent of rows), regeneration base percentiles, range shrink."""

    conv_rate: float = 0.5
    fc_rate: float = 2.0
    conv_q: float = 65.0
    fc_q: float = 60.0
    shrink: float = 0.75

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v, shrink = getattr(self, f.name), f.name == "shrink"
            ok = not isinstance(v, bool) and isinstance(v, (int, float)) and (
                0 < v <= 1 if shrink else 0 <= v <= 100)
            if not ok:
                span = "(0, 1]" if shrink else "[0, 100]"
                raise ValueError(f"schedule.{f.name} must be a number in {span}, got {v!r}")
            object.__setattr__(self, f.name, float(v))


class Spines(Mask):
    """W ↦ W ⊙ M in the forward, dense gradient in the backward; holds the layer's spine state."""

    def __init__(self, weight: torch.Tensor, rate: float) -> None:
        super().__init__(torch.ones_like(weight))
        dev = weight.device
        for name in ("r_pos", "r_neg", "w_prev", "sum_pos", "sum_neg"):
            self.register_buffer(name, torch.zeros_like(weight))
        for name in ("cnt_pos", "cnt_neg", "cnt_in"):
            self.register_buffer(name, torch.zeros_like(weight, dtype=torch.long))
        for name in ("prev_pos", "prev_neg", "prev_in"):
            self.register_buffer(name, torch.zeros_like(weight, dtype=torch.bool))
        units = weight.shape[:2]  # conv kernels [O, I] / fc weights [O, I]
        self.register_buffer("gro_cnt", torch.zeros(units, dtype=torch.long, device=dev))
        self.register_buffer("gro_prev", torch.zeros(units, dtype=torch.bool, device=dev))
        self.register_buffer("pruned", torch.zeros(weight.shape[0], dtype=torch.bool, device=dev))
        self.register_buffer("rate", torch.tensor(float(rate), device=dev))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        m = self.mask.to(w.dtype)
        return w * m + (w - w.detach()) * (1 - m)  # value W ⊙ M, gradient 1 everywhere

    def alive(self) -> int:
        """Rows (neurons) with at least one active incoming weight."""
        return int((self.mask.flatten(1).sum(1) > 0).sum())


def unit_scale(x: torch.Tensor) -> torch.Tensor:
    """Min-max scaling of the whole tensor to [0, 1]; 0.5 everywhere when it is constant."""
    lo, hi = x.min(), x.max()
    return torch.full_like(x, 0.5) if hi == lo else ((x - lo) / (hi - lo)).clamp(0, 1)


def percentile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The q-th percentile of all elements, linear interpolation (numpy's default)."""
    s = x.flatten().sort().values
    pos = q / 100 * (s.numel() - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, s.numel() - 1)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


def unit_sums(w: torch.Tensor) -> torch.Tensor:
    """[O, I, *k] → [O, I] signed kernel sums (a Linear weight [O, I] is its own unit)."""
    return w.flatten(2).sum(-1) if w.dim() > 2 else w


def _streak_(cnt: torch.Tensor, prev: torch.Tensor, now: torch.Tensor) -> torch.Tensor:
    """+1 where ``now`` holds at this and the previous check, else 0; returns those positions."""
    pairs = now & prev
    cnt.copy_(torch.where(pairs, cnt + 1, torch.zeros_like(cnt)))
    prev.copy_(now)
    return pairs


@torch.no_grad()
def init_ranges_(s: Spines, w: torch.Tensor) -> None:
    """r± = ±max(W) of the layer, |W| remembered for the first shrink check."""
    top = w.max()
    s.r_pos.fill_(top)
    s.r_neg.fill_(-top)
    s.w_prev.copy_(w.abs())


@torch.no_grad()
def update_ranges_(s: Spines, w: torch.Tensor, count_thre: int, shrink: float) -> None:
    """One range check of every weight ``w`` (= W ⊙ M); see the module docstring."""
    sides = ((s.r_pos, s.sum_pos, s.cnt_pos, s.prev_pos, w >= s.r_pos),
             (s.r_neg, s.sum_neg, s.cnt_neg, s.prev_neg, w <= s.r_neg))
    for r, total, cnt, prev, out in sides:
        pairs = _streak_(cnt, prev, out)
        total.copy_(torch.where(pairs, total + (w - r), torch.zeros_like(total)))
        hit = cnt >= count_thre
        r.add_(torch.where(hit, total / count_thre, torch.zeros_like(r)))
        cnt.masked_fill_(hit, 0)
        total.masked_fill_(hit, 0.0)
    mag = w.abs()
    _streak_(s.cnt_in, s.prev_in, mag < s.w_prev)
    hit = s.cnt_in >= count_thre
    s.r_pos.copy_(torch.where(hit, s.r_pos * shrink, s.r_pos))
    s.r_neg.copy_(torch.where(hit, s.r_neg * shrink, s.r_neg))
    s.cnt_in.masked_fill_(hit, 0)
    s.w_prev.copy_(mag)


@torch.no_grad()
def regenerate_(s: Spines, w: torch.Tensor, q: float, count_thre: int) -> int:
    """Unmask the fully masked units (kernels / weights) whose sum stayed above the layer's q-th
    percentile for more than ``count_thre`` consecutive checks; returns how many came back."""
    sums = unit_sums(w)
    cand = (sums > percentile(sums, q)) & (unit_sums(s.mask) == 0)
    _streak_(s.gro_cnt, s.gro_prev, cand)
    back = s.gro_cnt > count_thre
    s.mask.view(*back.shape, -1)[back] = 1  # [O, I, k] view of the mask
    s.gro_cnt.masked_fill_(back, 0)
    return int(back.sum())


def spine_row_scores(s: Spines) -> torch.Tensor:
    """[O]: Σ over each row (neuron) of unit(r+ + |r−|) ⊙ M, the code's neuron score."""
    return (unit_scale(s.r_pos + s.r_neg.abs()) * s.mask).flatten(1).sum(1)


@torch.no_grad()
def prune_rows_(s: Spines, n: int) -> int:
    """Mask the rows among the ``n`` lowest scores that were never pruned; returns how many."""
    score = spine_row_scores(s)
    lowest = torch.sort(score, stable=True).indices[: min(n, score.numel() - 1)]
    new = lowest[~s.pruned[lowest]]
    s.mask[new] = 0
    s.pruned[new] = True
    return int(new.numel())


@torch.no_grad()
def kill_rows_(s: Spines, w: torch.Tensor, rows: torch.Tensor) -> None:
    """Mask every incoming weight of ``rows`` (bool [O]) and zero their values ``w`` (the
    optimized tensor), as a pruning event does."""
    rows = rows.to(s.mask.device)
    s.mask[rows] = 0
    s.pruned[rows] = True
    w[rows.to(w.device)] = 0.0


def next_rate(fc: bool, rate: float, k: int, alive: int, rows: int, alive_next: int) -> float:
    """The adaptive pruning rate (percent) after event k = e − 2·count_thre − 1."""
    if not fc:
        return rate + math.exp(-k / CONV_TAU) * alive / max(alive_next, 1)
    a = FC_A0 * math.exp(-k) if k <= FC_SWITCH else FC_LATE
    return rate + a * FC_GAIN * alive / rows


def spines_of(module: nn.Module) -> Spines | None:
    """The Spines parametrization on ``module.weight``, or None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in module.parametrizations.weight if isinstance(p, Spines)), None)


def original_weight(m: nn.Module) -> torch.Tensor:
    """The optimized tensor under the Spines parametrization of ``m.weight``."""
    return m.parametrizations.weight.original
