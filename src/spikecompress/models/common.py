"""Pieces every model family shares: the neuron factory, the network shell and its blocks.

The activation is chosen once per model: a spiking neuron (``LIF``, ``IF``, ``PLIF``) or, for the
ANN twin (``spiking=False``), ``nn.ReLU`` at the same place. Each block is conv → BN → activation,
so BN always sits between the synaptic layer and the neuron; module names are stable (``conv``,
``bn``, ``act``, ``pool``; ``features``, ``classifier``) because compression code selects layers
by fully qualified name.

The BN is chosen once per model too (``norm``): "bn", one BatchNorm over time and batch together
(the default), or "bntt", Batch Normalization Through Time (``snn.BNTT``: one BatchNorm per time
step, γ only; Kim & Panda 2021), which needs ``steps``, the T the model runs at. Either sits at
``bn`` (``bn{i}`` in a classifier).
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from spikecompress.models.checks import check_bool, check_choice, check_float, check_int
from spikecompress.snn import (
    NEURONS,
    SURROGATES,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    BNTT1d,
    BNTT2d,
    Conv1d,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
)

Act = Callable[[int], nn.Module]  # channels -> activation module over [T, B, channels, ...]
# (channels, dims) -> a block's BN: dims 1 over [T, B, C] or [T, B, C, L], 2 over [T, B, C, H, W]
Norm = Callable[[int, int], nn.Module]

POOLS = ("max", "avg")
NORMS = ("bn", "bntt")

# Neuron parameters per neuron type, with defaults (SpikingJelly's names). Every neuron also takes
# "surrogate" (a name of SURROGATES), that surrogate's own fields (e.g. "alpha") and "per_channel"
# (tau / v_threshold / PLIF's w as one value per channel, so surgery and quantization see [C]).
_NEURON_DEFAULTS: dict[str, dict[str, object]] = {
    "lif": {"tau": 2.0, "v_threshold": 1.0, "v_reset": 0.0, "decay_input": True,
            "detach_reset": False},
    "if": {"v_threshold": 1.0, "v_reset": 0.0, "detach_reset": False},
    "plif": {"init_tau": 2.0, "v_threshold": 1.0, "v_reset": 0.0, "decay_input": True,
             "detach_reset": False},
}


def _surrogate_fields(name: str) -> dict[str, float]:
    return {f.name: f.default for f in dataclasses.fields(SURROGATES[name])}


def _check_neuron_value(key: str, value: object) -> object:
    name = f"neuron_params.{key}"
    if key in ("tau", "init_tau"):
        return check_float(name, value, above=1.0)
    if key == "v_reset":  # None = soft reset by subtraction
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{name} must be a number or null, got {value!r}")
        return None if value is None else float(value)
    if key in ("decay_input", "detach_reset", "per_channel"):
        return check_bool(name, value)
    if key == "surrogate":
        return check_choice(name, value, list(SURROGATES))
    return check_float(name, value, above=0.0)  # v_threshold and the surrogate's sharpness


def resolve_neuron(neuron: object, neuron_params: object) -> tuple[str, dict[str, object]]:
    """Validate the neuron choice and fill in every default.

    Returns (neuron name, complete JSON-serialisable parameter dict) for the model's spec.
    """
    neuron = check_choice("neuron", neuron, list(NEURONS))
    params = {} if neuron_params is None else neuron_params
    if not isinstance(params, dict):
        raise ValueError(f"neuron_params must be a dict or null, got {neuron_params!r}")
    surrogate = _check_neuron_value("surrogate", params.get("surrogate", "atan"))
    defaults = {**_NEURON_DEFAULTS[neuron], "surrogate": surrogate, "per_channel": False,
                **_surrogate_fields(surrogate)}
    for key in params:
        if key not in defaults:
            raise ValueError(f"neuron_params.{key} is not a parameter of neuron {neuron!r} with "
                             f"surrogate {surrogate!r} (known: {sorted(defaults)})")
    return neuron, {k: _check_neuron_value(k, params.get(k, v)) for k, v in defaults.items()}


def activation(spiking: bool, neuron: str, params: dict[str, object]) -> Act:
    """The activation factory of a model: ``act(channels)`` gives a fresh neuron, or ReLU.

    ``params`` is the dict returned by ``resolve_neuron``.
    """
    if not spiking:
        return lambda channels: nn.ReLU()
    surrogate_name = params["surrogate"]
    fields = _surrogate_fields(surrogate_name)
    surrogate = SURROGATES[surrogate_name](**{k: params[k] for k in fields})
    kwargs = {k: v for k, v in params.items() if k in _NEURON_DEFAULTS[neuron]}

    def act(channels: int) -> nn.Module:
        per = dict(kwargs)
        if params["per_channel"]:
            for key in ("tau", "v_threshold"):
                if key in per:
                    per[key] = torch.full((channels,), per[key])
            if neuron == "plif":
                per["channels"] = channels
        return NEURONS[neuron](surrogate=surrogate, **per)

    return act


def resolve_norm(norm: object, steps: object) -> tuple[str, int | None]:
    """Validate the norm choice: (``norm``, ``steps``) for the spec; ``steps`` (an int >= 1) is
    required by "bntt" and must be None (null) for "bn"."""
    norm = check_choice("norm", norm, NORMS)
    if norm == "bntt":
        if steps is None:
            raise ValueError("steps must be an int >= 1 (the time steps T the model runs at) "
                             "when norm is 'bntt', got None")
        return norm, check_int("steps", steps)
    if steps is not None:
        raise ValueError(f"steps is only for norm 'bntt' (one BatchNorm per time step); with "
                         f"norm 'bn' it must be null, got {steps!r}")
    return norm, None


def norm_factory(norm: str = "bn", steps: int | None = None) -> Norm:
    """The BN factory of a model (arguments from ``resolve_norm``): ``make(channels, dims)``."""

    def make(channels: int, dims: int) -> nn.Module:
        if norm == "bntt":
            return (BNTT1d if dims == 1 else BNTT2d)(channels, steps)
        return (BatchNorm1d if dims == 1 else BatchNorm2d)(channels)

    return make


_plain_bn = norm_factory()


def conv_bn_act(
    in_channels: int, out_channels: int, kernel: int, stride: int, padding: int, act: Act,
    dims: int = 2, pool: nn.Module | None = None, norm: Norm = _plain_bn,
) -> nn.Sequential:
    """conv (no bias) → BN → activation [→ pool], over [T, B, C, L] (dims=1) or [T, B, C, H, W];
    ``norm`` makes the BN (``norm_factory``; default a plain BN)."""
    conv = Conv1d if dims == 1 else Conv2d
    layers = OrderedDict(
        conv=conv(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False),
        bn=norm(out_channels, dims),
        act=act(out_channels),
    )
    if pool is not None:
        layers["pool"] = pool
    return nn.Sequential(layers)


def pool_layer(pool: str) -> nn.Module:
    """2×2 max or average pooling with stride 2 over [T, B, C, H, W]."""
    return MaxPool2d(2) if pool == "max" else AvgPool2d(2)


def conv_stack(
    in_channels: int, widths: list[int], pooled: list[bool], pool: str, size: tuple[int, int],
    act: Act, norm: Norm = _plain_bn,
) -> tuple[nn.Sequential, int, tuple[int, int]]:
    """Block ``i``: conv3×3 (padding 1) → BN → act of ``widths[i]`` channels [→ 2×2 pool].

    Returns (the blocks, the output channels, the output (H, W) for an input of ``size``).
    """
    blocks, c = [], in_channels
    for width, pooling in zip(widths, pooled, strict=True):
        pooling_layer = pool_layer(pool) if pooling else None
        blocks.append(conv_bn_act(c, width, 3, 1, 1, act, pool=pooling_layer, norm=norm))
        c = width
        size = (size[0] // 2, size[1] // 2) if pooling else size
    return nn.Sequential(*blocks), c, size


def head(
    in_features: int, hidden: list[int], classes: int, act: Act, norm: Norm = _plain_bn
) -> nn.Sequential:
    """Flatten → [Linear (no bias) → BN → activation] per hidden width → Linear to the logits.

    [T, B, ...] → [T, B, classes]; the last Linear has a bias and no neuron after it.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=Flatten())
    for i, width in enumerate(hidden):
        layers[f"fc{i}"] = Linear(in_features, width, bias=False)
        layers[f"bn{i}"] = norm(width, 1)
        layers[f"act{i}"] = act(width)
        in_features = width
    layers["fc"] = Linear(in_features, classes)
    return nn.Sequential(layers)


