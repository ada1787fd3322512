"""The TSC network: an ANN twin rebuilt on Temporal-Switch Coding (``snn.tsc``).

``to_tsc(ann, thresholds)`` converts a trained ANN twin (``spiking: false``) whose forward is one
chain of layers: BN folded into the layer before it (eval statistics), every ReLU replaced by a
``TSCNeuron`` (threshold θ = the activation scale λ of that ReLU, the layer's bias moved into the
neuron as the current it switches on for the window), every max pooling by ``TSCMaxPool``, a
``TSCReadout`` appended after the last conv / linear layer, and each layer's weights multiplied by
the λ of the neurons it reads (a spike pair of interval k stands for the activation λ · k / Tw).
The network itself becomes a ``TSCNetwork``, whose forward turns its input into TSC events
(``snn.tsc.tsc_input``: a static input in [0, 1] is encoded with window T − 1, TSC events are taken
as they are) before running the chain.

``model.spec["tsc"] = {"neurons": [ReLU paths]}`` records the conversion, and ``from_spec``
(``models.EXTRAS``) rebuilds the structure on the ANN twin with ``install_tsc_``; thresholds,
biases and weights travel in the state_dict.

What cannot be converted is refused by ``plan`` with one line naming the module: average pooling
(the mean of intervals is not one spike pair: build the ANN with ``pool: max``, exact under TSC),
residual or any other non-chain block, a BN that does not directly follow a conv / linear layer or
a BNTT (neither folds), a ReLU that does not follow a layer, two layers without a ReLU between
them, a model that does not end in a conv / linear read-out, layers on the integer grid.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.models.bn_fold import fold_batchnorm_
from spikecompress.models.common import Network
from spikecompress.snn.bntt import BNTT
from spikecompress.snn.tsc import TSCMaxPool, TSCNeuron, TSCReadout, tsc_input

KEY = "tsc"
SYNAPSES = (nn.Conv1d, nn.Conv2d, nn.Linear)
MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d)
PASS = (nn.Flatten, nn.Identity, nn.Dropout)
_BN = nn.modules.batchnorm._BatchNorm
_AVG = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
        nn.AdaptiveAvgPool3d)


class TSCNetwork(Network):
    """A ``Network`` that reads its input as TSC events: x_seq [T, B, *in_shape] static in [0, 1]
    (direct coding) or TSC events (``data.encoding: tsc``) → logits [T, B, classes]."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return super().forward(tsc_input(x_seq))


@dataclass
class Unit:
    """One layer of the chain: ``synapse`` (conv / linear), its ``bn`` (or None) and ``relu``
    (None for the read-out, the last layer)."""

    synapse: str
    bn: str | None = None
    relu: str | None = None


@dataclass
class Plan:
    """What ``plan`` found: the units in forward order, the max pools and dropouts (by path)."""

    units: list[Unit]
    pools: list[str]
    drops: list[str]

    @property
    def neurons(self) -> list[str]:
        return [u.relu for u in self.units if u.relu is not None]


def _refuse(path: str, module: nn.Module, why: str) -> ValueError:
    return ValueError(f"tsc cannot convert {path} ({type(module).__name__}): {why}")


def _leaves(module: nn.Module, prefix: str):
    """(path, module, parent path) of the layers a chain of Sequentials runs, in forward order."""
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, BNTT):
            raise _refuse(path, child, "one BatchNorm per time step does not fold into weights")
        if isinstance(child, nn.Sequential):
            yield from _leaves(child, path)
        elif parametrize.is_parametrized(child) or next(child.children(), None) is None:
            yield path, child, prefix
        else:
            raise _refuse(path, child, "a block that is not a chain of layers (a residual "
                          "addition of spike pairs is not a spike pair)")


