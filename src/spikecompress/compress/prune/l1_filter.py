"""L1-filter-norm pruning: remove the channels whose producer filters have the smallest L1 norm.

Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets" (ICLR 2017), the
structured baseline of issue 7's figures (specs/pruning.md §3 lists the SNN methods it is compared
with). From the paper: a filter's importance is the sum of its absolute kernel weights, its L1
norm s_j = Σ|F_j| (biases are not counted: our reading); in each layer the filters with the
smallest s_j are removed together with their feature maps and the next layer's kernels that read
them; then the network is retrained (here the recipe's next stage). Recollections not checked
against the PDF [R], so not encoded in tests: the paper chooses per-layer ratios by a sensitivity
analysis, scores every layer on the trained weights ("independent" strategy, as here; a "greedy"
variant discounts kernels already removed), and in ResNets prunes mainly the first layer of each
block (select that with ``include``).

Our choices:
* one-shot at ``finalize`` (the stage may train first; the recipe uses ``epochs: 0``);
* channels are ``groups.channel_groups`` groups (residual-coupled channels removed together);
  a channel's score is the L1 norm of its filter summed over the group's producers
  (conv weight rows [C_out, C_in/groups, k...] or Linear rows [out, in]); every group by default,
  hidden fully-connected ones included, the read-out never;
* ``scope="layer"`` (the paper's per-layer pruning, one uniform ratio instead of the sensitivity
  analysis): each group keeps max(⌊C·(1 − prune)⌋, floor count) of its best channels;
  ``scope="global"``: one ranking over all selected channels of the scores divided by their
  group's mean score (raw L1 norms grow with the fan-in, so unnormalised scores would prune the
  thin-fan-in layers first), with the per-group floor of ``channel_select.keep_top``;
* among equal scores the lower channel index (then the earlier group) is kept; results as in
  ``slimming``: ``masks_`` and ``removed_ = {"channels": ..., "params": ...}``, logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from spikecompress.compress.method import Context
from spikecompress.compress.prune.channel_select import keep_top
from spikecompress.compress.prune.groups import (
    ChannelGroup,
    channel_groups,
    check_patterns,
    select_groups,
)
from spikecompress.compress.prune.slimming import (
    check_fractions,
    install_gates_,
    remove_and_count_,
)

SCOPES = ("layer", "global")


def filter_l1(model: nn.Module, groups: Sequence[ChannelGroup]) -> dict[str, torch.Tensor]:
    """{group: Σ over its producers of each output filter's L1 norm, [C]} (detached, CPU)."""
    modules = dict(model.named_modules())
    out = {}
    for g in groups:
        total = torch.zeros(g.size, dtype=torch.float64)
        for name in g.producers:
            w = modules[name].weight.detach()
            total += w.reshape(w.shape[0], -1).abs().sum(1).double().cpu()  # [C, ...] -> [C]
        out[g.name] = total
    return out


def l1_masks(
    scores: dict[str, torch.Tensor], prune: float, scope: str, floor: float
) -> dict[str, torch.Tensor]:
    """{group: {0, 1} [C]}: drop the lowest scores per group (``"layer"``) or over all groups
    after dividing each group's scores by their mean (``"global"``)."""
    keep = 1.0 - prune
    if scope == "layer":
        return {n: keep_top({n: s}, keep, floor)[n] for n, s in scores.items()}
    normed = {n: s / s.mean() if s.mean() > 0 else s for n, s in scores.items()}
    return keep_top(normed, keep, floor)


@dataclass
class L1FilterPruning:
    """Remove the fraction ``prune`` of the selected groups' channels with the smallest producer
    filter L1 norms, per group (``scope="layer"``) or globally on group-normalised scores
    (``"global"``), each group keeping at least a fraction ``floor``; one-shot at finalize."""

    NAME: ClassVar[str] = "l1_filter"
    PAPER: ClassVar[str] = "Li et al., ICLR 2017 (Pruning Filters for Efficient ConvNets)"
    KIND: ClassVar[str] = "channels"

    prune: float = 0.5
    scope: str = "layer"
    floor: float = 0.1
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    groups_: list = field(default_factory=list, init=False, repr=False, compare=False)
    masks_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    removed_: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_fractions(self.prune, self.floor)
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {list(SCOPES)}, got {self.scope!r}")
        check_patterns(self.include, self.exclude)
        self.prune, self.floor = float(self.prune), float(self.floor)

    def attach(self, model: nn.Module, ctx: Context) -> None:
        """Find the selected groups and gate them (all ones: nothing changes while training)."""
        self.groups_ = select_groups(channel_groups(model), self.include, self.exclude)
        install_gates_(model, self.groups_)

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Score the filters, pick the channels and remove the others physically."""
        scores = filter_l1(model, self.groups_)
        self.masks_ = l1_masks(scores, self.prune, self.scope, self.floor)
        model, self.removed_ = remove_and_count_(model, self.masks_, "l1_filter")
        return model
