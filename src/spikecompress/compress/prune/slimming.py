"""Network slimming for SNNs: L1 on BN γ while training, one global |γ| threshold, channel removal.

The recipe is Liu et al., "Learning Efficient Convolutional Networks through Network Slimming"
(ICCV 2017), transplanted to SNNs as the survey describes it (specs/pruning.md §3.1). The SNN paper
the survey cites, Li, Fang, Gao, Zhou, Shen, Liu, Pan, Xu, "Efficient Structure Slimming for
Spiking Neural Networks" (IEEE TAI 2024), has no released code and we could read only its abstract
(neuron and channel pruning plus growth, applied iteratively): its exact criteria are **unknown**,
so this is *not* a re-implementation of Li et al., only of the transplanted Liu et al. recipe.

From Liu et al. (spec §3.1): the training loss gets λ·Σ|γ| over BN scale factors, whose
subgradient is λ·sign(γ) (λ ~ 1e-5 … 1e-4 with SGD; 1e-4 is the default here, but with Adam
over a short sparsity stage it barely moves γ: recipes/slimming.yaml uses 3e-3); one global
threshold, the percentile of |γ| over all prunable BN layers that removes the requested fraction
of channels; channels below it are physically removed (producer filters, BN entries, consumer
input slices); then fine-tuning (the recipe's next stage). In an SNN the BN sits between conv
and neuron, so γ scales each channel's input current. β is not penalised (as in Liu et al.): a
channel with γ ≈ 0 still feeds the neuron the constant β, so removal is not function-preserving
even at γ = 0; fine-tuning absorbs that.

Our choices:
* channels are the groups of ``groups.channel_groups`` (residual-coupled channels are one group,
  removed together); by default **every** group — conv groups and hidden fully-connected (BN1d)
  groups; the read-out layer is never one. ``include`` / ``exclude`` are regexes fully matched
  against group names (a group is named after its first producer, e.g. ``features.0.conv``).
  A group with no BN (or a BN without γ) has no scale factor: it is skipped, with a log line.
* the penalty covers every BN of each selected group (a residual group with k BNs has k penalised
  γ per channel); the channel's score is the **mean** |γ| over the group's BNs.
* the global threshold and the per-group floor are ``channel_select.keep_top``: keep the
  ⌊N·(1 − prune)⌋ highest scores over all N selected channels, but every group keeps at least
  max(1, ⌈floor·C⌉) of its own (so the removed fraction can fall short of ``prune``); ties go to
  the earlier group, then the lower index.
* the result is reported as channel and parameter ratios both: ``removed_ = {"channels":
  removed / selected channels, "params": removed / all model parameters, "threshold": the |γ|
  percentile}`` (logged too, with the new widths); the kept channels are ``masks_``
  ({group: {0, 1} [C]}); the physically smaller model is returned.
* all-ones channel gates (``channel_mask.gate_channels_``) are installed at attach, as for every
  "channels" method: they change nothing while training (the penalty acts on the gate's original
  γ) and are taken off by the removal.
* the group selection, validation, gating and remove-and-count helpers below are shared with
  ``l1_filter``.

    session = attach(model, [NetworkSlimming(penalty=1e-4, prune=0.5)])   # train, then finalize
    loss = task + 1e-4 * bn_l1_penalty(model, channel_groups(model))    # the term by itself
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.compress.method import Context, zero_loss
from spikecompress.compress.prune.channel_mask import gate_channels_
from spikecompress.compress.prune.channel_select import keep_top
from spikecompress.compress.prune.groups import (
    ChannelGroup,
    channel_groups,
    check_patterns,
    select_groups,
)
from spikecompress.compress.prune.surgery import remove_masked_

log = logging.getLogger("spikecompress.slimming")


def bn_gamma(bn: nn.Module) -> torch.Tensor:
    """The trainable γ of ``bn``: the original under a channel gate, else ``bn.weight``."""
    if parametrize.is_parametrized(bn, "weight"):
        return bn.parametrizations.weight.original
    return bn.weight


def bn_l1_penalty(model: nn.Module, groups: Sequence[ChannelGroup]) -> torch.Tensor:
    """Σ |γ| over every BN of ``groups`` (multiply by λ and add it to the loss)."""
    modules = dict(model.named_modules())
    terms = [bn_gamma(modules[n]).abs().sum() for g in groups for n in g.bns]
    if not terms:
        raise ValueError("bn_l1_penalty: the groups have no BatchNorm")
    return torch.stack(terms).sum()


def gamma_scores(model: nn.Module, groups: Sequence[ChannelGroup]) -> dict[str, torch.Tensor]:
    """{group: mean |γ| over its BNs, [C]} (detached, on the CPU)."""
    modules = dict(model.named_modules())
    out = {}
    for g in groups:
        gammas = [bn_gamma(modules[n]).detach().abs().float().cpu() for n in g.bns]
        out[g.name] = torch.stack(gammas).mean(0)  # [#BN, C] -> [C]
    return out


def check_fractions(prune: float, floor: float) -> None:
    """Raise ValueError unless prune ∈ [0, 1) and floor ∈ [0, 1]."""
    if isinstance(prune, bool) or not isinstance(prune, (int, float)) or not 0 <= prune < 1:
        raise ValueError(f"prune must be in [0, 1), got {prune!r}")
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor <= 1:
        raise ValueError(f"floor must be in [0, 1], got {floor!r}")


def install_gates_(model: nn.Module, groups: Sequence[ChannelGroup]) -> None:
    """All-ones channel gates on ``groups`` (in the state_dict from attach on, for resume)."""
    for g in groups:
        gate_channels_(model, g, torch.ones(g.size))


def remove_and_count_(
    model: nn.Module, masks: Mapping[str, torch.Tensor], who: str
) -> tuple[nn.Module, dict]:
    """Physically remove every channel whose mask is 0 (``surgery.remove_masked_``); returns the
    model and {"channels": removed fraction of the masked channels, "params": removed fraction
    of all the model's parameters}, also logged (with the new widths) under ``who``."""
    before = sum(p.numel() for p in model.parameters())
    total = sum(m.numel() for m in masks.values())
    dropped = sum(int((m == 0).sum()) for m in masks.values())
    model = remove_masked_(model, masks)
    after = sum(p.numel() for p in model.parameters())
    removed = {"channels": dropped / total, "params": 1.0 - after / before}
    widths = ", ".join(f"{n} {int(m.sum())}/{m.numel()}" for n, m in masks.items())
    logging.getLogger(f"spikecompress.{who}").info(
        "%s: removed %d of %d channels (%.1f%%), params %d -> %d (%.1f%% removed); %s",
        who, dropped, total, 100 * removed["channels"], before, after,
        100 * removed["params"], widths)
    return model, removed


@dataclass
class NetworkSlimming:
    """Sparsity training with λ·Σ|γ| on the BN scale factors of the selected channel groups, then
    removal of the fraction ``prune`` of their channels with the smallest |γ| (one global
    threshold, each group keeping at least a fraction ``floor``). See the module docstring."""

    NAME: ClassVar[str] = "slimming"
    PAPER: ClassVar[str] = ("Liu et al., ICCV 2017 (network slimming), as transplanted to SNNs; "
                            "Li et al., IEEE TAI 2024 (criteria unknown)")
    KIND: ClassVar[str] = "channels"

    penalty: float = 1e-4
    prune: float = 0.5
    floor: float = 0.1
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    groups_: list = field(default_factory=list, init=False, repr=False, compare=False)
    bns_: list = field(default_factory=list, init=False, repr=False, compare=False)
    masks_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    removed_: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.penalty, bool) or not isinstance(self.penalty, (int, float)) or (
                not 0 <= self.penalty < float("inf")):
            raise ValueError(f"penalty must be a finite number >= 0, got {self.penalty!r}")
        check_fractions(self.prune, self.floor)
        check_patterns(self.include, self.exclude)
        self.penalty, self.prune, self.floor = (
            float(self.penalty), float(self.prune), float(self.floor))

    def attach(self, model: nn.Module, ctx: Context) -> None:
        """Find the groups that have a γ, gate them (all ones) and cache their BNs."""
        picked = select_groups(channel_groups(model), self.include, self.exclude)
        modules = dict(model.named_modules())
        self.groups_ = [g for g in picked
                        if g.bns and all(getattr(modules[n], "weight", None) is not None
                                         for n in g.bns)]
        for g in picked:
            if g not in self.groups_:
                log.info("slimming: group %s has no BatchNorm γ; not pruned", g.name)
        if not self.groups_:
            raise ValueError("slimming: no selected channel group has a BatchNorm with γ")
        install_gates_(model, self.groups_)
        self.bns_ = [modules[n] for g in self.groups_ for n in g.bns]

    def loss(self, model: nn.Module, x_seq: torch.Tensor, out_seq: torch.Tensor,
             ctx: Context) -> torch.Tensor:
        """λ·Σ|γ| over the selected groups' BNs (its gradient on γ is λ·sign(γ))."""
        if self.penalty == 0:
            return zero_loss(out_seq)
        total = torch.stack([bn_gamma(bn).abs().sum() for bn in self.bns_]).sum()
        return self.penalty * total

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Threshold mean |γ| globally (with the floor) and remove the channels below it."""
        scores = gamma_scores(model, self.groups_)
        self.masks_ = keep_top(scores, keep=1.0 - self.prune, floor=self.floor)
        model, removed = remove_and_count_(model, self.masks_, "slimming")
        self.removed_ = {**removed, "threshold": _percentile(scores, 1.0 - self.prune)}
        return model


def _percentile(scores: Mapping[str, torch.Tensor], keep: float) -> float:
    """The smallest score among the ⌊N·keep⌋ best: channels below it are removed unless a floor
    keeps them."""
    flat = torch.cat([s.flatten() for s in scores.values()]).sort(descending=True).values
    k = max(1, int(len(flat) * keep + 1e-9))
    return float(flat[k - 1])
