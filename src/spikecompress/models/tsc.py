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

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.models.ann_chain import Plan, folded_copy, install_chain_, plan_chain
from spikecompress.models.common import Network
from spikecompress.snn.tsc import TSCMaxPool, TSCNeuron, TSCReadout, tsc_input

KEY = "tsc"


class TSCNetwork(Network):
    """A ``Network`` that reads its input as TSC events: x_seq [T, B, *in_shape] static in [0, 1]
    (direct coding) or TSC events (``data.encoding: tsc``) → logits [T, B, classes]."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return super().forward(tsc_input(x_seq))


def plan(model: nn.Module) -> Plan:
    """Check that ``model`` (an ANN twin of ``spikecompress.models``) converts to TSC and return
    its layers (``models.ann_chain.plan_chain``); one-line ValueError naming the first module
    that cannot be converted."""
    return plan_chain(
        model, KEY, residual="a residual addition of spike pairs is not a spike pair",
        avg="the mean of TSC intervals is not one spike pair; build the ANN twin with pool: max "
            "(exact under TSC)")


def install_tsc_(model: nn.Module, config: dict) -> None:
    """``from_spec``'s installer (and the structural half of ``to_tsc``): turn the ANN twin
    ``model`` into a TSCNetwork in place; a layer's bias, if it has one, moves into the neuron
    (or read-out) after it. ``config``: ``{"neurons": [the ReLU paths]}``, checked against the
    model."""
    if not isinstance(config, dict) or not isinstance(config.get("neurons"), list):
        raise ValueError(f"tsc: the spec's config must be {{'neurons': [paths]}}, got {config!r}")
    found = plan(model)
    install_chain_(model, found, KEY, config["neurons"],
                   neuron=lambda k, channels: TSCNeuron(channels),
                   readout=lambda k, channels: TSCReadout(channels), max_pool=TSCMaxPool)
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
    net = folded_copy(ann, KEY, found, thresholds)
    install_tsc_(net, {"neurons": found.neurons})
    scale = 1.0  # the value a spike pair of the layer's input stands for (x itself: 1)
    for u in found.units:
        net.get_submodule(u.synapse).weight.mul_(scale)
        if u.relu is not None:
            scale = float(thresholds[u.relu])
            net.get_submodule(u.relu).v_threshold.fill_(scale)
    return net.eval()
