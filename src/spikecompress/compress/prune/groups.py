"""Channel groups of a spiking network: which channels must be removed together.

Torch-Pruning's dependency graph (DepGraph; Fang et al., CVPR 2023) finds the groups — residual
additions tie the channels of every block output in a stage, flatten → Linear maps one channel to
its H·W input columns, concatenation offsets the consumers' input indices — but it cannot trace a
spiking neuron: a neuron unrolled over T looks like a DAG whose paths grow with T and whose
internal views look like channel reshapes (as we measured with Torch-Pruning 1.6). So while the
graph is built every neuron is swapped for a ``NeuronStandIn`` (an identity that remembers its
channel count and slices the real neuron's per-channel threshold, tau, PLIF decay and spike mask
when Torch-Pruning prunes it), and our time-folded layers run their plain torch forward on one
time step [B, ...]. Both are restored on exit, whatever happens. A BNTT (``snn.BNTT``, one BN per
time step) traces as an identity on that step and has its own pruner, which slices dim 1 (the
channels) of its γ and running statistics [steps, C]; it is listed among a group's ``bns``.

    groups = channel_groups(model)        # [ChannelGroup(name="features.0.conv", size=16, ...)]

A custom block that concatenates channels must name the channel dimension as ``x.dim() - 3``
(2-D maps; ``x.dim() - 2`` for 1-D): dim 2 of [T, B, C, H, W] in training, dim 1 of the traced
[B, C, H, W], which is the only concatenation dimension Torch-Pruning maps.

A group is named after its first producer (the conv or Linear whose output channels it is), in
model order. The model's read-out (``classifier.fc`` of our models, else the last conv/Linear) is
never a producer.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from spikecompress.compress.targets import compile_patterns
from spikecompress.snn import layers as seq
from spikecompress.snn.bntt import BNTT
from spikecompress.snn.neuron import NEURONS
from spikecompress.snn.norse_neurons import NORSE_NEURONS

# neuron tensors with one row per channel
PER_CHANNEL = ("tau", "v_threshold", "w", "spike_mask", "leak",
               "tau_syn_inv", "tau_mem_inv", "v_leak", "v_reset")  # the last four: Norse's


def is_neuron(module: nn.Module) -> bool:
    """Our neurons (Norse's LI read-out too: stateful, traced as an identity), and SpikingJelly's
    (any module of that package with a ``v_threshold``)."""
    if isinstance(module, (*NEURONS.values(), *NORSE_NEURONS)):
        return True
    return type(module).__module__.startswith("spikingjelly") and hasattr(module, "v_threshold")


@dataclass
class ChannelGroup:
    """Channels that are removed together: ``size`` channels produced by ``producers`` (conv or
    Linear outputs), normalised by ``bns`` (BatchNorms, or BNTTs whose channels are dim 1 of
    their [steps, C] tensors), fired by ``neurons`` and read by ``consumers`` (conv or Linear
    inputs). All entries are qualified module names."""

    name: str
    size: int
    producers: list[str] = field(default_factory=list)
    bns: list[str] = field(default_factory=list)
    neurons: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)


class NeuronStandIn(nn.Module):
    """An identity in place of ``neuron`` while the graph is traced; records the channel count."""

    def __init__(self, neuron: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "neuron", neuron)  # not a submodule: its parameters stay hidden
        self.channels: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.channels = int(x.shape[1])  # one step [B, C, ...]
        return x.clone()  # its own autograd node: returning x would hide the producing BN


def slice_neuron(neuron: nn.Module, keep: torch.Tensor, channels: int) -> None:
    """Keep rows ``keep`` of each per-channel tensor of ``neuron`` (those of ``channels`` rows)."""
    for name in PER_CHANNEL:
        t = neuron._parameters.get(name, neuron._buffers.get(name))  # not properties (PLIF tau)
        if t is None or t.dim() == 0 or t.shape[0] != channels:
            continue
        kept = t.detach().index_select(0, keep.to(t.device)).clone()
        if isinstance(t, nn.Parameter):
            setattr(neuron, name, nn.Parameter(kept, requires_grad=t.requires_grad))
        else:
            setattr(neuron, name, kept)  # a registered buffer stays a buffer


def _neuron_pruner():
    """Torch-Pruning's pruner for ``NeuronStandIn`` (in = out channels: an element-wise layer)."""
    import torch_pruning as tp

    class NeuronPruner(tp.pruner.function.BasePruningFunc):
        TARGET_MODULES = (NeuronStandIn,)

        def prune_out_channels(self, layer: NeuronStandIn, idxs: Sequence[int]) -> nn.Module:
            drop = set(int(i) for i in idxs)
            keep = torch.tensor([c for c in range(layer.channels) if c not in drop])
            slice_neuron(layer.neuron, keep, layer.channels)
            layer.channels = len(keep)
            return layer

        prune_in_channels = prune_out_channels  # couples input and output channels

        def get_out_channels(self, layer: NeuronStandIn) -> int | None:
            return layer.channels

        get_in_channels = get_out_channels

    return NeuronPruner()


def _bntt_pruner():
    """Torch-Pruning's pruner for ``BNTT`` (in = out channels; dim 1 of its [steps, C] tensors)."""
    import torch_pruning as tp

    class BNTTPruner(tp.pruner.function.BasePruningFunc):
        TARGET_MODULES = (BNTT,)

        def prune_out_channels(self, layer: BNTT, idxs: Sequence[int]) -> nn.Module:
            drop = set(int(i) for i in idxs)
            layer.keep_channels_(torch.tensor([c for c in range(layer.num_features)
                                               if c not in drop]))
            return layer

        prune_in_channels = prune_out_channels  # couples input and output channels

        def get_out_channels(self, layer: BNTT) -> int:
            return layer.num_features

        get_in_channels = get_out_channels

    return BNTTPruner()


_PLAIN: dict[type, object] = {
    BNTT: lambda self, x: x.clone(),  # its own node, as a BN's; values do not matter to tracing
    seq.Conv1d: nn.Conv1d.forward, seq.Conv2d: nn.Conv2d.forward,
    seq.BatchNorm1d: nn.BatchNorm1d.forward, seq.BatchNorm2d: nn.BatchNorm2d.forward,
    seq.Linear: nn.Linear.forward, seq.MaxPool1d: nn.MaxPool1d.forward,
    seq.MaxPool2d: nn.MaxPool2d.forward, seq.AvgPool1d: nn.AvgPool1d.forward,
    seq.AvgPool2d: nn.AvgPool2d.forward, seq.AdaptiveAvgPool2d: nn.AdaptiveAvgPool2d.forward,
    seq.Flatten: lambda self, x: x.flatten(1),  # [B, C, H, W] -> [B, C*H*W]
    seq.Dropout: lambda self, x: x,
    seq.SeqWrap: lambda self, x: self.module(x),
}


def _plain_forward(module: nn.Module):
    """The one-step forward of a time-folded layer (also when parametrized: a subclass)."""
    return next((f for cls, f in _PLAIN.items() if isinstance(module, cls)), None)


@contextlib.contextmanager
def traceable(model: nn.Module) -> Iterator[dict[str, NeuronStandIn]]:
    """Neurons swapped for stand-ins and time-folded layers in plain one-step mode, restored (and
    the training flags too) on exit. Yields {neuron name: its stand-in}."""
    parents = dict(model.named_modules())
    swapped: dict[str, NeuronStandIn] = {}
    plain: list[nn.Module] = []
    modes = {m: m.training for m in model.modules()}
    try:
        for name, m in list(model.named_modules()):
            if name and is_neuron(m):
                owner, _, leaf = name.rpartition(".")
                swapped[name] = NeuronStandIn(m)
                setattr(parents[owner], leaf, swapped[name])
            elif (base := _plain_forward(m)) is not None:
                m.forward = types.MethodType(base, m)
                plain.append(m)
        yield swapped
    finally:
        for name, stand_in in swapped.items():
            owner, _, leaf = name.rpartition(".")
            setattr(parents[owner], leaf, stand_in.neuron)
        for m in plain:
            del m.forward
        for m, mode in modes.items():
            m.training = mode


def readout(model: nn.Module) -> nn.Module:
    """The layer whose outputs are the logits: ``classifier.fc``, else the last conv/Linear."""
    fc = getattr(getattr(model, "classifier", None), "fc", None)
    if isinstance(fc, nn.Linear):
        return fc
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    if not last:
        raise ValueError("the model has no conv or Linear layer: nothing to prune")
    return last[-1]


def example_input(model: nn.Module, example: torch.Tensor | None) -> torch.Tensor:
    """One time step [2, *in_shape] for our models (``in_shape``); else the user's ``example``."""
    if example is not None:
        return example
    in_shape = getattr(model, "in_shape", None)
    if in_shape is None:
        raise ValueError("pass example= (an input the model accepts): it has no in_shape")
    p = next(model.parameters())
    return torch.zeros(2, *in_shape, dtype=p.dtype, device=p.device)


def dependency_graph(model: nn.Module, example: torch.Tensor | None = None):
    """Torch-Pruning's DependencyGraph of ``model``; call inside ``traceable(model)``."""
    import torch_pruning as tp

    x = example_input(model, example)
    plain_net = example is None and hasattr(model, "features") and hasattr(model, "classifier")
    forward = (lambda m, inp: m.classifier(m.features(inp))) if plain_net else None
    if example is None and hasattr(model, "run_nodes"):  # a LayerGraph, on one step [B, ...]
        forward = lambda m, inp: m.run_nodes(inp, per_step=False)  # noqa: E731
    pruners = {NeuronStandIn: _neuron_pruner()}
    bntt = _bntt_pruner()
    # by exact class, as Torch-Pruning looks pruners up (a parametrized BNTT is a subclass)
    pruners.update({type(m): bntt for m in model.modules() if isinstance(m, BNTT)})
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=x, forward_fn=forward, customized_pruners=pruners,
        )


