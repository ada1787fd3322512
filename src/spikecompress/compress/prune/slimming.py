"""Network slimming for SNNs: L1 on BN γ while training, the lowest-|γ| channels gated, removed.

The recipe is Liu et al., "Learning Efficient Convolutional Networks through Network Slimming"
(ICCV 2017), transplanted to SNNs as the survey describes it. The SNN paper the survey cites,
Li, Fang, Gao, Zhou, Shen, Liu, Pan, Xu, "Efficient Structure Slimming for Spiking Neural
Networks" (IEEE TAI 2024), has no released code and we could read only its abstract (neuron and
channel pruning plus growth, applied iteratively): its exact criteria are **unknown**, so this is
*not* a re-implementation of Li et al., only of the transplanted Liu et al. recipe.

From Liu et al.: the training loss gets λ·Σ|γ| over BN scale factors, whose subgradient is
λ·sign(γ) (λ ~ 1e-5 … 1e-4 with SGD; 1e-4 is the default here, but with Adam over a short
sparsity stage it barely moves γ: recipes/slimming.yaml uses 3e-3); one global threshold, the
percentile of |γ| over all prunable BN layers that removes the requested fraction of channels;
channels below it are physically removed (producer filters, BN entries, consumer input slices);
then fine-tuning. In an SNN the BN sits between conv and neuron, so γ scales each channel's input
current. β is not penalised (as in Liu et al.).

The scorer is ``gamma_scores`` (mean |γ| over a group's BNs); selection, the target, gating and
removal are the channel driver's (``channel_pruning``). A BNTT (``snn.BNTT``, one BN per time
step) counts as one BN per step: its channel's score is the mean |γ| over the steps, and the
penalty covers every step's γ. Our choices:

* channels are the groups of ``groups.channel_groups`` (residual-coupled channels are one group,
  removed together); by default **every** group with a BN γ — conv groups and hidden
  fully-connected (BN1d) groups; the read-out layer is never one. ``include`` / ``exclude`` are
  regexes fully matched against group names (a group is named after its first producer, e.g.
  ``features.0.conv``). A group with no BN (or a BN without γ) has no scale factor: it is
  skipped, with a log line.
* the penalty covers every BN of each selected group (a residual group with k BNs has k penalised
  γ per channel); the channel's score is the **mean** |γ| over the group's BNs.
* ``channel_sparsity`` is the fraction of the selected channels removed. Liu et al. use one
  global |γ| threshold (``scope="global"``); the default is ``"layer"``, the same fraction of
  every group, because the |γ| scales of the layers of a trained SNN differ and a short sparsity
  stage does not equalise them: on a trained digits CNN (30 % of the channels, 2 epochs) the
  global threshold cut the second layer to 5 of 32 channels (accuracy 0.936 vs 0.967 per
  layer). Each group keeps at least a fraction ``floor``; ties go to the earlier group, then
  the lower index.
* instead of removing everything at the end of the sparsity stage (Liu et al. then fine-tune in
  a separate run), the lowest-|γ| channels are gated off (γ and β) along a cubic ramp from
  progress ``begin`` to ``until``, so the rest of the stage fine-tunes without them; finalize
  removes them. ``begin = until = 1`` is Liu et al.'s order: prune at the last step, fine-tune in
  the next stage. A gated channel's γ keeps its penalty (it only shrinks further).
* the record ``removed_ = {"channels", "params", "widths", "threshold"}``: removed fractions of
  the selected channels and of all parameters, the widths before/after, and the |γ| that a
  global threshold would put at the kept count (the one used when ``scope="global"``).

    session = attach(model, [NetworkSlimming(penalty=1e-4, channel_sparsity=0.3)])
    loss = task + 1e-4 * bn_l1_penalty(model, channel_groups(model))    # the term by itself
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.compress.method import Context, zero_loss
from spikecompress.compress.prune.channel_mask import channel_rows
from spikecompress.compress.prune.channel_pruning import (
    ChannelDriver,
    check_fraction,
    check_window,
    select_channel_groups,
)
from spikecompress.compress.prune.channel_select import SCOPES
from spikecompress.compress.prune.groups import ChannelGroup, check_patterns


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
    """The slimming scorer: {group: mean |γ| over its BNs, [C]} (detached, on the CPU; each step
    of a BNTT counts as one BN)."""
    modules = dict(model.named_modules())
    out = {}
    for g in groups:
        gammas = [channel_rows(modules[n], bn_gamma(modules[n]).detach().abs().float().cpu())
                  for n in g.bns]
        out[g.name] = torch.cat(gammas).mean(0)  # [#BN (steps), C] -> [C]
    return out


def has_gamma(model: nn.Module):
    """The driver's ``usable`` test for slimming: None when every BN of the group has a γ."""
    modules = dict(model.named_modules())

    def usable(g: ChannelGroup) -> str | None:
        ok = g.bns and all(getattr(modules[n], "weight", None) is not None for n in g.bns)
        return None if ok else "has no BatchNorm γ"

    return usable


