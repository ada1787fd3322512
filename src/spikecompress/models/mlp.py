"""Spiking multi-layer perceptron: flattened input, then Linear → BN → neuron per hidden size."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from spikecompress.models.checks import check_bool, check_int, check_int_list
from spikecompress.models.common import (
    Network,
    activation,
    norm_factory,
    resolve_neuron,
    resolve_norm,
)
from spikecompress.snn import Linear


def mlp(
    *,
    in_features: int,
    classes: int,
    widths: Sequence[int] = (256, 128),
    spiking: bool = True,
    neuron: str = "lif",
    neuron_params: dict | None = None,
    norm: str = "bn",
    steps: int | None = None,
) -> Network:
    """Spiking MLP: [T, B, ...] (``in_features`` elements per sample) → logits [T, B, classes].

    Args:
        in_features: elements of one input sample (e.g. 64 for 1×8×8 digits); inputs of any sample
            shape with that many elements are flattened.
        classes: number of output logits.
        widths: hidden sizes; block ``features.{i}`` is Linear (no bias) → BN → neuron of
            ``widths[i]`` units; ``[]`` gives a linear read-out.
        spiking: False gives the ANN twin (ReLU in place of every neuron).
        neuron: "lif", "if" or "plif"; neuron_params: see ``spikecompress.models.common``.
        norm: "bn" (one BatchNorm over time and batch) or "bntt" (one BatchNorm per time step,
            γ only: ``snn.BNTT``); steps: the T of the model, required by "bntt", else null.
    """
    in_features = check_int("in_features", in_features)
    classes = check_int("classes", classes)
    widths = check_int_list("widths", widths)
    spiking = check_bool("spiking", spiking)
    neuron, neuron_params = resolve_neuron(neuron, neuron_params)
    act = activation(spiking, neuron, neuron_params)
    norm, steps = resolve_norm(norm, steps)
    bn = norm_factory(norm, steps)

    blocks, f = [], in_features
    for width in widths:
        layers = OrderedDict(fc=Linear(f, width, bias=False), bn=bn(width, 1), act=act(width))
        blocks.append(nn.Sequential(layers))
        f = width
    classifier = nn.Sequential(OrderedDict(fc=Linear(f, classes)))
    spec = {
        "name": "mlp", "in_features": in_features, "classes": classes, "widths": widths,
        "spiking": spiking, "neuron": neuron, "neuron_params": neuron_params, "norm": norm,
        "steps": steps,
    }
    return Network(nn.Sequential(*blocks), classifier, (in_features,), spec)