class Network(nn.Module):
    """The shell of every built model: ``features`` then ``classifier``, [T, B, ...] → [T, B, K].

    ``in_shape`` is one sample's shape (C, H, W), (C, L) or (F,); a model with ``in_shape`` (F,)
    (the MLP) takes any sample shape with F elements and flattens it. ``spec`` is the
    JSON-serialisable dict that ``spikecompress.models.from_spec`` rebuilds the model from.
    """

    def __init__(
        self, features: nn.Module, classifier: nn.Module, in_shape: tuple[int, ...], spec: dict
    ) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.in_shape = tuple(in_shape)
        self.spec = spec

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        """x_seq [T, B, *in_shape] → per-step logits [T, B, classes]."""
        sample = tuple(x_seq.shape[2:])
        flat_ok = len(self.in_shape) == 1 and math.prod(sample) == self.in_shape[0]
        if x_seq.dim() < 3 or not (sample == self.in_shape or flat_ok):
            raise ValueError(f"{self.spec['name']} expects x_seq of shape [T, B, "
                             f"{', '.join(map(str, self.in_shape))}], got {list(x_seq.shape)}")
        if flat_ok:
            x_seq = x_seq.flatten(2)  # [T, B, d1, d2, ...] -> [T, B, F]
        return self.classifier(self.features(x_seq))
