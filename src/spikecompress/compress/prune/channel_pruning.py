"""The channel driver: what every channel-pruning method shares, whatever its scorer.

Torch-Pruning separates an *importance* (a score per channel) from one *pruner* that turns a
target into keep counts and removes channels (Fang, Ma, Song, Mi, Wang, "DepGraph: Towards Any
Structural Pruning", CVPR 2023). Here the scorers are pure functions model/groups (+ statistics)
→ {group: [C]} in the method files (|γ| in ``slimming``, filter L1 in ``l1_filter``, spike +
|membrane| activity in ``sca``, dendritic-spine ranges in ``sdsnn``); this driver owns the rest:

* which groups (``groups.channel_groups`` + ``include`` / ``exclude`` regexes + the method's own
  condition, e.g. "has a BN γ");
* the target: ``channel_sparsity`` is the fraction of the selected groups' channels removed,
  counted over ``channel_groups`` before vs after finalize; ``scope`` "layer" or "global" and a
  per-group ``floor`` turn it into keep counts (``channel_select``);
* gating while training: the chosen channels are switched off after BN (``channel_mask``: γ and β
  gated together, so a gated channel is exactly 0 downstream) following Zhu & Gupta's cubic ramp
  (ICLR-W 2018) from 0 at progress ``begin`` to the target at ``until``, so the rest of the stage
  fine-tunes the network without them; a gated channel stays gated (monotone, as Torch-Pruning's
  iterative pruner, which removes them at every step);
* removal at finalize (``surgery.remove_masked_``), topped up to the target first when the stage
  stopped before ``until`` (or has no steps: one-shot), and the record of what was removed.

    driver = ChannelDriver(channel_sparsity=0.3, scope="layer", floor=0.1)
    driver.attach_(model, select_channel_groups(model, include, exclude, who="l1_filter"))
    driver.step_(model, progress, scorer)              # after every optimizer step
    model, masks, record = driver.finalize_(model, scorer, "l1_filter")

Slimming and L1-filter are a scorer over ``ChannelDriver``. SCA keeps its own keep-α + regrow-β
update (its paper's dynamics) and takes the selection, the target's rounding, the gates and the
removal from here; SD-SNN's target mode runs ``ChannelDriver`` with its own ``read`` / ``write``
(a channel is off when all its incoming weights are masked, so that regeneration can revive it).

The driver keeps no state of its own beyond the chosen groups (found again at attach): the masks
are the gates' buffers, in the model's state_dict, so a killed run resumes exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from spikecompress.compress.prune.channel_mask import channel_mask, gate_channels_
from spikecompress.compress.prune.channel_select import (
    SCOPES,
    choose_masks,
    floor_count,
    layer_prune_counts,
    prune_count,
    pruned_fraction,
)
from spikecompress.compress.prune.groups import ChannelGroup, channel_groups, select_groups
from spikecompress.compress.prune.surgery import remove_masked_

Scorer = Callable[[nn.Module, Sequence[ChannelGroup]], dict[str, torch.Tensor]]


def check_fraction(name: str, value: object, closed: bool = False) -> float:
    """``value`` as a float in [0, 1) (``closed``: [0, 1]); ValueError naming ``name``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and (
        0 <= value <= 1 if closed else 0 <= value < 1)
    if not ok:
        raise ValueError(f"{name} must be a number in [0, 1{']' if closed else ')'}, "
                         f"got {value!r}")
    return float(value)


def resolve_target(
    channel_sparsity: float | None, paper: Mapping[str, object], default: float
) -> float | None:
    """The knob pattern of every channel method with an indirect paper knob: neither set → the
    ``default`` target; only a paper knob (``paper``: name → value, None = unset) → None (the
    paper's behaviour); only ``channel_sparsity`` → it; both → ValueError naming both."""
    given = [k for k, v in paper.items() if v is not None]
    if channel_sparsity is not None and given:
        raise ValueError(f"channel_sparsity and {given[0]} are both set: give the target "
                         f"(channel_sparsity) or the paper's knob ({given[0]}), not both")
    if given:
        return None
    return check_fraction("channel_sparsity",
                          default if channel_sparsity is None else channel_sparsity)


def check_window(begin: object, until: object) -> tuple[float, float]:
    """``begin``, ``until`` as floats with 0 <= begin <= until <= 1; ValueError naming them."""
    b, u = check_fraction("begin", begin, closed=True), check_fraction("until", until, closed=True)
    if b > u:
        raise ValueError(f"begin must be <= until, got begin={b}, until={u}")
    return b, u


def ramp(progress: float, target: float, begin: float, until: float) -> float:
    """The gated fraction at ``progress``: 0 before ``begin``, ``target`` from ``until`` on, Zhu &
    Gupta's cubic in between: target·(1 − (1 − (p − begin)/(until − begin))³)."""
    if progress >= until:
        return target
    if progress < begin:
        return 0.0
    return target * (1 - (1 - (progress - begin) / (until - begin)) ** 3)


def select_channel_groups(
    model: nn.Module,
    include: Sequence[str],
    exclude: Sequence[str],
    usable: Callable[[ChannelGroup], str | None] | None = None,
    who: str = "channels",
    required: bool = True,
) -> list[ChannelGroup]:
    """The groups of ``channel_groups(model)`` that ``include`` / ``exclude`` select and that
    ``usable`` accepts (it returns None, or why not: logged, the group is skipped); ValueError
    when none is left, unless not ``required``."""
    picked = select_groups(channel_groups(model), include, exclude, required)
    out = []
    for g in picked:
        why = usable(g) if usable is not None else None
        if why is None:
            out.append(g)
        else:
            logging.getLogger(f"spikecompress.{who}").info("%s: group %s %s; not pruned",
                                                           who, g.name, why)
    if not out and required:
        raise ValueError(f"{who}: no selected channel group can be pruned "
                         f"(groups: {[g.name for g in picked]})")
    return out


