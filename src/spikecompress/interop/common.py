"""What every converter shares: torch layers → ours with their weights, and refusals by name.

A foreign framework's synaptic and shape layers are torch modules (SpikingJelly's ``layer.*``
subclass them); ``map_layer`` gives our time-folded twin of one (``snn.layers``) with the same
parameters and buffers, so the converted model computes the same floats in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from spikecompress.snn import layers as seq

# torch class -> (our class, constructor arguments read from the module)
_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")


def _conv_args(m):
    if m.padding_mode != "zeros":
        raise ValueError(f"padding_mode {m.padding_mode!r} (only 'zeros' is supported)")
    return {k: getattr(m, k) for k in _CONV} | {"bias": m.bias is not None}


def _bn_args(m):
    return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
            "affine": m.affine, "track_running_stats": m.track_running_stats}


def _pool_args(m, avg: bool):
    out = {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
           "ceil_mode": m.ceil_mode}
    if avg:
        if m.divisor_override is not None:
            raise ValueError("divisor_override is not supported")
        out["count_include_pad"] = m.count_include_pad
    elif m.dilation not in (1, (1, 1)) or m.return_indices:
        raise ValueError("max pooling with dilation or return_indices is not supported")
    return out


LAYERS: list[tuple[type, type, object]] = [  # checked in order: subclasses before bases
    (nn.Conv1d, seq.Conv1d, _conv_args),
    (nn.Conv2d, seq.Conv2d, _conv_args),
    (nn.Linear, seq.Linear, lambda m: {"in_features": m.in_features,
                                       "out_features": m.out_features,
                                       "bias": m.bias is not None}),
    (nn.BatchNorm1d, seq.BatchNorm1d, _bn_args),
    (nn.BatchNorm2d, seq.BatchNorm2d, _bn_args),
    (nn.MaxPool1d, seq.MaxPool1d, lambda m: _pool_args(m, False)),
    (nn.MaxPool2d, seq.MaxPool2d, lambda m: _pool_args(m, False)),
    (nn.AvgPool1d, seq.AvgPool1d, lambda m: _pool_args(m, True)),
    (nn.AvgPool2d, seq.AvgPool2d, lambda m: _pool_args(m, True)),
    (nn.AdaptiveAvgPool2d, seq.AdaptiveAvgPool2d, lambda m: {"output_size": m.output_size}),
    (nn.Dropout, seq.Dropout, lambda m: {"p": m.p}),
]


def map_layer(module: nn.Module, name: str, framework: str) -> nn.Module | None:
    """Our twin of a torch layer with its parameters and buffers copied; None for a module that
    is not a plain torch layer; a one-line ValueError for a layer configured as we cannot run."""
    for torch_cls, ours, args in LAYERS:
        if isinstance(module, torch_cls):
            try:
                twin = ours(**args(module))
            except ValueError as e:
                raise ValueError(f"{framework}: layer {name!r} ({type(module).__name__}): "
                                 f"{e}") from None
            with torch.no_grad():
                twin.load_state_dict(module.state_dict(), strict=True)
            return twin.to(next(iter(module.state_dict().values()), torch.zeros(())).device)
    if isinstance(module, nn.Flatten):
        if (module.start_dim, module.end_dim) != (1, -1):
            raise ValueError(f"{framework}: layer {name!r} ({type(module).__name__}) flattens dims "
                             f"{module.start_dim}..{module.end_dim}; only one whole sample "
                             f"(start_dim 1, end_dim -1) is supported")
        return seq.Flatten()
    return None


def refuse(framework: str, name: str, module: nn.Module, why: str = "") -> ValueError:
    """The one-line error for a module a converter does not know."""
    cls = f"{type(module).__module__}.{type(module).__qualname__}"
    return ValueError(f"{framework}: module {name!r} ({cls}) has no spikecompress counterpart"
                      + (f": {why}" if why else ""))


def qualified(name: str) -> str:
    """A node name from a module path: ``layer1.0.conv1`` → ``layer1_0_conv1``."""
    return name.replace(".", "_") or "root"


def first_line(e: BaseException) -> str:
    """An exception as one line: its class and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def load_state(model: nn.Module, state_dict, framework: str, unwrap: str | None = None) -> None:
    """Load ``state_dict`` (a path, read with ``torch.load(weights_only=True)``, or a mapping of
    names to tensors; ``unwrap``: a key under which a checkpoint keeps it) into ``model``,
    strictly; a one-line ValueError names the file and what does not fit."""
    where = "the state dict"
    if isinstance(state_dict, str | os.PathLike):
        where = f"state dict {os.fspath(state_dict)!r}"
        try:
            state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
        except Exception as e:  # a missing, corrupt or unsafe file
            raise ValueError(f"{framework}: cannot load {where}: {first_line(e)}") from None
    if unwrap and isinstance(state_dict, Mapping) and isinstance(state_dict.get(unwrap), Mapping):
        state_dict = state_dict[unwrap]
    if not isinstance(state_dict, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise ValueError(f"{framework}: {where} is not a mapping of names to tensors")
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or shapes:
        parts = [f"{what} {keys[:5]}{' ...' if len(keys) > 5 else ''}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("other shapes", shapes))
                 if keys]
        raise ValueError(f"{framework}: {where} does not fit {type(model).__name__}: "
                         + "; ".join(parts))
    model.load_state_dict(dict(state_dict), strict=True)


def check_and_load(model: nn.Module, example, state_dict, framework: str,
                   unwrap: str | None = None) -> None:
    """A converter's boundary: ``model`` a module, ``example`` a float tensor (TypeError), then
    ``state_dict`` (when given) loaded into ``model`` by ``load_state``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{framework}: model must be a torch.nn.Module, got "
                        f"{type(model).__name__}")
    if not isinstance(example, torch.Tensor) or not example.is_floating_point():
        raise TypeError(f"{framework}: example must be a float tensor, got "
                        f"{getattr(example, 'dtype', type(example).__name__)}")
    if state_dict is not None:
        load_state(model, state_dict, framework, unwrap)
