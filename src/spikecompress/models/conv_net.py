"""Small spiking CNN for 8×8 digits, 22×22 event frames and 28×28 MNIST (data.md §3)."""

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


def default_pools(size: tuple[int, int], layers: int) -> list[int]:
    """Pool after each of the last k conv layers, k the most halvings that keep the map >= 2×2.

    8×8 and 3 layers → [1, 2] (2×2 left), 28×28 → [0, 1, 2] (3×3), 22×22 → [0, 1, 2] (2×2).
    """
    k, side = 0, min(size)
    while k < layers and side // 2 >= 2:
        side, k = side // 2, k + 1
    return list(range(layers - k, layers))


def _check_pools(pools: object, size: tuple[int, int], layers: int) -> list[int]:
    if pools is None:
        return default_pools(size, layers)
    pools = check_int_list("pools", pools, minimum=0)
    if pools != sorted(set(pools)) or any(p >= layers for p in pools):
        raise ValueError(f"pools must be increasing layer indices < {layers}, got {pools}")
    return pools


def conv_net(
    *,
    in_channels: int,
    input_size: int | Sequence[int],
    classes: int,
    widths: Sequence[int] = (16, 32, 64),
    pools: Sequence[int] | None = None,
    hidden: Sequence[int] = (),
    pool: str = "max",
    spiking: bool = True,
    neuron: str = "lif",
    neuron_params: dict | None = None,
    norm: str = "bn",
    steps: int | None = None,
) -> Network:
    """Small spiking CNN: [T, B, C, H, W] → logits [T, B, classes].

    Block ``features.{i}`` is conv3×3 (padding 1, no bias) → BN → neuron with ``widths[i]``
    channels, followed by a 2×2 pooling when ``i`` is in ``pools``; then the ``classifier``
    flattens and reads out. The data.md digits reference ("3×conv3 16-32-64 + BN, 26.0k
    params") is ``conv_net(in_channels=1, input_size=8, classes=10)``.

    Args:
        in_channels, input_size (int for square, or [H, W]), classes: the data.
        widths: conv channels per layer.
        pools: indices of the layers followed by pooling; None picks ``default_pools``, and the
            resolved list is what the spec records.
        hidden: widths of hidden classifier layers.
        pool: "max" or "avg".
        spiking: False gives the ANN twin (ReLU in place of every neuron).
        neuron: "lif", "if" or "plif"; neuron_params: see ``spikecompress.models.common``.
        norm: "bn" (one BatchNorm over time and batch) or "bntt" (one BatchNorm per time step,
            γ only: ``snn.BNTT``); steps: the T of the model, required by "bntt", else null.
    """
    in_channels = check_int("in_channels", in_channels)
    input_size, in_size = check_size("input_size", input_size, dims=2)
    classes = check_int("classes", classes)
    widths = check_int_list("widths", widths, min_len=1)
    pools = _check_pools(pools, in_size, len(widths))
    hidden = check_int_list("hidden", hidden)
    pool = check_choice("pool", pool, POOLS)
    spiking = check_bool("spiking", spiking)
    neuron, neuron_params = resolve_neuron(neuron, neuron_params)
    act = activation(spiking, neuron, neuron_params)
    norm, steps = resolve_norm(norm, steps)
    bn = norm_factory(norm, steps)

    pooled = [i in pools for i in range(len(widths))]
    features, c, size = conv_stack(in_channels, widths, pooled, pool, in_size, act, bn)
    check_nonempty_output("pools", size)
    spec = {
        "name": "conv_net", "in_channels": in_channels, "input_size": input_size,
        "classes": classes, "widths": widths, "pools": pools, "hidden": hidden, "pool": pool,
        "spiking": spiking, "neuron": neuron, "neuron_params": neuron_params, "norm": norm,
        "steps": steps,
    }
    classifier = head(c * size[0] * size[1], hidden, classes, act, bn)
    return Network(features, classifier, (in_channels, *in_size), spec)