def plan(model: nn.Module) -> Plan:
    """Check that ``model`` (an ANN twin of ``spikecompress.models``) converts to TSC and return
    its layers; one-line ValueError naming the first module that cannot be converted."""
    if not isinstance(model, Network):
        raise ValueError(f"tsc converts a model of spikecompress.models, got "
                         f"{type(model).__name__}")
    for name, child in model.named_children():
        if name not in ("features", "classifier"):
            raise _refuse(name, child, "only the network's features and classifier are converted")
    units: list[Unit] = []
    pools: list[str] = []
    drops: list[str] = []
    state, last = "events", ("the input", model)  # events: spikes (or the input) flow here
    parents: dict[str, str] = {}
    for path, m, parent in _leaves(model, ""):
        last = (path, m)
        if getattr(m, "input_scale", None) is not None:
            raise _refuse(path, m, "a layer on the integer grid (quantized with membrane bits)")
        if isinstance(m, SYNAPSES):
            if state != "events":
                raise _refuse(path, m, "it reads another layer's output without a ReLU in "
                              "between")
            units.append(Unit(path))
            parents[path] = parent
            state = "current"
        elif isinstance(m, _BN):
            if state != "current" or units[-1].bn is not None or parents[units[-1].synapse] != (
                    parent):
                raise _refuse(path, m, "a BatchNorm that does not directly follow a conv or "
                              "linear layer cannot be folded")
            units[-1].bn = path
        elif isinstance(m, nn.ReLU):
            if state != "current":
                raise _refuse(path, m, "a ReLU must follow a conv or linear layer (and its "
                              "BatchNorm)")
            units[-1].relu = path
            state = "events"
        elif isinstance(m, MAX_POOLS):
            if state != "events":
                raise _refuse(path, m, "only a BatchNorm or a ReLU may follow a conv or linear "
                              "layer")
            pools.append(path)
        elif isinstance(m, _AVG):
            raise _refuse(path, m, "the mean of TSC intervals is not one spike pair; build the "
                          "ANN twin with pool: max (exact under TSC)")
        elif isinstance(m, PASS):
            if isinstance(m, nn.Dropout):
                drops.append(path)
        else:
            raise _refuse(path, m, "not a layer a TSC network has (conv, linear, BatchNorm, "
                          "ReLU, max pooling, flatten)")
    if state != "current":
        raise _refuse(last[0], last[1], "the model must end in a conv or linear read-out")
    return Plan(units, pools, drops)


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent), name, new)


def install_tsc_(model: nn.Module, config: dict) -> None:
    """``from_spec``'s installer (and the structural half of ``to_tsc``): turn the ANN twin
    ``model`` into a TSCNetwork in place; a layer's bias, if it has one, moves into the neuron
    (or read-out) after it. ``config``: ``{"neurons": [the ReLU paths]}``, checked against the
    model."""
    if not isinstance(config, dict) or not isinstance(config.get("neurons"), list):
        raise ValueError(f"tsc: the spec's config must be {{'neurons': [paths]}}, got {config!r}")
    found = plan(model)
    if config["neurons"] != found.neurons:
        raise ValueError(f"tsc: the spec names the neurons {config['neurons']}, the model has "
                         f"the ReLUs {found.neurons}")
    for u in found.units:
        layer = model.get_submodule(u.synapse)
        w = layer.weight
        bias = None if layer.bias is None else layer.bias.detach().clone()
        layer.bias = None  # the bias is a current the neuron switches on for the window
        if u.bn is not None:
            _replace(model, u.bn, nn.Identity())
        channels = layer.out_channels if isinstance(layer, nn.Conv1d | nn.Conv2d) else (
            layer.out_features)
        target = TSCNeuron(channels) if u.relu is not None else TSCReadout(channels)
        target = target.to(device=w.device, dtype=w.dtype)
        if bias is not None:
            target.bias.copy_(bias)
        if u.relu is not None:
            _replace(model, u.relu, target)
        else:
            container = model.get_submodule(u.synapse.rpartition(".")[0])
            if not isinstance(container, nn.Sequential):
                raise _refuse(u.synapse, layer, "the read-out layer must sit in a Sequential")
            container.add_module("readout", target)  # runs after everything in its chain
    for path in found.pools:
        _replace(model, path, TSCMaxPool(model.get_submodule(path)))
    for path in found.drops:
        _replace(model, path, nn.Identity())
    model.__class__ = TSCNetwork
    model.spec[KEY] = {"neurons": list(found.neurons)}


@torch.no_grad()
def to_tsc(ann: nn.Module, thresholds: dict[str, float]) -> TSCNetwork:
    """A TSC network from the trained ANN twin ``ann`` (left unchanged): BN folded, ReLU
    ``name`` → a TSC neuron of threshold ``thresholds[name]`` (its activation scale λ > 0), the
    weights of each layer multiplied by the λ of the neurons it reads (1 for the input)."""
    found = plan(ann)
    for u in found.units:
        if parametrize.is_parametrized(ann.get_submodule(u.synapse)):
            raise ValueError(f"tsc: {u.synapse} still has parametrizations; finalize (bake) the "
                             "other methods first")
    missing = [n for n in found.neurons if n not in thresholds]
    if missing:
        raise ValueError(f"tsc: no threshold for the ReLUs {missing[:3]}")
    bad = {n: v for n, v in thresholds.items() if not v > 0}
    if bad:
        raise ValueError(f"tsc: thresholds must be > 0, got {bad}")
    net = copy.deepcopy(ann)
    net.spec = copy.deepcopy(ann.spec)
    fold_batchnorm_(net, strict=True)
    net.spec.pop("folded_bn", None)  # the TSC structure has no BN either way: install_tsc_
    install_tsc_(net, {"neurons": found.neurons})
    scale = 1.0  # the value a spike pair of the layer's input stands for (x itself: 1)
    for u in found.units:
        net.get_submodule(u.synapse).weight.mul_(scale)
        if u.relu is not None:
            scale = float(thresholds[u.relu])
            net.get_submodule(u.relu).v_threshold.fill_(scale)
    return net.eval()
