"""The TTFS network: an ANN twin rebuilt on time-to-first-spike coding (``snn.ttfs``).

``to_ttfs(ann, thresholds, window)`` converts a trained ANN twin (``spiking: false``) whose forward
is one chain of layers: BN folded into the layer before it (eval statistics), every ReLU replaced
by a ``TTFSNeuron`` (the layer's bias moved into it as a constant current), every max pooling by
a ``TTFSMaxPool``, a ``TTFSReadout`` appended after the last conv / linear layer; the network
becomes a ``TTFSNetwork``, whose forward reads its input with ``snn.ttfs.ttfs_input`` (a static
input or its onset).

Normalisation (the toolbox's, Rueckauer et al.'s): with λ_k the activation scale of ReLU k (a
percentile of its activations, ``compress.coding.ttfs``) and λ_0 = 1 for the input, layer k's
weights become ``W · λ_{k−1} / λ_k`` and its bias ``b / λ_k``; the read-out's weights
``W · λ_L`` (its bias unchanged). Thresholds: 1 in the concurrent schedule (``window`` 0: the
first layer then spikes at ``t_first = ⌈λ_1 / z⌉``, ``1 / t_first ≈ relu(z) / λ_1``), ``W + 1/2``
in the layered one (window W > 0: a spike q steps before the end of its window stands for
``λ_k · q / W``, q = round(W z / λ_k) clipped to [0, W]).

``model.spec["ttfs"] = {"neurons": [ReLU paths], "window": W}`` records the conversion, and
``from_spec`` (``models.EXTRAS``) rebuilds the structure on the ANN twin with ``install_ttfs_``;
thresholds, biases and weights travel in the state_dict.

What cannot be converted is refused by ``plan`` with one line naming the module: average pooling
(the mean of spike times is not a spike time: build the ANN twin with ``pool: max``, exact under
TTFS), residual or any other non-chain block (an addition of spikes is not one first spike), a BN
that does not directly follow a conv / linear layer or a BNTT (neither folds), a ReLU that does
not follow a layer, two layers without a ReLU between them, a model that does not end in a conv /
linear read-out, layers on the integer grid or still parametrized.
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
from spikecompress.snn.ttfs import TTFSMaxPool, TTFSNeuron, TTFSReadout, ttfs_input

KEY = "ttfs"
SYNAPSES = (nn.Conv1d, nn.Conv2d, nn.Linear)
MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d)
PASS = (nn.Flatten, nn.Identity, nn.Dropout)
_BN = nn.modules.batchnorm._BatchNorm
_AVG = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
        nn.AdaptiveAvgPool3d)


class TTFSNetwork(Network):
    """A ``Network`` that reads its input as an analog onset: x_seq [T, B, *in_shape] static
    (``data.encoding: direct``) or its onset (``data.encoding: ttfs``) → logits [T, B, classes]
    (0 except at the last step: ``snn.ttfs.TTFSReadout``)."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return super().forward(ttfs_input(x_seq))


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
    return ValueError(f"ttfs cannot convert {path} ({type(module).__name__}): {why}")


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
                          "addition of spikes is not one first spike)")


def plan(model: nn.Module) -> Plan:
    """Check that ``model`` (an ANN twin of ``spikecompress.models``) converts to TTFS and return
    its layers; one-line ValueError naming the first module that cannot be converted."""
    if not isinstance(model, Network):
        raise ValueError(f"ttfs converts a model of spikecompress.models, got "
                         f"{type(model).__name__}")
    for name, child in model.named_children():
        if name not in ("features", "classifier"):
            raise _refuse(name, child, "only the network's features and classifier are converted")
    units: list[Unit] = []
    pools: list[str] = []
    drops: list[str] = []
    state, last = "spikes", ("the input", model)  # spikes: spikes (or the input) flow here
    parents: dict[str, str] = {}
    for path, m, parent in _leaves(model, ""):
        last = (path, m)
        if parametrize.is_parametrized(m):
            raise _refuse(path, m, "it is still parametrized; finalize (bake) the other methods "
                          "in an earlier stage")
        if getattr(m, "input_scale", None) is not None:
            raise _refuse(path, m, "a layer on the integer grid (quantized with membrane bits)")
        if isinstance(m, SYNAPSES):
            if state != "spikes":
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
            state = "spikes"
        elif isinstance(m, MAX_POOLS):
            if state != "spikes":
                raise _refuse(path, m, "only a BatchNorm or a ReLU may follow a conv or linear "
                              "layer")
            pools.append(path)
        elif isinstance(m, _AVG):
            raise _refuse(path, m, "the mean of spike times is not a spike time; build the ANN "
                          "twin with pool: max (the earliest spike: exact under TTFS)")
        elif isinstance(m, PASS):
            if isinstance(m, nn.Dropout):
                drops.append(path)
        else:
            raise _refuse(path, m, "not a layer a TTFS network has (conv, linear, BatchNorm, "
                          "ReLU, max pooling, flatten)")
    if state != "current":
        raise _refuse(last[0], last[1], "the model must end in a conv or linear read-out")
    return Plan(units, pools, drops)


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent), name, new)