def gated_masks(model: nn.Module, groups: Sequence[ChannelGroup]) -> dict[str, torch.Tensor]:
    """{group: its gate's current {0, 1} mask [C]} (all ones for an ungated group)."""
    return {g.name: channel_mask(model, g) for g in groups}


def gate_(model: nn.Module, groups: Sequence[ChannelGroup],
          masks: Mapping[str, torch.Tensor]) -> None:
    """Set every group's gate to ``masks[group]`` (installing it when missing)."""
    for g in groups:
        gate_channels_(model, g, masks[g.name])


def remove_and_record_(
    model: nn.Module, masks: Mapping[str, torch.Tensor], who: str
) -> tuple[nn.Module, dict]:
    """Take the gates off and remove every channel whose mask is 0 (``surgery.remove_masked_``);
    returns the model and the record {"channels": removed fraction of the masked groups'
    channels, "params": removed fraction of all parameters, "widths": {group: [before, after]}},
    also logged under ``who``."""
    before = sum(p.numel() for p in model.parameters())
    model = remove_masked_(model, masks)
    after = sum(p.numel() for p in model.parameters())
    widths = {n: [m.numel(), int(m.sum())] for n, m in masks.items()}
    record = {"channels": pruned_fraction(masks), "params": 1.0 - after / before,
              "widths": widths}
    total = sum(m.numel() for m in masks.values())
    logging.getLogger(f"spikecompress.{who}").info(
        "%s: removed %d of %d channels (%.1f%%), params %d -> %d (%.1f%% removed); %s",
        who, round(record["channels"] * total), total, 100 * record["channels"], before, after,
        100 * record["params"], ", ".join(f"{n} {b}->{a}" for n, (b, a) in widths.items()))
    return model, record


@dataclass
class ChannelDriver:
    """Select groups, gate the lowest-scored channels along a ramp, remove them at finalize (the
    module docstring). ``groups`` is filled by ``attach_``. ``read`` / ``write`` get and set the
    groups' {0, 1} masks in the model: the gates after BN by default; a method whose channels
    are switched off another way (SD-SNN: dead incoming weights) passes its own."""

    channel_sparsity: float
    scope: str = "global"
    floor: float = 0.0
    begin: float = 0.0
    until: float = 0.5
    groups: list[ChannelGroup] = field(default_factory=list)
    read: Callable[[nn.Module, Sequence[ChannelGroup]], dict[str, torch.Tensor]] = gated_masks
    write: Callable[[nn.Module, Sequence[ChannelGroup], Mapping[str, torch.Tensor]], None] = gate_

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {list(SCOPES)}, got {self.scope!r}")

    def attach_(self, model: nn.Module, groups: Sequence[ChannelGroup]) -> None:
        """Drive ``groups`` (from ``select_channel_groups``) and install all-ones gates on them
        (nothing changes yet; the gates are in the state_dict from now on, for resume)."""
        self.groups = list(groups)
        gate_(model, self.groups, {g.name: torch.ones(g.size) for g in self.groups})

    def due(self, masks: Mapping[str, torch.Tensor], sparsity: float) -> bool:
        """Whether ``masks`` prune fewer channels than ``sparsity`` asks (overall, or in some
        group for ``scope="layer"``)."""
        pruned = {n: int((m == 0).sum()) for n, m in masks.items()}
        if self.scope == "global":  # as many as the target asks and the floors allow
            total = sum(m.numel() for m in masks.values())
            room = sum(m.numel() - floor_count(m.numel(), self.floor) for m in masks.values())
            return sum(pruned.values()) < min(prune_count(total, sparsity), room)
        want = layer_prune_counts({n: m.numel() for n, m in masks.items()}, sparsity, self.floor)
        return any(pruned[n] < want[n] for n in masks)

    def prune_to_(self, model: nn.Module, sparsity: float, scorer: Scorer) -> dict:
        """Gate channels until ``sparsity`` of them are off; the gated ones stay off (scored
        -inf) and ``scorer`` ranks the others. Returns the masks. (With ``scope="layer"`` a
        group's rounded share can drop by one as the total grows — the Alabama paradox of
        largest remainders — and one of its gated channels then comes back.)"""
        masks = self.read(model, self.groups)
        if not self.due(masks, sparsity):
            return masks
        scores = scorer(model, self.groups)
        ranked = {n: torch.where(masks[n] > 0, scores[n].detach().double().cpu(), -math.inf)
                  for n in masks}
        masks = choose_masks(ranked, sparsity, self.scope, self.floor)
        self.write(model, self.groups, masks)
        return masks

    def step_(self, model: nn.Module, progress: float, scorer: Scorer) -> None:
        """Gate up to the ramp's fraction at ``progress`` (the scorer runs only when a channel
        has to go)."""
        self.prune_to_(model, ramp(progress, self.channel_sparsity, self.begin, self.until),
                       scorer)

    def finalize_(self, model: nn.Module, scorer: Scorer,
                  who: str) -> tuple[nn.Module, dict[str, torch.Tensor], dict]:
        """Top up to the full target, then remove the gated channels; returns the model, the
        masks removed by and the record (``remove_and_record_``)."""
        masks = self.prune_to_(model, self.channel_sparsity, scorer)
        model, record = remove_and_record_(model, masks, who)
        return model, masks, record
