"""Spiking 1-D CNN for MNIST-1D: the published ConvBase (Greydanus 2020), BN before each neuron."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from spikecompress.models.checks import (
    check_bool,
    check_int,
    check_int_list,
    check_nonempty_output,
    check_size,
)
from spikecompress.models.common import (
    Network,
    activation,
    conv_bn_act,
    head,
    norm_factory,
    resolve_neuron,
    resolve_norm,
)


def conv1d_net(
    *,
    in_channels: int,
    input_size: int,
    classes: int,
    widths: Sequence[int] = (25, 25, 25),
    hidden: Sequence[int] = (),
    spiking: bool = True,
    neuron: str = "lif",
    neuron_params: dict | None = None,
    norm: str = "bn",
    steps: int | None = None,
) -> Network:
    """Spiking ConvBase: [T, B, C, L] → logits [T, B, classes].

    As mnist1d's ConvBase: Conv1d kernel 5 then kernel 3 for every later layer, all with stride 2
    and padding 1 (40 → 19 → 10 → 5), then a Linear over the flattened features. Here each conv
    has no bias and is followed by BN and a neuron (block ``features.{i}``: conv → bn → act).
    Widths 25 give 5,285 parameters (data.md: 5.3k), widths 64 give 28,096 weights (28.1k).

    Args:
        in_channels, input_size (the length L), classes: the data (MNIST-1D: 1, 40, 10).
        widths: conv channels per layer.
        hidden: widths of hidden classifier layers (Linear → BN → neuron).
        spiking: False gives the ANN twin (ReLU in place of every neuron).
        neuron: "lif", "if" or "plif"; neuron_params: see ``spikecompress.models.common``.
        norm: "bn" (one BatchNorm over time and batch) or "bntt" (one BatchNorm per time step,
            γ only: ``snn.BNTT``); steps: the T of the model, required by "bntt", else null.
    """
    in_channels = check_int("in_channels", in_channels)
    input_size, (length,) = check_size("input_size", input_size, dims=1)
    classes = check_int("classes", classes)
    widths = check_int_list("widths", widths, min_len=1)
    hidden = check_int_list("hidden", hidden)
    spiking = check_bool("spiking", spiking)
    neuron, neuron_params = resolve_neuron(neuron, neuron_params)
    act = activation(spiking, neuron, neuron_params)
    norm, steps = resolve_norm(norm, steps)
    bn = norm_factory(norm, steps)

    blocks, c, size = [], in_channels, length
    for i, width in enumerate(widths):
        kernel = 5 if i == 0 else 3
        blocks.append(conv_bn_act(c, width, kernel, 2, 1, act, dims=1, norm=bn))
        c, size = width, (size + 2 - kernel) // 2 + 1
        check_nonempty_output("input_size", (size,))
    spec = {
        "name": "conv1d_net", "in_channels": in_channels, "input_size": input_size,
        "classes": classes, "widths": widths, "hidden": hidden, "spiking": spiking,
        "neuron": neuron, "neuron_params": neuron_params, "norm": norm, "steps": steps,
    }
    classifier = head(c * size, hidden, classes, act, bn)
    return Network(nn.Sequential(*blocks), classifier, (in_channels, length), spec)
