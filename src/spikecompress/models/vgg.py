"""Spiking VGG-11 / VGG-16 (Simonyan & Zisserman 2015) with BN, as used for CIFAR in the SNN
literature (e.g. Sengupta et al. 2019; Rathi et al. 2020): conv3×3-BN-neuron stacks with 2×2
pooling and a Linear read-out of the flattened features."""

from __future__ import annotations

from collections.abc import Sequence

from spikecompress.models.checks import (
    check_bool,
    check_choice,
    check_int,
    check_int_list,
    check_nonempty_output,
    check_size,
)
from spikecompress.models.common import (
    POOLS,
    Network,
    activation,
    conv_stack,
    head,
    norm_factory,
    resolve_neuron,
    resolve_norm,
)

# The layer lists of the standard VGGs: an int is a conv3×3 of that width, "M" a 2×2 pooling.
VGG_WIDTHS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def _check_layers(widths: object) -> list[int | str]:
    if isinstance(widths, str) or not isinstance(widths, Sequence) or not widths:
        raise ValueError(f"widths must be a non-empty list of ints and 'M', got {widths!r}")
    out: list[int | str] = []
    for i, w in enumerate(widths):
        if w == "M" and out and out[-1] != "M":
            out.append("M")
        elif w == "M":
            raise ValueError(f"widths[{i}]: 'M' must follow a conv width, got {widths!r}")
        else:
            out.append(check_int(f"widths[{i}]", w))
    return out


def _resolve_widths(widths: object, depth: object) -> list[int | str]:
    if widths is not None and depth is not None:
        raise ValueError("give either widths or depth, not both")
    if widths is None:
        depth = 11 if depth is None else depth
        if depth not in VGG_WIDTHS:
            raise ValueError(f"depth must be one of {list(VGG_WIDTHS)}, got {depth!r}")
        return list(VGG_WIDTHS[depth])
    return _check_layers(widths)


def _split(layers: list[int | str]) -> tuple[list[int], list[bool]]:
    """[64, "M", 128] → conv widths [64, 128] and whether a pooling follows each [True, False]."""
    convs, pooled = [], []
    for w in layers:
        if w == "M":
            pooled[-1] = True  # _check_layers guarantees a conv before every "M"
        else:
            convs.append(w)
            pooled.append(False)
    return convs, pooled


def vgg(
    *,
    in_channels: int,
    input_size: int | Sequence[int],
    classes: int,
    widths: Sequence[int | str] | None = None,
    depth: int | None = None,
    hidden: Sequence[int] = (),
    pool: str = "max",
    spiking: bool = True,
    neuron: str = "lif",
    neuron_params: dict | None = None,
    norm: str = "bn",
    steps: int | None = None,
) -> Network:
    """Spiking VGG: [T, B, C, H, W] → logits [T, B, classes].

    Block ``features.{k}`` is the k-th conv: conv3×3 (padding 1, no bias) → BN → neuron, with its
    ``pool`` when an "M" follows it in ``widths``. On 32×32 inputs the five poolings of VGG-11/16
    leave 512×1×1 features for the ``classifier``.

    Args:
        in_channels, input_size (int for square, or [H, W]), classes: the data.
        widths: layer list, ints (conv widths) and "M" (pooling); a pruned model keeps the "M"s
            and has smaller ints. None selects ``VGG_WIDTHS[depth]``.
        depth: 11 or 16, only when ``widths`` is None (default 11). The spec records the resolved
            ``widths`` and ``depth: None``.
        hidden: widths of hidden classifier layers (Linear → BN → neuron).
        pool: "max" or "avg".
        spiking: False gives the ANN twin (ReLU in place of every neuron).
        neuron: "lif", "if" or "plif"; neuron_params: see ``spikecompress.models.common``.
        norm: "bn" (one BatchNorm over time and batch) or "bntt" (one BatchNorm per time step,
            γ only: ``snn.BNTT``); steps: the T of the model, required by "bntt", else null.
    """
    in_channels = check_int("in_channels", in_channels)
    input_size, size = check_size("input_size", input_size, dims=2)
    classes = check_int("classes", classes)
    layers = _resolve_widths(widths, depth)
    hidden = check_int_list("hidden", hidden)
    pool = check_choice("pool", pool, POOLS)
    spiking = check_bool("spiking", spiking)
    neuron, neuron_params = resolve_neuron(neuron, neuron_params)
    act = activation(spiking, neuron, neuron_params)
    norm, steps = resolve_norm(norm, steps)
    bn = norm_factory(norm, steps)

    convs, pooled = _split(layers)
    features, c, shape = conv_stack(in_channels, convs, pooled, pool, size, act, bn)
    check_nonempty_output("widths", shape)
    spec = {
        "name": "vgg", "in_channels": in_channels, "input_size": input_size, "classes": classes,
        "widths": layers, "depth": None, "hidden": hidden, "pool": pool, "spiking": spiking,
        "neuron": neuron, "neuron_params": neuron_params, "norm": norm, "steps": steps,
    }
    classifier = head(c * shape[0] * shape[1], hidden, classes, act, bn)
    return Network(features, classifier, (in_channels, *size), spec)
