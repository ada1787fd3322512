"""The fake-quant forward of integer-lowerable layers and neurons: the integer program in float.

A model whose layers and neurons carry the buffers below computes exactly what its integer form
(``spikecompress.export.integer``) computes, by construction: every value that the integer
program holds is an integer here too, kept exactly in float32 (accumulators below 2^20) or
float64 (the membrane arithmetic of ``snn.integer``), and the gradient flows through
straight-through estimators beside it.

Synaptic layer (snn Conv1d / Conv2d / Linear) with buffer ``input_scale`` (a power of two):

    x_codes = x / input_scale                 exact (round + clamp to ±qmax(input_bits) when the
                                              layer has ``input_bits``: the network's input)
    codes, s_w = weight codes and scale        from ``weight_quant`` while training, else
                                              round(weight / weight_scale), weight_scale
    grid = s_w · input_scale                   [] or [C_out]
    out  = grid · (conv(x_codes, codes) + round(bias / grid))

Neuron with buffer ``membrane_bits``: its input ``x = grid · acc`` gives ``acc = round(x / grid)``
exactly; the membrane is the integer ``u`` of ``snn.integer.IntNeuron.step`` in units of
``membrane_scale`` (or of the grid itself when the neuron shares it, MINT), so the spikes are
those of the integer program. Backward: the float neuron's BPTT with the surrogate evaluated at
the quantized charge, and an LSQ-style gradient for the membrane scale (Esser et al., ICLR 2020).

During training the grid changes with the weights, so a neuron reads it from the layer that feeds
it (``grid_source``, set by the quantization method); after finalize it is the buffer
``input_grid``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spikecompress.snn.integer import channel_view, int_neuron, qmax

# the optional buffers of quantized layers and neurons (``add_optional_state_`` re-creates them)
LAYER_BUFFERS = ("input_scale", "input_bits", "weight_scale")
NEURON_BUFFERS = ("membrane_bits", "membrane_scale", "input_grid")


def ste(value: torch.Tensor, graph: torch.Tensor) -> torch.Tensor:
    """``value`` forward, the gradient of ``graph`` backward (``graph − graph.detach()`` is 0)."""
    return value.detach() + (graph - graph.detach())


def weight_codes(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(integer-valued codes with a straight-through graph, scale [] or [C_out])."""
    quant = getattr(layer, "weight_quant", None)
    if quant is not None:
        return quant.codes(layer.weight)
    scale = layer.weight_scale
    z = layer.weight / scale.view(-1, *([1] * (layer.weight.dim() - 1))) if scale.dim() else \
        layer.weight / scale
    return ste(z.round(), z), scale


def grid_forward(layer: nn.Module, x: torch.Tensor, op, channels_last: bool) -> torch.Tensor:
    """``op(x_codes, codes)`` on the integer grid, scaled back: x [N, C, ...] (conv) or
    [..., F] (linear, ``channels_last``) → the layer's output, channel per ``channels_last``."""
    if getattr(layer, "input_bits", None) is not None:  # the network's input: quantize it
        m = qmax(int(layer.input_bits))
        if not bool(torch.isfinite(layer.input_scale)):
            calibrate_input_(layer, x)
        x = (x / layer.input_scale).round().clamp(-m, m).detach()
    else:
        x = x / layer.input_scale  # integers already (spikes, pooled spike counts)
    s_in = layer.input_scale
    codes, s_w = weight_codes(layer)
    grid = s_w * s_in
    layer.grid_ = grid
    acc = op(x, codes.to(x.dtype))
    if layer.bias is not None:
        b = layer.bias / grid  # [C]
        acc = acc + _channels(ste(b.round(), b), acc, channels_last)
    return acc * _channels(grid, acc, channels_last)


