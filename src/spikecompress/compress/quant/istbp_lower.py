"""Lowering a spikecompress ``Network`` into Integer-STBP's integer op list (``istbp_ops``).

conv / linear (+ the BN after it) → ``_Synapse`` (its current in the membrane units of the
neuron it feeds), LIF / IF → ``_Neuron``, pooling → ``_Pool`` / ``_GlobalPool``, flatten →
``_Flatten``, SEW blocks → ``_Residual``; any other module, a parametrized or hooked one, and a
model that is not a plain ``Network`` are refused by name. What becomes of each layer, and why:
``istbp``'s module docstring (Lowering).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.compress.quant.istbp_ops import (
    _Flatten,
    _GlobalPool,
    _Neuron,
    _Pool,
    _Residual,
    _Synapse,
)
from spikecompress.models.common import Network
from spikecompress.models.resnet import SEWBlock
from spikecompress.snn.neuron import IF, LIF

_POOLS = {nn.MaxPool1d: ("max", 1), nn.MaxPool2d: ("max", 2),
          nn.AvgPool1d: ("avg", 1), nn.AvgPool2d: ("avg", 2)}


def _lower(model: nn.Module, window: float) -> list:
    """The integer op list of a spikecompress ``Network`` (features → classifier)."""
    if not isinstance(model, Network):
        raise ValueError(f"istbp: model must be a spikecompress Network (features → classifier), "
                         f"got {type(model).__name__}")
    for key in ("exit_policy", "time_stages"):
        if model.spec.get(key) is not None:
            raise ValueError(f"istbp: model.spec.{key}: the integer datapath runs the plain "
                             f"network only")
    synapses: list[_Synapse] = []

    def items(module: nn.Module, prefix: str) -> list:
        out = []
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            out.extend(items(child, full) if isinstance(child, nn.Sequential) else [(full, child)])
        return out

    def lower(seq: list) -> list:
        ops, i = [], 0
        while i < len(seq):
            name, mod = seq[i]
            if parametrize.is_parametrized(mod) or mod._forward_hooks or mod._forward_pre_hooks:
                raise ValueError(f"istbp: {name} carries a parametrization or hook; lower a plain "
                                 f"model")
            if isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Linear):
                if isinstance(mod, nn.Conv1d | nn.Conv2d) and (
                        mod.groups != 1 or set(mod.dilation) != {1} or isinstance(mod.padding, str)
                        or mod.padding_mode != "zeros"):
                    raise ValueError(f"istbp: {name} must be a plain conv (groups 1, dilation 1, "
                                     f"numeric zero padding), got {mod}")
                bn = None
                if i + 1 < len(seq) and isinstance(seq[i + 1][1], nn.modules.batchnorm._BatchNorm):
                    bn, i = seq[i + 1][1], i + 1
                    _check_bn(seq[i][0], bn)
                syn = _Synapse(name, mod, bn, len(synapses))
                synapses.append(syn)
                ops.append(syn)
                if i + 1 < len(seq) and isinstance(seq[i + 1][1], LIF | IF):  # membrane units
                    neuron, i = _Neuron(*seq[i + 1], window), i + 1
                    syn.out_exp = neuron.exp
                    ops.append(neuron)
                else:
                    syn.out_exp = None  # logits: fw + OUT_BITS, set with fw
            elif isinstance(mod, LIF | IF):
                ops.append(_Neuron(name, mod, window))
            elif isinstance(mod, tuple(_POOLS)):
                kind, d = next(v for t, v in _POOLS.items() if isinstance(mod, t))
                ops.append(_Pool(name, mod, kind, d))
            elif isinstance(mod, nn.AdaptiveAvgPool2d):
                size = mod.output_size
                if size not in (1, (1, 1)):
                    raise ValueError(f"istbp: {name} must pool to 1×1, got {size}")
                ops.append(_GlobalPool(name))
            elif isinstance(mod, nn.Flatten):
                ops.append(_Flatten(name))
            elif isinstance(mod, SEWBlock):
                branch = lower([(f"{name}.{n}", getattr(mod, n)) for n in
                                ("conv1", "bn1", "act1", "conv2", "bn2", "act2")])
                short = [] if mod.downsample is None else lower(items(mod.downsample,
                                                                      f"{name}.downsample"))
                ops.append(_Residual(name, branch, short))
            elif isinstance(mod, nn.Identity):
                pass
            else:
                raise ValueError(f"istbp: cannot lower {name} ({type(mod).__name__}): the integer "
                                 f"datapath has conv / linear (+ BN), LIF / IF, pooling, flatten "
                                 f"and SEW additions")
            i += 1
        return ops

    ops = [_Flatten("input")] if len(model.in_shape) == 1 else []
    ops += lower(items(model.features, "features")) + lower(items(model.classifier, "classifier"))
    if not synapses:
        raise ValueError("istbp: the model has no conv or linear layer")
    return ops


def _check_bn(name: str, bn: nn.Module) -> None:
    """A foldable BN whose float image can be an exact per-channel shift (``istbp``: Float
    mirror)."""
    if bn.weight is None or bn.running_var is None:
        raise ValueError(f"istbp: {name} must be an affine BatchNorm with running statistics")
    var = torch.full((), 1.0 - bn.eps, dtype=bn.running_var.dtype)
    if float(torch.rsqrt(var + bn.eps)) != 1.0:
        raise ValueError(f"istbp: {name} eps {bn.eps} leaves no running_var with 1/√(var + eps)"
                         f" = 1 in {var.dtype}")
