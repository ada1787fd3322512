"""SD-SNN: adaptive structure development — dendritic-spine weight ranges, adaptive neuron pruning
and synapse regeneration (Han, Zhao, Zeng, Pan — arXiv 2211.12219; spec pruning.md §3.4).

From the paper (abstract): three mechanisms — a synaptic constraint from dendritic-spine
plasticity, neuron pruning, synapse regeneration — with pruning and regeneration rates adapted
during training (neurotrophic hypothesis). From the released code (BrainCog
``examples/Structural_Development/SD-SNN``), which we follow: after every epoch e (0-based),

    e = 0:      every weight gets a range r+ = max(W_l), r− = −max(W_l) (signed max of its layer)
    e >= 1:     range update. A streak counts checks at which a condition holds *at this and the
                previous check* (reset to 0 otherwise). w >= r+: streak and Σ(w − r+) over it; at
                streak >= count_thre: r+ += Σ / count_thre (the mean overshoot), streak and Σ reset.
                Same for w <= r− on the negative side. |w| < |w| of the previous check: at
                streak >= count_thre: r+ *= 0.75, r− *= 0.75 (``shrink``). The check sees W ⊙ M.
    e > ct:     constraint: every weight clipped into [r−, r+]                  (ct = count_thre)
    e > 2ct:    k = e − 2ct − 1. Regeneration, then pruning, layer by layer:
      regeneration: unit sums S (conv: the signed sum of each kernel W[o, i]; fc: the weight); a
                fully masked unit with S > percentile_q(S of the layer) is a candidate; a unit whose
                candidate streak exceeds ct comes back (mask 1, keeping its value); q = min(99,
                q0 + 1.1^k), q0 = 65 conv / 60 fc (``conv_q`` / ``fc_q``).
      pruning:  score_j = Σ_row j of unit(r+ + |r−|) ⊙ M, unit() the layer's min-max scaling
                (0.5 when constant); of the int(C·rate/100) lowest rows those never pruned
                before are masked; masked originals are zeroed. The rate (percent) then grows:
                conv: rate += exp(−k/5) · alive_l / alive_next         (start ``conv_rate`` 0.5)
                fc:   rate += a(k) · 51.2 · alive_l / rows_l,           (start ``fc_rate`` 2)
                      a(k) = 0.5·exp(−k) for k <= 23, else 0.0005
Defaults: count_thre = 18 ("spines_num"), every check once per epoch.

Our choices:
* Ambiguity (spec §3.4): the code calls the range update only for its fc layer, so conv ranges
  keep their initial value; every conv weight is then clipped to one fixed ±max and, the ranges
  being constant, unit() is 0.5 everywhere: the conv pruning score degenerates to the row's mask
  count and the pruned channels are picked by index. ``ranges="all"`` (default) follows the
  paper's description: every synapse of every pruned layer has its own developing range.
  ``ranges="fc"`` reproduces the code (ranges develop only in Linear layers; ties go to the lower
  index).
* Masks act in the forward (library rule, §1.4), not by zeroing weights once per epoch: a
  ``Spines`` parametrization (a ``masks.Mask``) gives W ⊙ M in the forward and the dense gradient
  ∂L/∂(W ⊙ M) to W in the backward (straight-through), so a masked weight never computes but
  keeps training "in the shadow" from 0 for one epoch, exactly the drift the code's regeneration
  measures (the code zeroes pruned weights every epoch and lets them drift in between).
* A neuron whose incoming weights are all masked is silent after BN: its BN β (and a producer
  bias) is gated to 0 (``channel_mask.ChannelGate``) and its running mean set to 0, so the BN
  output is exactly 0 in training and eval while γ stays open and the shadow gradient reaches
  the kernels (gating γ too would block regeneration). For residual-coupled groups a channel is
  dead, and gated, when it is dead in every producer.
* A neuron is alive when any incoming weight is active (the code counts rows with fewer than
  20 / 50 active weights as dead, numbers tied to its 1152- and 32768-input layers). The fc gain
  51.2 = 512 / 10 is the code's (512 − dead) / 10 for its 512-row fc1, per alive fraction. For
  the last pruned conv (no pruned layer after it) alive_next = alive_l. At most C − 1 rows per
  event. The read-out is never pruned (the code prunes convs and fc1 only).
* ``every`` > 0 replaces the epoch by that many optimizer steps (short runs and tests).
* finalize: channels dead in all their producers are removed physically (``surgery``), keeping one
  per group; the other masked weights stay zeros (kernel-level sparsity).
State (ranges, streaks, masks, rates) is held in buffers of the parametrizations installed at
attach, so checkpoints carry it and a killed run resumes exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.compress.method import Context
from spikecompress.compress.prune.channel_mask import ChannelGate, gate_of
from spikecompress.compress.prune.groups import channel_groups
from spikecompress.compress.prune.masks import Mask
from spikecompress.compress.prune.surgery import remove_channels_
from spikecompress.compress.targets import select

log = logging.getLogger("spikecompress.sdsnn")
RANGES = ("all", "fc")
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


@torch.no_grad()
def prune_rows_(s: Spines, n: int) -> int:
    """Mask the rows among the ``n`` lowest scores that were never pruned; returns how many."""
    score = (unit_scale(s.r_pos + s.r_neg.abs()) * s.mask).flatten(1).sum(1)  # [O]
    lowest = torch.sort(score, stable=True).indices[: min(n, score.numel() - 1)]
    new = lowest[~s.pruned[lowest]]
    s.mask[new] = 0
    s.pruned[new] = True
    return int(new.numel())


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


def _original(m: nn.Module) -> torch.Tensor:
    return m.parametrizations.weight.original  # the optimized tensor under Spines


@dataclass
class SDSNN:
    """Adaptive structure development: per-weight dendritic-spine ranges that constrain the
    weights, adaptive neuron pruning and synapse regeneration, checked once per epoch.

    ``count_thre`` (the code's ``spines_num``) is the streak length, in checks, of every rule;
    ``ranges`` "all" (paper) or "fc" (the released code) picks the layers whose ranges develop;
    ``every`` > 0 checks every that many optimizer steps instead of once per epoch; ``schedule``
    the initial rates, percentile bases and shrink factor (``Schedule``); ``include`` / ``exclude``
    restrict the pruned layers. See the module docstring for the rules and our choices.
    """

    NAME: ClassVar[str] = "sdsnn"
    PAPER: ClassVar[str] = "Han, Zhao, Zeng, Pan, arXiv 2211.12219 (Information Sciences 2025)"
    KIND: ClassVar[str] = "channels"

    count_thre: int = 18
    ranges: str = "all"
    every: int = 0
    schedule: dict = field(default_factory=dict)
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    targets_: list = field(default_factory=list, init=False, repr=False, compare=False)
    groups_: list = field(default_factory=list, init=False, repr=False, compare=False)
    removed_: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, low in (("count_thre", 1), ("every", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if self.ranges not in RANGES:
            raise ValueError(f"ranges must be one of {list(RANGES)}, got {self.ranges!r}")
        if not isinstance(self.schedule, dict):
            raise ValueError(f"schedule must be a mapping, got {self.schedule!r}")
        known = [f.name for f in dataclasses.fields(Schedule)]
        unknown = sorted(set(self.schedule) - set(known))
        if unknown:
            raise ValueError(f"schedule: unknown key(s) {unknown}; known: {known}")
        self.schedule = dataclasses.asdict(Schedule(**self.schedule))

    def attach(self, model: nn.Module, ctx: Context) -> None:
        """Install Spines on every selected producer and a β gate on every fully covered group."""
        groups = channel_groups(model)
        producers = {n for g in groups for n in g.producers}
        picked = [(n, m) for n, m in select(model, self.include, self.exclude) if n in producers]
        if not picked:
            raise ValueError("sdsnn: no selected layer is a prunable producer (the read-out is "
                             "never pruned)")
        sched = Schedule(**self.schedule)
        for _, m in picked:
            rate = sched.fc_rate if isinstance(m, nn.Linear) else sched.conv_rate
            parametrize.register_parametrization(m, "weight", Spines(m.weight.detach(), rate))
        self.targets_ = [m for _, m in picked]
        names, modules = {n for n, _ in picked}, dict(model.named_modules())
        self.groups_ = []
        for g in groups:
            if not set(g.producers) <= names:
                continue  # a producer outside the selection keeps the channels alive
            bns = [modules[b] for b in g.bns]
            owners = [o for o in bns + [modules[p] for p in g.producers]
                      if getattr(o, "bias", None) is not None]
            for o in owners:
                gate = ChannelGate(torch.ones(g.size, device=o.bias.device))
                parametrize.register_parametrization(o, "bias", gate)
            self.groups_.append((g, [modules[p] for p in g.producers], bns, owners))

    def after_step(self, model: nn.Module, ctx: Context) -> None:
        every = self.every or ctx.steps_per_epoch
        if not every:
            raise RuntimeError("sdsnn: checks run once per epoch; call session.bind(..., "
                               "steps_per_epoch=...) or set every")
        if ctx.step % every == 0:
            self.develop(ctx.step // every - 1)

    def develop(self, e: int) -> None:
        """The end-of-epoch rules after epoch ``e`` (0-based); see the module docstring."""
        ct, sched = self.count_thre, Schedule(**self.schedule)
        layers = [(m, spines_of(m)) for m in self.targets_]
        if e == 0:
            for m, s in layers:
                init_ranges_(s, _original(m))
            return
        for m, s in layers:
            if self.ranges == "all" or isinstance(m, nn.Linear):
                update_ranges_(s, _original(m) * s.mask, ct, sched.shrink)
        if e > ct:
            with torch.no_grad():
                for m, s in layers:
                    w = _original(m)
                    w.copy_(torch.maximum(torch.minimum(w, s.r_pos), s.r_neg))
        if e > 2 * ct:
            self._prune_and_regrow(layers, e - 2 * ct - 1, sched)
            self._gate()

    def _prune_and_regrow(self, layers: list, k: int, sched: Schedule) -> None:
        for m, s in layers:
            q0 = sched.fc_q if isinstance(m, nn.Linear) else sched.conv_q
            regenerate_(s, _original(m), min(Q_MAX, q0 + Q_BASE**k), self.count_thre)
        for i, (m, s) in enumerate(layers):
            rows = s.mask.shape[0]
            prune_rows_(s, int(rows * float(s.rate) / 100))
            with torch.no_grad():
                _original(m).mul_(s.mask)
            alive = s.alive()
            nxt = layers[i + 1][1].alive() if i + 1 < len(layers) else alive
            fc = isinstance(m, nn.Linear)
            s.rate.fill_(next_rate(fc, float(s.rate), k, alive, rows, nxt))

    def dead_channels(self) -> dict[str, torch.Tensor]:
        """{group name: [size] bool}: channels with every incoming weight masked, in every
        producer of the group."""
        out = {}
        for g, producers, _, _ in self.groups_:
            rows = [spines_of(p).mask.flatten(1).sum(1) == 0 for p in producers]  # [size] each
            out[g.name] = torch.stack(rows).all(0).cpu()
        return out

    @torch.no_grad()
    def _gate(self) -> None:
        """Gate β of dead channels; reset their BN running statistics when they die or revive."""
        dead = self.dead_channels()
        for g, _, bns, owners in self.groups_:
            d = dead[g.name]
            was = gate_of(owners[0], "bias").mask.cpu() == 0 if owners else torch.zeros_like(d)
            for o in owners:
                gate_of(o, "bias").mask.copy_((~d).float())
            revived = was & ~d
            for bn in bns:
                if getattr(bn, "running_mean", None) is not None:  # a dead channel's mean stays 0
                    dev = bn.running_mean.device
                    bn.running_mean[(d | revived).to(dev)] = 0.0
                    bn.running_var[revived.to(dev)] = 1.0

    def rates(self) -> list[float]:
        """The pruning rate (percent of rows) of every pruned layer, in model order."""
        return [float(spines_of(m).rate) for m in self.targets_]

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Bake masks and gates; remove channels dead in all their producers (one kept per
        group); the other masked weights stay zeros."""
        drop = {}
        for name, d in self.dead_channels().items():
            idx = d.nonzero().flatten().tolist()
            drop[name] = idx[1:] if len(idx) == d.numel() else idx
        for m in self.targets_:
            _unparametrize(m, "weight", Spines)
        for _, _, _, owners in self.groups_:
            for o in owners:
                _unparametrize(o, "bias", ChannelGate)
        drop = {k: v for k, v in drop.items() if v}
        before = sum(p.numel() for p in model.parameters())
        model = remove_channels_(model, drop) if drop else model
        after = sum(p.numel() for p in model.parameters())
        self.removed_ = {"channels": sum(len(v) for v in drop.values()), "params": before - after}
        log.info("sdsnn: removed %d channels (%s), params %d -> %d", self.removed_["channels"],
                 ", ".join(f"{k} {len(v)}" for k, v in drop.items()) or "none", before, after)
        self.targets_, self.groups_ = [], []
        return model


def _unparametrize(module: nn.Module, name: str, kind: type) -> None:
    """Bake ``module.name`` when its parametrizations are all of ``kind`` (ours); leave others'."""
    if parametrize.is_parametrized(module, name) and all(
            isinstance(p, kind) for p in module.parametrizations[name]):
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
