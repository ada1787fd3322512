"""L1-filter-norm pruning: remove the channels whose producer filters have the smallest L1 norm.

Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets" (ICLR 2017), the
structured baseline the SNN channel methods are compared with. From the paper: a filter's
importance is the sum of its absolute kernel weights, its L1 norm s_j = Σ|F_j| (biases are not
counted: our reading); in each layer the filters with the smallest s_j are removed together with
their feature maps and the next layer's kernels that read them; then the network is retrained.
Recollections not checked against the PDF [R], so not encoded in tests: the paper chooses
per-layer ratios by a sensitivity analysis, scores every layer on the trained weights
("independent" strategy, as here; a "greedy" variant discounts kernels already removed), and in
ResNets prunes mainly the first layer of each block (select that with ``include``).

The scorer is ``filter_l1``; selection, the target, gating and removal are the channel driver's
(``channel_pruning``). Our choices:

* channels are ``groups.channel_groups`` groups (residual-coupled channels removed together);
  a channel's score is the L1 norm of its filter summed over the group's producers
  (conv weight rows [C_out, C_in/groups, k...] or Linear rows [out, in]); every group by default,
  hidden fully-connected ones included, the read-out never;
* ``scope="layer"`` (the paper's per-layer pruning, one uniform ratio instead of the sensitivity
  analysis): every group loses the fraction ``channel_sparsity`` of its channels, rounded so that
  the total is exact, keeping at least a fraction ``floor``; ``scope="global"``: one ranking over
  all selected channels of the scores divided by their group's mean score (raw L1 norms grow
  with the fan-in, so unnormalised scores would prune the thin-fan-in layers first);
* the paper prunes once and retrains; here the lowest-L1 channels are gated off (after BN) along
  a cubic ramp from progress ``begin`` to ``until`` and the rest of the stage retrains without
  them; finalize removes them. A stage without steps (``epochs: 0``) prunes once at finalize, the
  paper's order, and the next stage retrains;
* among equal scores the lower channel index (then the earlier group) is kept; the record
  ``removed_`` holds the removed fractions of channels and parameters and the widths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from spikecompress.compress.method import Context
from spikecompress.compress.prune.channel_pruning import (
    ChannelDriver,
    check_fraction,
    check_window,
    select_channel_groups,
)
from spikecompress.compress.prune.channel_select import SCOPES, mean_normalised
from spikecompress.compress.prune.groups import ChannelGroup, check_patterns


def filter_l1(model: nn.Module, groups: Sequence[ChannelGroup]) -> dict[str, torch.Tensor]:
    """The L1-filter scorer: {group: Σ over its producers of each output filter's L1 norm, [C]}
    (detached, CPU, float64)."""
    modules = dict(model.named_modules())
    out = {}
    for g in groups:
        total = torch.zeros(g.size, dtype=torch.float64)
        for name in g.producers:
            w = modules[name].weight.detach()
            total += w.reshape(w.shape[0], -1).abs().sum(1).double().cpu()  # [C, ...] -> [C]
        out[g.name] = total
    return out


def normalised_filter_l1(model: nn.Module,
                         groups: Sequence[ChannelGroup]) -> dict[str, torch.Tensor]:
    """``filter_l1`` divided by each group's mean (the global-scope scorer)."""
    return mean_normalised(filter_l1(model, groups))


@dataclass
class L1FilterPruning:
    """Remove the fraction ``channel_sparsity`` of the selected groups' channels with the
    smallest producer filter L1 norms, per group (``scope="layer"``) or globally on
    group-normalised scores (``"global"``), each group keeping at least a fraction ``floor``;
    gated from progress ``begin`` to ``until``, removed at finalize.
    Distributed: the scores are filter norms, weights alone: the gates agree by themselves under
    DDP."""

    NAME: ClassVar[str] = "l1_filter"
    PAPER: ClassVar[str] = "Li et al., ICLR 2017 (Pruning Filters for Efficient ConvNets)"
    KIND: ClassVar[str] = "channels"

    channel_sparsity: float = 0.3
    scope: str = "layer"
    floor: float = 0.1
    begin: float = 0.0
    until: float = 0.5
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    driver_: ChannelDriver | None = field(default=None, init=False, repr=False, compare=False)
    masks_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    removed_: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.channel_sparsity = check_fraction("channel_sparsity", self.channel_sparsity)
        self.floor = check_fraction("floor", self.floor, closed=True)
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {list(SCOPES)}, got {self.scope!r}")
        self.begin, self.until = check_window(self.begin, self.until)
        check_patterns(self.include, self.exclude)

    @property
    def groups_(self) -> list[ChannelGroup]:
        return self.driver_.groups if self.driver_ is not None else []

    @property
    def scorer(self):
        return normalised_filter_l1 if self.scope == "global" else filter_l1

    def select(self, model: nn.Module) -> list[ChannelGroup]:
        """The groups this method prunes: every selected one."""
        return select_channel_groups(model, self.include, self.exclude, who="l1_filter")

    def attach(self, model: nn.Module, ctx: Context) -> None:
        """Find the selected groups and gate them (all ones: nothing changes yet)."""
        self.driver_ = ChannelDriver(self.channel_sparsity, self.scope, self.floor, self.begin,
                                     self.until)
        self.driver_.attach_(model, self.select(model))

    def after_step(self, model: nn.Module, ctx: Context) -> None:
        """Gate the lowest-L1 channels up to the ramp's fraction."""
        self.driver_.step_(model, ctx.progress, self.scorer)

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Top up the gated channels to ``channel_sparsity`` and remove them physically."""
        model, self.masks_, self.removed_ = self.driver_.finalize_(model, self.scorer,
                                                                   "l1_filter")
        return model
