"""The chain of layers of an ANN twin that a temporal-coding conversion rebuilds (``models.tsc``,
``models.ttfs``): what ``plan_chain`` accepts, the installer's common half (``install_chain_``)
and the BN-folded copy a conversion starts from.

A convertible ANN twin is a ``Network`` whose features and classifier run one chain of layers
(nested ``nn.Sequential``): conv / linear → BN (optional, folded) → ReLU → max pooling / flatten /
dropout, ending in a conv / linear read-out. Every refusal is one ValueError naming the method
and the module: ``"<method> cannot convert <path> (<type>): <why>"``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torch.nn.utils import parametrize

from spikecompress.models.bn_fold import fold_batchnorm_
from spikecompress.models.common import Network
from spikecompress.snn.bntt import BNTT

SYNAPSES = (nn.Conv1d, nn.Conv2d, nn.Linear)
MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d)
PASS = (nn.Flatten, nn.Identity, nn.Dropout)
_BN = nn.modules.batchnorm._BatchNorm
_AVG = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
        nn.AdaptiveAvgPool3d)


@dataclass
class Unit:
    """One layer of the chain: ``synapse`` (conv / linear), its ``bn`` (or None) and ``relu``
    (None for the read-out, the last layer)."""

    synapse: str
    bn: str | None = None
    relu: str | None = None


@dataclass
class Plan:
    """What ``plan_chain`` found: the units in forward order, the max pools and dropouts (by
    path)."""

    units: list[Unit]
    pools: list[str]
    drops: list[str]

    @property
    def neurons(self) -> list[str]:
        return [u.relu for u in self.units if u.relu is not None]


def refusal(method: str, path: str, module: nn.Module, why: str) -> ValueError:
    return ValueError(f"{method} cannot convert {path} ({type(module).__name__}): {why}")


def _leaves(module: nn.Module, prefix: str, method: str, residual: str):
    """(path, module, parent path) of the layers a chain of Sequentials runs, in forward order."""
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, BNTT):
            raise refusal(method, path, child, "one BatchNorm per time step does not fold into "
                          "weights")
        if isinstance(child, nn.Sequential):
            yield from _leaves(child, path, method, residual)
        elif parametrize.is_parametrized(child) or next(child.children(), None) is None:
            yield path, child, prefix
        else:
            raise refusal(method, path, child,
                          f"a block that is not a chain of layers ({residual})")


def plan_chain(model: nn.Module, method: str, *, residual: str, avg: str,
               parametrized: bool = False) -> Plan:
    """Check that ``model`` (an ANN twin of ``spikecompress.models``) is one chain of layers that
    ``method`` converts and return its layers; one-line ValueError naming the first module that
    cannot be converted. ``residual``: why a non-chain block is refused; ``avg``: why average
    pooling is; ``parametrized``: refuse a layer that is still parametrized."""
    if not isinstance(model, Network):
        raise ValueError(f"{method} converts a model of spikecompress.models, got "
                         f"{type(model).__name__}")
    for name, child in model.named_children():
        if name not in ("features", "classifier"):
            raise refusal(method, name, child, "only the network's features and classifier are "
                          "converted")
    units: list[Unit] = []
    pools: list[str] = []
    drops: list[str] = []
    state, last = "spikes", ("the input", model)  # spikes: spikes (or the input) flow here
    parents: dict[str, str] = {}
    for path, m, parent in _leaves(model, "", method, residual):
        last = (path, m)
        if parametrized and parametrize.is_parametrized(m):
            raise refusal(method, path, m, "it is still parametrized; finalize (bake) the other "
                          "methods in an earlier stage")
        if getattr(m, "input_scale", None) is not None:
            raise refusal(method, path, m, "a layer on the integer grid (quantized with membrane "
                          "bits)")
        if isinstance(m, SYNAPSES):
            if state != "spikes":
                raise refusal(method, path, m, "it reads another layer's output without a ReLU in "
                              "between")
            units.append(Unit(path))
            parents[path] = parent
            state = "current"
        elif isinstance(m, _BN):
            if state != "current" or units[-1].bn is not None or parents[units[-1].synapse] != (
                    parent):
                raise refusal(method, path, m, "a BatchNorm that does not directly follow a conv "
                              "or linear layer cannot be folded")
            units[-1].bn = path
        elif isinstance(m, nn.ReLU):
            if state != "current":
                raise refusal(method, path, m, "a ReLU must follow a conv or linear layer (and its "
                              "BatchNorm)")
            units[-1].relu = path
            state = "spikes"
        elif isinstance(m, MAX_POOLS):
            if state != "spikes":
                raise refusal(method, path, m, "only a BatchNorm or a ReLU may follow a conv or "
                              "linear layer")
            pools.append(path)
        elif isinstance(m, _AVG):
            raise refusal(method, path, m, avg)
        elif isinstance(m, PASS):
            if isinstance(m, nn.Dropout):
                drops.append(path)
        else:
            raise refusal(method, path, m, f"not a layer a {method.upper()} network has (conv, "
                          "linear, BatchNorm, ReLU, max pooling, flatten)")
    if state != "current":
        raise refusal(method, last[0], last[1], "the model must end in a conv or linear read-out")
    return Plan(units, pools, drops)


def replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent), name, new)


def install_chain_(
    model: nn.Module,
    found: Plan,
    method: str,
    neurons: list[str],
    neuron: Callable[[int, int], nn.Module],
    readout: Callable[[int, int], nn.Module],
    max_pool: Callable[[nn.Module], nn.Module],
) -> None:
    """Rebuild the chain ``found`` of ``model`` in place: each BN → Identity, each layer's bias (if
    it has one) moved into the module after it, ReLU k → ``neuron(k, channels)``, a
    ``readout(k, channels)`` appended after the last layer (k: the unit's place from 1), each max
    pool → ``max_pool(pool)``, each dropout → Identity. ``neurons``: the ReLU paths a spec names,
    checked against ``found``."""
    if neurons != found.neurons:
        raise ValueError(f"{method}: the spec names the neurons {neurons}, the model has the ReLUs "
                         f"{found.neurons}")
    for k, u in enumerate(found.units, start=1):
        layer = model.get_submodule(u.synapse)
        w = layer.weight
        bias = None if layer.bias is None else layer.bias.detach().clone()
        layer.bias = None  # the bias is a current of the neuron (or read-out) after the layer
        if u.bn is not None:
            replace(model, u.bn, nn.Identity())
        channels = layer.out_channels if isinstance(layer, nn.Conv1d | nn.Conv2d) else (
            layer.out_features)
        target = neuron(k, channels) if u.relu is not None else readout(k, channels)
        target = target.to(device=w.device, dtype=w.dtype)
        if bias is not None:
            target.bias.copy_(bias)
        if u.relu is not None:
            replace(model, u.relu, target)
        else:
            container = model.get_submodule(u.synapse.rpartition(".")[0])
            if not isinstance(container, nn.Sequential):
                raise refusal(method, u.synapse, layer, "the read-out layer must sit in a "
                              "Sequential")
            container.add_module("readout", target)  # runs after everything in its chain
    for path in found.pools:
        replace(model, path, max_pool(model.get_submodule(path)))
    for path in found.drops:
        replace(model, path, nn.Identity())


def folded_copy(
    ann: nn.Module, method: str, found: Plan, thresholds: dict[str, float]
) -> nn.Module:
    """A copy of the ANN twin ``ann`` (left unchanged) with every BN folded, once ``thresholds``
    (ReLU path → activation scale λ) is checked: one for every neuron of ``found``, all > 0."""
    missing = [n for n in found.neurons if n not in thresholds]
    if missing:
        raise ValueError(f"{method}: no threshold for the ReLUs {missing[:3]}")
    bad = {n: v for n, v in thresholds.items() if not v > 0}
    if bad:
        raise ValueError(f"{method}: thresholds must be > 0, got {bad}")
    net = copy.deepcopy(ann)
    net.spec = copy.deepcopy(ann.spec)
    fold_batchnorm_(net, strict=True)
    net.spec.pop("folded_bn", None)  # the converted structure has no BN either way: its installer
    return net