@dataclass
class NetworkSlimming:
    """Sparsity training with λ·Σ|γ| on the BN scale factors of the selected channel groups;
    the fraction ``channel_sparsity`` of their channels with the smallest |γ| is gated off from
    progress ``begin`` to ``until`` (the same fraction of every group by default, one global
    threshold with ``scope="global"``; each group keeps at least a fraction ``floor``) and
    removed at finalize. See the module docstring.
    Distributed: the scores are |γ|, weights alone: the gates agree by themselves under DDP."""

    NAME: ClassVar[str] = "slimming"
    PAPER: ClassVar[str] = ("Liu et al., ICCV 2017 (network slimming), as transplanted to SNNs; "
                            "Li et al., IEEE TAI 2024 (criteria unknown)")
    KIND: ClassVar[str] = "channels"

    penalty: float = 1e-4
    channel_sparsity: float = 0.3
    scope: str = "layer"
    floor: float = 0.1
    begin: float = 0.0
    until: float = 0.5
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    driver_: ChannelDriver | None = field(default=None, init=False, repr=False, compare=False)
    bns_: list = field(default_factory=list, init=False, repr=False, compare=False)
    masks_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    removed_: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.penalty, bool) or not isinstance(self.penalty, (int, float)) or (
                not 0 <= self.penalty < float("inf")):
            raise ValueError(f"penalty must be a finite number >= 0, got {self.penalty!r}")
        self.penalty = float(self.penalty)
        self.channel_sparsity = check_fraction("channel_sparsity", self.channel_sparsity)
        self.floor = check_fraction("floor", self.floor, closed=True)
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {list(SCOPES)}, got {self.scope!r}")
        self.begin, self.until = check_window(self.begin, self.until)
        check_patterns(self.include, self.exclude)

    @property
    def groups_(self) -> list[ChannelGroup]:
        return self.driver_.groups if self.driver_ is not None else []

    def select(self, model: nn.Module) -> list[ChannelGroup]:
        """The groups this method prunes: those selected that have a BN γ."""
        return select_channel_groups(model, self.include, self.exclude, has_gamma(model),
                                     "slimming")

    def attach(self, model: nn.Module, ctx: Context) -> None:
        """Find the groups that have a γ, gate them (all ones) and cache their BNs."""
        self.driver_ = ChannelDriver(self.channel_sparsity, self.scope, self.floor, self.begin,
                                     self.until)
        groups = self.select(model)
        self.driver_.attach_(model, groups)
        modules = dict(model.named_modules())
        self.bns_ = [modules[n] for g in groups for n in g.bns]

    def loss(self, model: nn.Module, x_seq: torch.Tensor, out_seq: torch.Tensor,
             ctx: Context) -> torch.Tensor:
        """λ·Σ|γ| over the selected groups' BNs (its gradient on γ is λ·sign(γ))."""
        if self.penalty == 0:
            return zero_loss(out_seq)
        total = torch.stack([bn_gamma(bn).abs().sum() for bn in self.bns_]).sum()
        return self.penalty * total

    def after_step(self, model: nn.Module, ctx: Context) -> None:
        """Gate the lowest-|γ| channels up to the ramp's fraction."""
        self.driver_.step_(model, ctx.progress, gamma_scores)

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Top up the gated channels to ``channel_sparsity`` and remove them."""
        scores = gamma_scores(model, self.groups_)
        model, self.masks_, removed = self.driver_.finalize_(model, gamma_scores, "slimming")
        kept = sum(int(m.sum()) for m in self.masks_.values())
        self.removed_ = {**removed, "threshold": _percentile(scores, kept)}
        return model


def _percentile(scores: Mapping[str, torch.Tensor], kept: int) -> float:
    """The ``kept``-th largest score (as scored at finalize): Liu et al.'s global threshold,
    channels below it are removed unless a floor keeps them."""
    flat = torch.cat([s.flatten() for s in scores.values()]).sort(descending=True).values
    return float(flat[max(1, kept) - 1])
