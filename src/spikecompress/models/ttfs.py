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

import torch
from torch import nn

from spikecompress.models.ann_chain import Plan, folded_copy, install_chain_, plan_chain
from spikecompress.models.common import Network
from spikecompress.snn.ttfs import TTFSMaxPool, TTFSNeuron, TTFSReadout, ttfs_input

KEY = "ttfs"


class TTFSNetwork(Network):
    """A ``Network`` that reads its input as an analog onset: x_seq [T, B, *in_shape] static
    (``data.encoding: direct``) or its onset (``data.encoding: ttfs``) → logits [T, B, classes]
    (0 except at the last step: ``snn.ttfs.TTFSReadout``)."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return super().forward(ttfs_input(x_seq))


def plan(model: nn.Module) -> Plan:
    """Check that ``model`` (an ANN twin of ``spikecompress.models``) converts to TTFS and return
    its layers (``models.ann_chain.plan_chain``); one-line ValueError naming the first module
    that cannot be converted."""
    return plan_chain(
        model, KEY, residual="a residual addition of spikes is not one first spike",
        avg="the mean of spike times is not a spike time; build the ANN twin with pool: max (the "
            "earliest spike: exact under TTFS)", parametrized=True)


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
    install_chain_(model, found, KEY, neurons,
                   neuron=lambda k, channels: TTFSNeuron(channels, window=window, layer=k),
                   readout=lambda k, channels: TTFSReadout(channels, window=window, layer=k),
                   max_pool=TTFSMaxPool)
    model.__class__ = TTFSNetwork
    model.spec[KEY] = {"neurons": list(found.neurons), "window": window}


@torch.no_grad()
def to_ttfs(ann: nn.Module, thresholds: dict[str, float], window: int = 0) -> TTFSNetwork:
    """A TTFS network from the trained ANN twin ``ann`` (left unchanged): BN folded, ReLU
    ``name`` → a TTFS neuron, the weights and biases normalised by the activation scales
    ``thresholds[name]`` (λ > 0; see the module docstring); ``window`` 0: the concurrent schedule
    (threshold 1), W > 0: the layered one (threshold W + 1/2)."""
    found = plan(ann)
    net = folded_copy(ann, KEY, found, thresholds)
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