def _channels(p: torch.Tensor, out: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A scalar or [C] tensor viewed to broadcast against ``out`` (channel last, or dim 1)."""
    if p.dim() == 0 or channels_last:
        return p
    return p.view(-1, *([1] * (out.dim() - 2)))  # [C] -> [C, 1, ...] against [N, C, ...]


@torch.no_grad()
def calibrate_input_(layer: nn.Module, x: torch.Tensor) -> None:
    """Fix the first layer's input scale on its first batch: the smallest power of two with
    max|x| <= qmax(input_bits) · scale (1 for an all-zero batch)."""
    top = float(x.abs().max()) if x.numel() else 0.0
    m = qmax(int(layer.input_bits))
    layer.input_scale.fill_(2.0 ** math.ceil(math.log2(top / m)) if top > 0 else 1.0)


def conv_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Conv1d / Conv2d on the grid; x [N, C, ...]."""
    return grid_forward(layer, x, lambda x, w: layer._conv_forward(x, w, None), False)


def linear_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Linear on the grid over any leading dimensions; x [..., F]."""
    return grid_forward(layer, x, lambda x, w: F.linear(x, w), True)


def _lsq(v: torch.Tensor, scale: torch.Tensor, m: int) -> torch.Tensor:
    """LSQ fake quantizer graph: scale · clamp(round(v / scale), −m, m) with the STE."""
    z = (v / scale).clamp(-m, m)
    return (z + (z.round() - z).detach()) * scale


def neuron_grid(neuron: nn.Module) -> torch.Tensor:
    """The grid of the neuron's input: live from ``grid_source`` while training, else the buffer."""
    source = getattr(neuron, "grid_source", None)
    if source is not None:
        grid = getattr(source[0], "grid_", None)
        if grid is None:
            raise ValueError("quantized neuron ran before the layer that feeds it")
        return grid
    return neuron.input_grid


def membrane_scale(neuron: nn.Module, grid: torch.Tensor) -> torch.Tensor:
    """The membrane's unit: the buffer ``membrane_scale``, or the input grid when shared."""
    scale = getattr(neuron, "membrane_scale", None)
    return grid if scale is None else scale


def run_quantized(neuron: nn.Module, x_seq: torch.Tensor, k, a, v_th) -> torch.Tensor:
    """Multi-step forward of a neuron with integer membrane: x_seq [T, B, ...] → spikes."""
    reset = neuron.reset
    if reset.v_reset not in (None, 0.0):
        raise ValueError(f"{type(neuron).__name__}: an integer membrane supports soft reset or "
                         f"hard reset to 0, not v_reset={reset.v_reset}")
    bits = int(neuron.membrane_bits)
    grid = neuron_grid(neuron)
    s_u = membrane_scale(neuron, grid)
    x0 = x_seq[0]
    p = int_neuron(k, a, v_th, grid, s_u, bits, soft=reset.v_reset is None)
    g64 = channel_view(grid.detach().double(), x0)
    su64 = channel_view(s_u.detach().double(), x0)
    su = channel_view(s_u, x0).to(x0.dtype)
    k_f, a_f = channel_view(k, x0).to(x0.dtype), channel_view(a, x0).to(x0.dtype)
    vth = channel_view(v_th, x0).to(x0.dtype)
    m = qmax(bits)
    u = torch.zeros_like(x0, dtype=torch.float64)
    v = torch.zeros_like(x0)
    if neuron.v is not None and neuron.v.shape == x0.shape:  # continue from a previous call
        u = torch.round(neuron.v.double() / su64).clamp(-m, m)
        v = (u * su64).to(x0.dtype)
    spikes, hs, vs = [], [], []
    for x in x_seq.unbind(0):
        acc = torch.round(x.detach().double() / g64)
        s, u, h = p.step(u, acc)
        h_graph = k_f * v + a_f * x
        h_q = ste((h * su64).to(x.dtype), h_graph)
        spike = ste(s.to(x.dtype), neuron.surrogate(h_q - vth))
        s_r = spike.detach() if reset.detach else spike
        v_graph = h_q - vth * s_r if reset.v_reset is None else h_q * (1 - s_r)
        v = ste((u * su64).to(x.dtype), _lsq(v_graph, su, m))
        spikes.append(spike)
        if neuron.record_v:
            hs.append(h_q.detach())
            vs.append(v.detach())
    neuron.v = v.detach()
    if neuron.record_v:
        neuron.h_seq, neuron.v_seq = torch.stack(hs), torch.stack(vs)
    return torch.stack(spikes)
