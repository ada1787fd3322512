"""``to_integer``: lower a finalized quantized model to its ``IntegerSNN``, checking the
quantization contract and refusing anything else by module path."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from spikecompress.export.integer.neuron_op import IntNeuronOp
from spikecompress.export.integer.ops import (
    ACC_LIMIT,
    IntConv,
    IntLinear,
    Shape,
    _codes_problem,
    _tuple,
    bits_of,
    weight_dtype,
)
from spikecompress.export.integer.program import IntegerSNN, Op
from spikecompress.export.integer.shape_ops import Flatten, MaxPool, SumPool
from spikecompress.models.common import Network
from spikecompress.models.resnet import BasicBlock, SEWBlock
from spikecompress.snn import layers as L
from spikecompress.snn.bntt import BNTT
from spikecompress.snn.integer import int_neuron
from spikecompress.snn.neuron import IF, LIF, PLIF


def _leaves(module: nn.Module, path: str) -> Iterator[tuple[str, nn.Module]]:
    """(path, module) of the modules a sequential forward runs, in order; a container whose
    forward is not plain composition is refused by name."""
    if type(module) is nn.Sequential:
        for name, child in module.named_children():
            yield from _leaves(child, f"{path}.{name}" if path else name)
        return
    if isinstance(module, BasicBlock | SEWBlock):
        raise ValueError(f"{path}: {type(module).__name__} adds a residual; residual "
                         "networks cannot be lowered to the integer SNN")
    yield path, module


_IDENTITY = (nn.Identity, nn.Dropout)
_POOLS = {L.MaxPool1d: 1, L.MaxPool2d: 2, L.AvgPool1d: 1, L.AvgPool2d: 2}
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


_HINT_LAYER = "(quantize it: uniform_quant or mint)"
_HINT_NEURON = "(quantize the membrane: uniform_quant membrane_bits or mint)"


def _need(module: nn.Module, path: str, name: str, what: str, hint: str) -> torch.Tensor:
    value = getattr(module, name, None)
    if value is None:
        raise ValueError(f"{path}: {what} without {name} cannot be lowered {hint}")
    return value.detach()


class _Lowering:
    """The state of a walk over the model's leaves: the ops so far, the current sample shape,
    the scale of the integer stream (its float value = scale · codes) and what produced it, the
    synaptic op waiting for its neuron."""

    def __init__(self, in_shape: Shape) -> None:
        self.ops: list[Op] = []
        self.shape = tuple(in_shape)
        self.scale: float | None = None  # None: before the input quantizer
        self.why = ""
        self.pending: IntConv | IntLinear | None = None
        self.input: tuple[torch.Tensor, int] | None = None

    def push(self, op: Op) -> None:
        self.shape = op.out_shape(self.shape)
        self.ops.append(op)

    def synaptic(self, path: str, m: nn.Module) -> None:
        if self.pending is not None:
            raise ValueError(f"{path}: takes the accumulator of {self.pending.name}; a synaptic "
                             "layer must feed a neuron or be the read-out")
        s_in = _need(m, path, "input_scale", "layer", _HINT_LAYER)
        s_w = _need(m, path, "weight_scale", "layer", _HINT_LAYER)
        if s_in.dim() != 0:
            raise ValueError(f"{path}: input_scale must be a scalar, got {list(s_in.shape)}")
        bits = getattr(m, "input_bits", None)
        if self.scale is None:
            if bits is None:
                raise ValueError(f"{path}: the first quantized layer has no input_bits (the "
                                 "range of the network's input codes is unknown)")
            self.input = (s_in.float().clone(), int(bits))
        else:
            if bits is not None:
                raise ValueError(f"{path}: input_bits on a layer that does not take the "
                                 "network's input")
            expected = torch.tensor(self.scale, dtype=torch.float32)
            if float(s_in) != float(expected):
                raise ValueError(f"{path}: input_scale {float(s_in):g} does not match its input "
                                 f"({self.why}: {float(expected):g})")
        grid = s_w.float() * s_in.float()
        if not bool(torch.isfinite(grid).all() & (grid > 0).all()):
            raise ValueError(f"{path}: the grid weight_scale · input_scale must be finite and "
                             "> 0")
        if s_w.dim() > 1 or s_w.numel() not in (1, m.weight.shape[0]):
            raise ValueError(f"{path}: weight_scale of shape {list(s_w.shape)} is neither a "
                             f"scalar nor one per output channel ({m.weight.shape[0]})")
        w = m.weight.detach().float()
        codes = torch.round(w / (s_w.view(-1, *[1] * (w.dim() - 1)) if s_w.dim() else s_w))
        wbits = getattr(m, "weight_bits", None)
        wbits = bits_of(codes) if wbits is None else int(wbits)
        problem = _codes_problem(codes, wbits)
        if problem is not None:
            raise ValueError(f"{path}: the weight codes round(weight / weight_scale) {problem}")
        codes = codes.to(weight_dtype(wbits))
        bias = None
        if m.bias is not None:
            b = torch.round(m.bias.detach().float() / grid)
            if not bool(b.abs().max() < ACC_LIMIT):
                raise ValueError(f"{path}: bias codes round(bias / grid) reach "
                                 f"{float(b.abs().max()):g} (>= 2^31)")
            bias = b.to(torch.int32)
        meta = (s_w.float().clone(), s_in.float().clone())
        if isinstance(m, nn.Linear):
            op = IntLinear(path, codes, bias, wbits, *meta)
        else:
            d = m.weight.dim() - 2
            if m.groups != 1 or _tuple(m.dilation, d) != (1,) * d or \
                    m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ValueError(f"{path}: only convolutions with groups 1, dilation 1 and "
                                 "numeric zero padding can be lowered")
            op = IntConv(path, codes, bias, _tuple(m.stride, d), _tuple(m.padding, d), wbits,
                         *meta)
        self.push(op)
        self.pending = op

    def neuron(self, path: str, n: nn.Module) -> None:
        if self.pending is None:
            raise ValueError(f"{path}: a neuron must follow a quantized synaptic layer")
        bits = _need(n, path, "membrane_bits", "neuron", _HINT_NEURON)
        v_reset = n.reset.v_reset
        if v_reset not in (None, 0.0):
            raise ValueError(f"{path}: hard reset to v_reset={v_reset} cannot be lowered (the "
                             "integer membrane resets by subtraction or to 0)")
        grid = _need(n, path, "input_grid", "neuron", _HINT_NEURON)
        layer = self.pending
        try:
            same = grid.dim() <= 1 and bool((grid.float() == layer.grid).all())
        except RuntimeError:  # shapes that do not broadcast
            same = False
        if not same:
            raise ValueError(f"{path}: input_grid does not match the grid of {layer.name} "
                             "(weight_scale · input_scale)")
        s_u = getattr(n, "membrane_scale", None)
        s_u = grid if s_u is None else s_u.detach()  # None: shares the input grid (MINT)
        k, a = n._decay_gain()
        k = k if n.leak is None else n.leak
        p = int_neuron(k, a, n.v_threshold, grid, s_u, int(bits), soft=v_reset is None)
        mask = getattr(n, "spike_mask", None)
        mask = None if mask is None else (mask.detach() != 0).to(torch.int8)
        self.push(IntNeuronOp(path, p, mask, s_u.float().clone()))
        self.pending, self.scale, self.why = None, 1.0, f"the spikes of {path}"

    def pool(self, path: str, m: nn.Module, d: int) -> None:
        if isinstance(m, nn.AdaptiveAvgPool2d):
            out = _tuple(m.output_size, 2)
            size = self.shape[1:]
            if len(size) != 2 or any(s % o for s, o in zip(size, out, strict=True)):
                raise ValueError(f"{path}: adaptive pooling of {list(size)} to {list(out)} is "
                                 "not a fixed window")
            kernel = stride = tuple(s // o for s, o in zip(size, out, strict=True))
            padding, avg = (0, 0), True
        else:
            kernel, stride = _tuple(m.kernel_size, d), _tuple(m.stride or m.kernel_size, d)
            padding, avg = _tuple(m.padding, d), isinstance(m, nn.AvgPool1d | nn.AvgPool2d)
            dil = 1 if avg else m.dilation
            if m.ceil_mode or (not avg and (_tuple(dil, d) != (1,) * d or m.return_indices)):
                raise ValueError(f"{path}: only pooling without ceil_mode, dilation or indices "
                                 "can be lowered")
        if not avg:
            if self.scale is None and self.pending is None:
                raise ValueError(f"{path}: pooling before the first quantized layer")
            self.push(MaxPool(path, kernel, stride, padding))
            return
        if self.pending is not None or self.scale is None:
            raise ValueError(f"{path}: average pooling is lowered as a sum on spikes; here it "
                             "does not follow a neuron")
        if any(padding) or getattr(m, "divisor_override", None):
            raise ValueError(f"{path}: only average pooling without padding or divisor_override "
                             "can be lowered")
        area = math.prod(kernel)
        self.push(SumPool(path, kernel, stride))
        self.scale /= area
        self.why = f"{self.why} sum-pooled by {path} (area {area})"


def _network_leaves(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    if isinstance(model, Network):
        spec = getattr(model, "spec", {}) or {}
        if spec.get("time_stages") is not None:
            raise ValueError("time_stages: temporal transformers between stages cannot be "
                             "lowered to the integer SNN")
        yield from _leaves(model.features, "features")
        yield from _leaves(model.classifier, "classifier")
    elif type(model) is nn.Sequential:
        yield from _leaves(model, "")
    else:
        raise ValueError(f"{type(model).__name__}: only a models.Network or an nn.Sequential "
                         "can be lowered to the integer SNN")


def to_integer(model: nn.Module, in_shape: Shape | None = None) -> IntegerSNN:
    """Lower a finalized quantized model to its integer program.

    ``model``: a ``models.Network`` (or an ``nn.Sequential``) whose blocks are BN-free quantized
    synaptic layers (buffers ``input_scale``, ``weight_scale``; ``input_bits`` on the first)
    each followed by a neuron with an integer membrane (``membrane_bits``, ``membrane_scale``,
    ``input_grid``), pools, Flatten and Dropout, ending with a read-out Linear.
    ``in_shape``: one sample's shape; default ``model.in_shape``.

    Anything else (BN left in, a residual add, a float-only layer, a missing buffer, an
    unsupported neuron or reset, ranges beyond int32 accumulators or 2^53 charges) is a one-line
    ValueError naming the module path and why.
    """
    in_shape = getattr(model, "in_shape", None) if in_shape is None else in_shape
    if in_shape is None:
        raise ValueError(f"{type(model).__name__} has no in_shape: pass in_shape=(C, ...) to "
                         "to_integer")
    low = _Lowering(tuple(int(s) for s in in_shape))
    leaves = list(_network_leaves(model))  # the structure first, then each module
    for path, m in leaves:
        if isinstance(m, BNTT):
            raise ValueError(f"{path}: {type(m).__name__} (one BatchNorm per time step) cannot "
                             "be lowered to the integer SNN: a per-step scale does not fold into "
                             "one weight")
    for path, m in leaves:
        if isinstance(m, _BN):
            raise ValueError(f"{path}: BatchNorm left in the model cannot be lowered (fold it "
                             "into the layer before it, as the quantization methods' finalize "
                             "does)")
        if isinstance(m, _IDENTITY):
            continue
        if isinstance(m, L.Conv1d | L.Conv2d | L.Linear):
            low.synaptic(path, m)
        elif isinstance(m, IF | LIF | PLIF):
            low.neuron(path, m)
        elif isinstance(m, L.Flatten):
            if low.pending is not None:
                raise ValueError(f"{path}: Flatten between {low.pending.name} and its neuron")
            low.push(Flatten(path))
        elif type(m) in _POOLS or isinstance(m, L.AdaptiveAvgPool2d):
            low.pool(path, m, _POOLS.get(type(m), 2))
        else:
            raise ValueError(f"{path}: {type(m).__name__} cannot be lowered to the integer SNN "
                             "(not a quantized synaptic layer, spiking neuron, pool, Flatten or "
                             "Dropout of spikecompress.snn)")
    if not isinstance(low.pending, IntLinear):
        raise ValueError("the model has no read-out: it must end with a quantized Linear that "
                         "no neuron follows")
    scale, bits = low.input
    return IntegerSNN(tuple(in_shape), scale, bits, low.ops)