def _check_config(config: object) -> tuple[list[str], int]:
    ok = isinstance(config, dict) and set(config) == {"neurons", "window"}
    neurons, window = (config.get("neurons"), config.get("window")) if ok else (None, None)
    if not (isinstance(neurons, list) and all(isinstance(n, str) for n in neurons)
            and isinstance(window, int) and not isinstance(window, bool) and window >= 0):
        raise ValueError(f"ttfs: the spec's config must be {{'neurons': [paths], 'window': "
                         f"int >= 0}}, got {config!r}")
    return neurons, window


def install_ttfs_(model: nn.Module, config: dict) -> None:
    """``from_spec``'s installer (and the structural half of ``to_ttfs``): turn the ANN twin
    ``model`` into a TTFSNetwork in place; a layer's bias, if it has one, moves into the neuron
    (or read-out) after it. ``config``: ``{"neurons": [the ReLU paths], "window": W}`` (0: the
    concurrent schedule), the neurons checked against the model."""
    neurons, window = _check_config(config)
    found = plan(model)
    if neurons != found.neurons:
        raise ValueError(f"ttfs: the spec names the neurons {neurons}, the model has the ReLUs "
                         f"{found.neurons}")
    for k, u in enumerate(found.units, start=1):
        layer = model.get_submodule(u.synapse)
        w = layer.weight
        bias = None if layer.bias is None else layer.bias.detach().clone()
        layer.bias = None  # the bias is a constant current of the neuron
        if u.bn is not None:
            _replace(model, u.bn, nn.Identity())
        channels = layer.out_channels if isinstance(layer, nn.Conv1d | nn.Conv2d) else (
            layer.out_features)
        target = (TTFSNeuron(channels, window=window, layer=k) if u.relu is not None
                  else TTFSReadout(channels, window=window, layer=k))
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
        _replace(model, path, TTFSMaxPool(model.get_submodule(path)))
    for path in found.drops:
        _replace(model, path, nn.Identity())
    model.__class__ = TTFSNetwork
    model.spec[KEY] = {"neurons": list(found.neurons), "window": window}


@torch.no_grad()
def to_ttfs(ann: nn.Module, thresholds: dict[str, float], window: int = 0) -> TTFSNetwork:
    """A TTFS network from the trained ANN twin ``ann`` (left unchanged): BN folded, ReLU
    ``name`` → a TTFS neuron, the weights and biases normalised by the activation scales
    ``thresholds[name]`` (λ > 0; see the module docstring); ``window`` 0: the concurrent schedule
    (threshold 1), W > 0: the layered one (threshold W + 1/2)."""
    found = plan(ann)
    missing = [n for n in found.neurons if n not in thresholds]
    if missing:
        raise ValueError(f"ttfs: no threshold for the ReLUs {missing[:3]}")
    bad = {n: v for n, v in thresholds.items() if not v > 0}
    if bad:
        raise ValueError(f"ttfs: thresholds must be > 0, got {bad}")
    net = copy.deepcopy(ann)
    net.spec = copy.deepcopy(ann.spec)
    fold_batchnorm_(net, strict=True)
    net.spec.pop("folded_bn", None)  # the TTFS structure has no BN either way: install_ttfs_
    install_ttfs_(net, {"neurons": found.neurons, "window": window})
    scale = 1.0  # the activation a unit of the layer's input stands for (the input: 1)
    for u in found.units:
        layer = net.get_submodule(u.synapse)
        if u.relu is None:  # the read-out: logits in the ANN's units
            layer.weight.mul_(scale)
            continue
        lam = float(thresholds[u.relu])
        layer.weight.mul_(scale / lam)
        neuron = net.get_submodule(u.relu)
        neuron.bias.div_(lam)
        neuron.v_threshold.fill_(window + 0.5 if window else 1.0)
        scale = lam
    return net.eval()
