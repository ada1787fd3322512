"""Connection maps: which (weight, output position) pairs each input position of a conv / linear
layer feeds, optionally only onto alive (unpruned) neurons. Shared by ``count`` (SOPs) and
``measure.sparsity`` (connectivity); exact integers computed with float64 transposed convs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spikecompress.measurement.spikes import is_neuron
from spikecompress.snn.bntt import BNTT

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
SYNAPTIC = (*CONVS, nn.Linear)
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_PASS = (nn.modules.batchnorm._BatchNorm, BNTT, nn.Dropout, nn.Identity)  # keep the neuron map


def padded(conv: nn.Module, a: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad a map a [1, C, *S] as the conv would when it pads other than with zeros ('same',
    'valid', reflect...): (the map as the kernel sees it, the padding left for the conv)."""
    if conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
        return a, tuple(conv.padding)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(a, conv._reversed_padding_repeated_twice, mode=mode), (0,) * (a.dim() - 2)


def _conv_reach(conv: nn.Module, sample_shape: tuple[int, ...], mask: torch.Tensor, zero_w: bool,
                alive: torch.Tensor | None = None):
    """(reach [C, *S'] int64 over the padded grid: for each input position, the number of
    (non-zero weight, alive output position) pairs it feeds; dense MACs per sample) of one conv
    for inputs of one sample's shape [C, *S]. Transposed convs in float64 (exact for these
    integers) of the output map (ones, or the ``alive`` [C_out, *out] neuron mask) with the
    weight ``mask`` (without ``alive`` summed over each group's output channels first: they all
    reach the same inputs), and with a ones kernel for the dense count (C_out · C_in/groups · the
    in-bounds (output, tap) pairs over the real inputs)."""
    g, st, d, k = conv.groups, conv.stride, conv.dilation, conv.kernel_size
    f64 = {"dtype": torch.float64, "device": mask.device if mask.device.type != "mps" else "cpu"}
    real, pad = padded(conv, torch.ones(1, 1, *sample_shape[1:], **f64))  # 1: input, 0: padding
    span = [(n + 2 * p - dd * (kk - 1) - 1, s)  # (outputs - 1) · stride + remainder, stride
            for n, p, dd, kk, s in zip(real.shape[2:], pad, d, k, st, strict=True)]
    out, extra = [q // s + 1 for q, s in span], [q % s for q, s in span]  # extra: output padding
    kernel = torch.ones(mask.shape, **f64) if zero_w else mask.to(**f64)
    ones, conv_t = torch.ones(1, g, *out, **f64), _CONV_T[len(out)]
    if alive is not None and tuple(alive.shape) == (mask.shape[0], *out):
        reach = conv_t(alive[None].to(**f64), kernel, None, st, pad, extra, g, d)[0]
    else:
        kernel = kernel.view(g, -1, *mask.shape[1:]).sum(1)  # [g, C/g, *K]
        reach = conv_t(ones, kernel, None, st, pad, extra, g, d)[0]  # [C, *S'] float64
    taps = conv_t(ones[:, :1], torch.ones(1, 1, *k, **f64), None, st, pad, extra, 1, d)
    dense = conv.out_channels * (conv.in_channels // g) * int((taps * real).sum())
    return reach.to(torch.int64), dense


def reach_map(layer: nn.Module, shape: tuple, mask: torch.Tensor, zero_w: bool, cache: dict,
              alive: torch.Tensor | None = None):
    """(reach map, dense MACs per sample) of a conv / linear layer (whose reach is the
    non-zero weights per input feature, to alive outputs when ``alive`` is given) for inputs of
    one sample's ``shape``. Kept from earlier calls while the layer's geometry, weight mask and
    alive mask are unchanged (compared in full)."""
    key = (shape, zero_w, str(mask.device), tuple(mask.shape), str([getattr(layer, a, None) for a in
           ("stride", "padding", "dilation", "groups", "padding_mode")]), alive is None)
    entries = cache.get(layer, {})
    if key in entries and torch.equal(entries[key][0], mask) and (
            alive is None or torch.equal(entries[key][1], alive)):
        return entries[key][2]
    if isinstance(layer, CONVS):
        value = _conv_reach(layer, shape, mask, zero_w, alive)
    else:  # linear: mask [out, in]
        w = torch.ones(mask.shape, dtype=torch.int64) if zero_w else mask.to(torch.int64)
        if alive is not None and alive.shape == w.shape[:1]:
            w = w * alive.to(w)[:, None]  # [out, in]: synapses onto alive outputs
        value = (w.sum(0).expand(shape), mask.numel())
    cache[layer] = {**(entries if len(entries) < 8 else {}), key: (mask, alive, value)}
    return value


def alive_outputs(modules: list[tuple[str, nn.Module]]) -> dict[nn.Module, torch.Tensor]:
    """Synaptic layer → the ``spike_mask`` [C, ...] of the neuron it feeds directly (through
    BatchNorm or BNTT / Dropout / Identity only, in module order); synapses onto a pruned neuron
    are not connections and their events are not SOPs (``docs/energy.md``)."""
    out, pending = {}, None
    for _, m in modules:
        if isinstance(m, SYNAPTIC):
            pending = m
        elif is_neuron(m):
            if pending is not None and getattr(m, "spike_mask", None) is not None:
                out[pending] = m.spike_mask.detach()
            pending = None
        elif not isinstance(m, _PASS) and not next(m.children(), None):
            pending = None  # a leaf that changes the map (pool, flatten, ...)
    return out
