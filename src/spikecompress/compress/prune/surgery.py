"""Physical channel removal: slice conv / BN / Linear and the neurons, reset state, fix the spec.

    remove_channels_(model, {"features.0.conv": [1, 3]})   # drop channels 1 and 3 of that group

Torch-Pruning prunes each group (``groups.channel_groups``) with the neurons swapped for stand-ins
that slice their per-channel thresholds, taus, PLIF decays and spike masks. Afterwards every
neuron's state is cleared and, for our models, ``model.spec`` is rewritten from the new module
shapes and checked against a rebuild, so the saved artifact rebuilds the smaller model. The model
is changed in place (parameters are new tensors: build the optimizer again).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.compress.prune.channel_mask import ungate_
from spikecompress.compress.prune.groups import (
    ChannelGroup,
    channel_groups,
    dependency_graph,
    traceable,
)
from spikecompress.models import MODELS, from_spec
from spikecompress.models.respec import respec
from spikecompress.snn.layers import reset_state


def _plan(
    groups: list[ChannelGroup], remove: Mapping[str, Sequence[int]]
) -> dict[str, list[int]]:
    """Validate ``remove`` against the groups: known names, indices in range, one channel left."""
    sizes = {g.name: g.size for g in groups}
    plan = {}
    for name, idxs in remove.items():
        if name not in sizes:
            raise ValueError(f"remove: {name!r} is not a channel group (known: {sorted(sizes)})")
        drop = sorted({int(i) for i in idxs})
        if drop and (drop[0] < 0 or drop[-1] >= sizes[name]):
            raise ValueError(f"remove[{name!r}]: indices must be in [0, {sizes[name]}), got {drop}")
        if len(drop) == sizes[name]:
            raise ValueError(f"remove[{name!r}]: removes all {sizes[name]} channels; keep one")
        if drop:
            plan[name] = drop
    return plan


def _check_plain(model: nn.Module, groups: list[ChannelGroup], plan: Mapping) -> None:
    modules = dict(model.named_modules())
    for g in groups:
        if g.name in plan:
            for name in g.producers + g.bns + g.consumers:
                if parametrize.is_parametrized(modules[name]):
                    raise ValueError(f"{name} still has a parametrization: finalize (bake) the "
                                     "masks or quantizers on it before removing channels")


def _root_out(graph, module: nn.Module):
    return graph.get_pruner_of_module(module).prune_out_channels


def remove_channels_(
    model: nn.Module, remove: Mapping[str, Sequence[int]], example: torch.Tensor | None = None
) -> nn.Module:
    """Remove channels ``remove[group name]`` (indices) from ``model`` in place; returns it.

    Raises ValueError naming the group for an unknown group, an index out of range or a group
    emptied, and naming the module when one still carries a parametrization.
    """
    groups = channel_groups(model, example)
    plan = _plan(groups, remove)
    _check_plain(model, groups, plan)
    modules = dict(model.named_modules())
    with traceable(model):
        graph = dependency_graph(model, example)
        for name, drop in plan.items():
            root = modules[name]
            graph.get_pruning_group(root, _root_out(graph, root), drop).prune()
    reset_state(model)
    if _known_spec(model):
        _respec(model)
    return model


def remove_masked_(
    model: nn.Module, masks: Mapping[str, torch.Tensor], example: torch.Tensor | None = None
) -> nn.Module:
    """Take the channel gates off (``channel_mask.ungate_``) and remove every channel whose mask
    ``masks[group name]`` is 0; returns the model (changed in place)."""
    ungate_(model)
    drop = {name: (m == 0).nonzero().flatten().tolist() for name, m in masks.items()}
    return remove_channels_(model, drop, example)


def consumer_inputs(
    model: nn.Module, remove: Mapping[str, Sequence[int]], example: torch.Tensor | None = None
) -> dict[str, list[int]]:
    """For each conv / Linear that reads removed channels: the input indices carrying them
    (a flatten → Linear channel maps to its H·W columns). Zeroing these input slices of the dense
    model gives the function the pruned model computes (the exactness test of channel removal)."""
    plan = _plan(channel_groups(model, example), remove)
    modules = dict(model.named_modules())
    out: dict[str, set[int]] = {}
    with traceable(model):
        graph = dependency_graph(model, example)
        for name, drop in plan.items():
            root = modules[name]
            for item in graph.get_pruning_group(root, _root_out(graph, root), drop):
                module = item.dep.target.module
                if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and \
                        graph.is_in_channel_pruning_fn(item.dep.handler):
                    out.setdefault(graph._module2name[module], set()).update(item.idxs)
    return {k: sorted(v) for k, v in out.items()}


def _known_spec(model: nn.Module) -> bool:

    spec = getattr(model, "spec", None)
    return isinstance(spec, dict) and spec.get("name") in MODELS


def _respec(model: nn.Module) -> None:
    """Rewrite ``model.spec`` from the module shapes and check that it rebuilds this model."""

    spec = respec(model)
    with torch.random.fork_rng(devices=[]):  # building initialises weights: keep the caller's RNG
        rebuilt = from_spec(spec).state_dict()
    for key, t in model.state_dict().items():
        if key in rebuilt and rebuilt[key].shape != t.shape:
            raise RuntimeError(f"surgery left {key} with shape {tuple(t.shape)} but the new spec "
                               f"builds {tuple(rebuilt[key].shape)}")
    model.spec = spec
