"""SD-SNN: adaptive structure development — dendritic-spine weight ranges, adaptive neuron pruning
and synapse regeneration (Han, Zhao, Zeng, Pan — arXiv 2211.12219; Information Sciences
689:121481, 2025).

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
* Ambiguity: the code calls the range update only for its fc layer, so conv ranges
  keep their initial value; every conv weight is then clipped to one fixed ±max and, the ranges
  being constant, unit() is 0.5 everywhere: the conv pruning score degenerates to the row's mask
  count and the pruned channels are picked by index. ``ranges="all"`` (default) follows the
  paper's description: every synapse of every pruned layer has its own developing range.
  ``ranges="fc"`` reproduces the code (ranges develop only in Linear layers; ties go to the lower
  index).
* Masks act in the forward (the library's rule), not by zeroing weights once per epoch: a
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
* ``update_every`` > 0 replaces the epoch by that many optimizer steps (short runs and tests).
* finalize: channels dead in all their producers are removed physically (``surgery``), keeping one
  per group; the other masked weights stay zeros (kernel-level sparsity).

The paper's knobs are indirect: ``count_thre`` (and the initial rates of ``schedule``) set when
pruning starts and, through the adaptive rates, how much goes; a stage of fewer than
2·count_thre + 1 checks prunes nothing at all. So the default is the target instead:
``channel_sparsity``, the fraction of the pruned groups' channels (the groups all of whose
producers are selected) removed at finalize. In this target mode the spines develop by the same
rules on the same clock (a check per epoch, or every ``update_every`` steps), with ranges
initialised at attach from the weights the stage starts from (a trained model, usually) and
streaks of TARGET_COUNT_THRE checks; the neuron pruning of the adaptive rates is replaced by the
channel driver (``channel_pruning``): the channels with the lowest spine score (the code's
score_j above, summed over a group's producers; divided by the group's mean for ``scope``
"global", as a row sums over its fan-in) die along a cubic ramp from progress ``begin`` to
``until``, the same fraction of every group by default (``scope="layer"``, each keeping at least
``floor``), so the rest of the stage fine-tunes without them; regeneration runs from check
2·streak + 1 on (a regenerated kernel revives its channel, and the driver kills the then
lowest-scored one); finalize tops the dead channels up to the target and removes them.
Measured: the spine score needs epochs to develop. Over a stage of a few epochs every channel
scores the same and the lowest indices go (as in the released code's conv layers, whose ranges
never develop); checking every step instead (streaks of 5 steps) made the fine-tune 1–5 points
worse over four dense seeds on a digits CNN (30 % of the channels, 2 epochs: 0.919–0.978 vs
0.969–0.983), as a few steps of consistent change mark the weights that are learning, not the
weak ones. Setting ``channel_sparsity`` with ``count_thre`` or ``schedule`` is an error; either
paper knob alone is the paper mode (``count_thre`` 18 unless given).

State (ranges, streaks, masks, rates) is held in buffers of the parametrizations installed at
attach, so checkpoints carry it and a killed run resumes exactly.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.compress.method import Context
from spikecompress.compress.prune.channel_mask import ChannelGate, channel_dim, gate_of
from spikecompress.compress.prune.channel_pruning import (
    ChannelDriver,
    check_fraction,
    check_window,
    remove_and_record_,
    resolve_target,
)
from spikecompress.compress.prune.channel_select import SCOPES, mean_normalised
from spikecompress.compress.prune.groups import ChannelGroup, channel_groups
from spikecompress.compress.prune.spines import (
    Q_BASE,
    Q_MAX,
    Schedule,
    Spines,
    init_ranges_,
    kill_rows_,
    next_rate,
    original_weight,
    prune_rows_,
    regenerate_,
    spine_row_scores,
    spines_of,
    update_ranges_,
)
from spikecompress.compress.targets import select

__all__ = ["SDSNN", "spines_of"]

log = logging.getLogger("spikecompress.sdsnn")
RANGES = ("all", "fc")
DEFAULT_TARGET = 0.3  # channel_sparsity when no paper knob is given
PAPER_COUNT_THRE = 18  # the code's spines_num
TARGET_COUNT_THRE = 2  # streak length (checks) in target mode


@dataclass
class SDSNN:
    """Adaptive structure development: per-weight dendritic-spine ranges that constrain the
    weights, neuron pruning and synapse regeneration, checked once per epoch.

    ``channel_sparsity`` (target mode, the default) is the fraction of the pruned groups'
    channels removed; ``count_thre`` (the code's ``spines_num``, the streak length in checks of
    every rule) and ``schedule`` (initial rates, percentile bases, shrink: ``Schedule``) are the
    paper's knobs (paper mode), not to be combined with it. ``ranges`` "all" (paper) or "fc" (the
    released code) picks the layers whose ranges develop; ``update_every`` > 0 checks every that
    many optimizer steps instead; ``scope``, ``floor``, ``begin``, ``until`` shape the target
    mode's pruning (the channel driver); ``include`` / ``exclude`` restrict the pruned layers.
    See the module docstring for the rules and our choices.
    Distributed: ranges, streaks, masks and rates are functions of the weights at the checks (the BN
    running statistics it resets are the loop's to synchronise): they agree by themselves under DDP.
    """

    NAME: ClassVar[str] = "sdsnn"
    PAPER: ClassVar[str] = "Han, Zhao, Zeng, Pan, arXiv 2211.12219 (Information Sciences 2025)"
    KIND: ClassVar[str] = "channels"

    channel_sparsity: float | None = None
    count_thre: int | None = None
    ranges: str = "all"
    update_every: int = 0
    schedule: dict | None = None
    scope: str = "layer"
    floor: float = 0.1
    begin: float = 0.0
    until: float = 0.5
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    targets_: list = field(default_factory=list, init=False, repr=False, compare=False)
    groups_: list = field(default_factory=list, init=False, repr=False, compare=False)
    driver_: ChannelDriver | None = field(default=None, init=False, repr=False, compare=False)
    removed_: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.channel_sparsity = resolve_target(
            self.channel_sparsity, {"count_thre": self.count_thre, "schedule": self.schedule},
            DEFAULT_TARGET)
        if self.channel_sparsity is None and self.count_thre is None:
            self.count_thre = PAPER_COUNT_THRE
        for name, low in (("count_thre", 1), ("update_every", 0)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if self.ranges not in RANGES:
            raise ValueError(f"ranges must be one of {list(RANGES)}, got {self.ranges!r}")
        if self.schedule is not None:
            if not isinstance(self.schedule, dict):
                raise ValueError(f"schedule must be a mapping, got {self.schedule!r}")
            known = [f.name for f in dataclasses.fields(Schedule)]
            unknown = sorted(set(self.schedule) - set(known))
            if unknown:
                raise ValueError(f"schedule: unknown key(s) {unknown}; known: {known}")
            self.schedule = dataclasses.asdict(Schedule(**self.schedule))
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {list(SCOPES)}, got {self.scope!r}")
        self.floor = check_fraction("floor", self.floor, closed=True)
        self.begin, self.until = check_window(self.begin, self.until)

    @property
    def paper_mode(self) -> bool:
        return self.channel_sparsity is None

    @property
    def streak(self) -> int:
        """The streak length of every rule: ``count_thre``, or TARGET_COUNT_THRE."""
        return self.count_thre if self.count_thre is not None else TARGET_COUNT_THRE

    def _producers(self, model: nn.Module) -> tuple[list, list[ChannelGroup]]:
        """The selected producers [(name, module)] and all the model's channel groups."""
        groups = channel_groups(model)
        producers = {n for g in groups for n in g.producers}
        picked = [(n, m) for n, m in select(model, self.include, self.exclude) if n in producers]
        if not picked:
            raise ValueError("sdsnn: no selected layer is a prunable producer (the read-out is "
                             "never pruned)")
        return picked, groups

    def select(self, model: nn.Module) -> list[ChannelGroup]:
        """The groups whose channels this method can remove: those all of whose producers are
        selected (another producer keeps the channels alive)."""
        picked, groups = self._producers(model)
        return _covered(picked, groups)

    def attach(self, model: nn.Module, ctx: Context) -> None:
        """Install Spines on every selected producer and a β gate on every fully covered group."""
        picked, groups = self._producers(model)
        sched = Schedule(**(self.schedule or {}))
        for _, m in picked:
            rate = sched.fc_rate if isinstance(m, nn.Linear) else sched.conv_rate
            parametrize.register_parametrization(m, "weight", Spines(m.weight.detach(), rate))
        self.targets_ = [m for _, m in picked]
        modules = dict(model.named_modules())
        self.groups_ = []
        for g in _covered(picked, groups):
            bns = [modules[b] for b in g.bns]
            owners = [o for o in bns + [modules[p] for p in g.producers]
                      if getattr(o, "bias", None) is not None]
            for o in owners:
                gate = ChannelGate(torch.ones(g.size, device=o.bias.device))
                parametrize.register_parametrization(o, "bias", gate)
            self.groups_.append((g, [modules[p] for p in g.producers], bns, owners))
        if not self.paper_mode:
            self._attach_driver()

    def _attach_driver(self) -> None:
        """Target mode: ranges from the trained weights now, the driver over the groups."""
        for m in self.targets_:
            init_ranges_(spines_of(m), original_weight(m))
        self.driver_ = ChannelDriver(self.channel_sparsity, self.scope, self.floor, self.begin,
                                     self.until, [g for g, *_ in self.groups_],
                                     read=self._alive, write=self._kill_)

    def after_step(self, model: nn.Module, ctx: Context) -> None:
        every = self.update_every or ctx.steps_per_epoch
        if not every:
            raise RuntimeError("sdsnn: checks run once per epoch; call session.bind(..., "
                               "steps_per_epoch=...) or set update_every")
        if ctx.step % every == 0:
            e = ctx.step // every - 1
            self.develop(e) if self.paper_mode else self.develop_to_target(e + 1)
        if not self.paper_mode:
            self.driver_.step_(model, ctx.progress, self.spine_scores)

    def develop(self, e: int) -> None:
        """The end-of-epoch rules after epoch ``e`` (0-based), paper mode; module docstring."""
        ct, sched = self.streak, Schedule(**(self.schedule or {}))
        layers = [(m, spines_of(m)) for m in self.targets_]
        if e == 0:
            for m, s in layers:
                init_ranges_(s, original_weight(m))
            return
        self._ranges_and_constraint(layers, e, sched)
        if e > 2 * ct:
            self._prune_and_regrow(layers, e - 2 * ct - 1, sched)
            self._gate()

    def develop_to_target(self, e: int) -> None:
        """Check ``e`` (from 1; ranges were set at attach) in target mode: ranges, constraint
        and regeneration as the paper's (regeneration from check 2·streak + 1 on); the driver
        prunes."""
        ct, sched = self.streak, Schedule()
        layers = [(m, spines_of(m)) for m in self.targets_]
        self._ranges_and_constraint(layers, e, sched)
        if e > 2 * ct:
            self._regenerate(layers, e - 2 * ct - 1, sched)
            self._gate()

    def _ranges_and_constraint(self, layers: list, e: int, sched: Schedule) -> None:
        for m, s in layers:
            if self.ranges == "all" or isinstance(m, nn.Linear):
                update_ranges_(s, original_weight(m) * s.mask, self.streak, sched.shrink)
        if e > self.streak:
            with torch.no_grad():
                for m, s in layers:
                    w = original_weight(m)
                    w.copy_(torch.maximum(torch.minimum(w, s.r_pos), s.r_neg))

    def _regenerate(self, layers: list, k: int, sched: Schedule) -> None:
        for m, s in layers:
            q0 = sched.fc_q if isinstance(m, nn.Linear) else sched.conv_q
            regenerate_(s, original_weight(m), min(Q_MAX, q0 + Q_BASE**k), self.streak)

    def _prune_and_regrow(self, layers: list, k: int, sched: Schedule) -> None:
        self._regenerate(layers, k, sched)
        for i, (m, s) in enumerate(layers):
            rows = s.mask.shape[0]
            prune_rows_(s, int(rows * float(s.rate) / 100))
            with torch.no_grad():
                original_weight(m).mul_(s.mask)
            alive = s.alive()
            nxt = layers[i + 1][1].alive() if i + 1 < len(layers) else alive
            fc = isinstance(m, nn.Linear)
            s.rate.fill_(next_rate(fc, float(s.rate), k, alive, rows, nxt))

    # -- the target mode's scorer and the driver's view of the channels --------------------------
    def spine_scores(self, model: nn.Module,
                     groups: list[ChannelGroup]) -> dict[str, torch.Tensor]:
        """The SD-SNN scorer: {group: Σ over its producers of the code's neuron score
        Σ_row unit(r+ + |r−|) ⊙ M, [C]} (CPU)."""
        producers = {g.name: p for g, p, _, _ in self.groups_}
        scores = {g.name: sum(spine_row_scores(spines_of(p)).detach().double().cpu()
                              for p in producers[g.name]) for g in groups}
        # a row sums over its fan-in: only group-normalised scores compare across layers
        return mean_normalised(scores) if self.scope == "global" else scores

    def _alive(self, model: nn.Module, groups: list[ChannelGroup]) -> dict[str, torch.Tensor]:
        return {n: (~d).float() for n, d in self.dead_channels().items()}

    def _kill_(self, model: nn.Module, groups: list[ChannelGroup], masks: dict) -> None:
        """Mask every incoming weight of the channels whose mask is 0 in all their producers,
        then gate β of the dead ones."""
        for g, producers, _, _ in self.groups_:
            rows = masks[g.name] == 0
            for p in producers:
                kill_rows_(spines_of(p), original_weight(p), rows)
        self._gate()

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
                    dev, lead = bn.running_mean.device, (slice(None),) * channel_dim(bn)
                    bn.running_mean[(*lead, (d | revived).to(dev))] = 0.0  # BNTT: every step
                    bn.running_var[(*lead, revived.to(dev))] = 1.0

    def rates(self) -> list[float]:
        """The pruning rate (percent of rows) of every pruned layer, in model order."""
        return [float(spines_of(m).rate) for m in self.targets_]

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Target mode: top the dead channels up to ``channel_sparsity``. Then bake masks and
        gates and remove the channels dead in all their producers (one kept per group); the
        other masked weights stay zeros."""
        if not self.paper_mode and self.groups_:
            self.driver_.prune_to_(model, self.channel_sparsity, self.spine_scores)
        masks = {}
        for name, d in self.dead_channels().items():
            if bool(d.all()):
                d = d.clone()
                d[0] = False  # surgery keeps one channel per group
            masks[name] = (~d).float()
        for m in self.targets_:
            _unparametrize(m, "weight", Spines)
        model, self.removed_ = remove_and_record_(model, masks, "sdsnn")
        self.targets_, self.groups_, self.driver_ = [], [], None
        return model


def _covered(picked: list, groups: list[ChannelGroup]) -> list[ChannelGroup]:
    """The groups all of whose producers are among the ``picked`` (name, module) pairs."""
    names = {n for n, _ in picked}
    return [g for g in groups if set(g.producers) <= names]


def _unparametrize(module: nn.Module, name: str, kind: type) -> None:
    """Bake ``module.name`` when its parametrizations are all of ``kind`` (ours); leave others'."""
    if parametrize.is_parametrized(module, name) and all(
            isinstance(p, kind) for p in module.parametrizations[name]):
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