def _describe(graph, group, stand_ins: dict[int, str]) -> ChannelGroup:
    out = ChannelGroup(name="", size=len(group[0].idxs))
    for item in group:
        module, handler = item.dep.target.module, item.dep.handler
        name = graph._module2name.get(module)
        if isinstance(module, NeuronStandIn):
            out.neurons.append(stand_ins[id(module)])
        elif not name:  # Torch-Pruning's own nodes (element-wise ops, reshapes, concat)
            continue
        elif isinstance(module, nn.modules.batchnorm._BatchNorm | BNTT):
            out.bns.append(name)
        elif graph.is_out_channel_pruning_fn(handler):
            out.producers.append(name)
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            out.consumers.append(name)
    order = {n: i for i, (n, _) in enumerate(graph.model.named_modules())}
    for names in (out.producers, out.bns, out.neurons, out.consumers):
        names.sort(key=lambda n: order.get(n, len(order)))
        names[:] = list(dict.fromkeys(names))
    out.name = out.producers[0]
    return out


def channel_groups(model: nn.Module, example: torch.Tensor | None = None) -> list[ChannelGroup]:
    """Every prunable channel group of ``model`` in model order (see the module docstring).

    Our models are traced on one time step of zeros; another model needs ``example``, an input
    its forward accepts.
    """
    with traceable(model) as stand_ins:
        graph = dependency_graph(model, example)
        names = {id(s): n for n, s in stand_ins.items()}
        roots = (nn.Conv1d, nn.Conv2d, nn.Linear)
        found = [_describe(graph, g, names)
                 for g in graph.get_all_groups([readout(model)], root_module_types=roots)]
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(found, key=lambda g: order[g.name])


def select_groups(
    groups: Sequence[ChannelGroup], include: Sequence[str], exclude: Sequence[str],
    required: bool = True,
) -> list[ChannelGroup]:
    """The groups whose names fully match an ``include`` regex (none = all) and no ``exclude``;
    raises ValueError when a pattern is not a regex, or (``required``) when none is left."""
    inc, exc = compile_patterns(include, "include"), compile_patterns(exclude, "exclude")
    picked = [g for g in groups
              if (not inc or any(p.fullmatch(g.name) for p in inc))
              and not any(p.fullmatch(g.name) for p in exc)]
    if required and not picked:
        raise ValueError(f"no channel group selected (include={list(include)}, "
                         f"exclude={list(exclude)}; groups: {[g.name for g in groups]})")
    return picked


def check_patterns(include: object, exclude: object) -> None:
    """Raise ValueError unless ``include`` and ``exclude`` are lists of valid regexes."""
    for name, value in (("include", include), ("exclude", exclude)):
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise ValueError(f"{name} must be a list of regex strings, got {value!r}")
        compile_patterns(value, name)
