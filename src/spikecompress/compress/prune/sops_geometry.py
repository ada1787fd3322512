"""Geometry constants of the SOPs-aware energy penalty (Shi et al., ICLR 2024), from one probe.

The penalty counts relaxed synaptic connections, E = Σ_layers e_w · Σ σ(β α_w) + Σ_neurons e_n ·
σ(β α_n), with constants that depend on the architecture only (official ``calc_c``):

* ``e_w`` of a conv / linear layer: the number of output positions at which each of its weights is
  applied, per sample and time step: H_out · W_out (conv2d), L_out (conv1d), 1 (linear on
  [T, B, F]); summed over the layer's calls when it is called more than once. The official code
  writes H_in · W_in / stride², the same number for 'same' padding (all its convs); for other
  paddings we count the real output positions (e.g. a k=5, stride-2, padding-1 conv1d on L=40:
  19, not 20).
* ``e_n`` of a neuron layer (one value for all its neurons, as the official code): its fan-out,
  the sum over every conv / linear layer its spikes reach of C_out/groups · k_h · k_w /
  (s_h · s_w) (conv) or out_features (linear). Spikes reach a layer through anything but another
  synaptic layer or neuron: pooling, flatten, dropout, the spike additions of SEW blocks (so a
  stem neuron feeds every conv its identity path reaches, as the ``prev_layers`` chain of the
  official SEW-ResNet ``calc_c``). A pool between the neuron and the
  consumer leaves e_n unchanged (official ``calc_c`` adds C_out·k²/s² to the previous block's
  neuron constant whatever sits between them), while the consumer's own e_w is counted at the
  pooled size. A neuron whose spikes reach no synaptic layer has e_n = 0.

The dataflow is found with one probe forward (T = 1, B = 1, a zero input of ``model.in_shape``
that requires grad, eval mode so BN statistics do not move): forward hooks record every
synaptic layer's input and output and every neuron's output, and for each synaptic layer the
autograd graph of its input is walked back to the neuron outputs it comes from, stopping at
other synaptic outputs and at leaves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from spikecompress.compress.targets import DEFAULT_TYPES
from spikecompress.snn.layers import reset_state
from spikecompress.snn.neuron import NEURONS

SYNAPTIC = DEFAULT_TYPES
NEURON_TYPES: tuple[type[nn.Module], ...] = tuple(NEURONS.values())


@dataclass
class Geometry:
    """Penalty constants by module: ``weight_cost`` (e_w), ``neuron_cost`` (e_n), and the shape of
    one sample of each neuron layer's output (``neuron_shape``, e.g. (C, H, W))."""

    weight_cost: dict[nn.Module, float] = field(default_factory=dict)
    neuron_cost: dict[nn.Module, float] = field(default_factory=dict)
    neuron_shape: dict[nn.Module, tuple[int, ...]] = field(default_factory=dict)


def fan_out(layer: nn.Module) -> float:
    """Synapses one input element of ``layer`` drives per step: C_out/groups · Πk / Πstride for a
    conv (border effects ignored, as the official code), out_features for a linear layer."""
    if isinstance(layer, nn.Linear):
        return float(layer.out_features)
    per_group = layer.out_channels // layer.groups
    return per_group * math.prod(layer.kernel_size) / math.prod(layer.stride)


def positions(layer: nn.Module, out: torch.Tensor) -> float:
    """Output positions per sample and step of one call: out [T, B, C_out, *S] → ΠS; a linear
    layer's out [T, B, ..., F] → Π of the dimensions between the batch and the features."""
    if isinstance(layer, nn.Linear):
        return float(math.prod(out.shape[2:-1]))
    return float(math.prod(out.shape[3:]))


def sample_shape_of(model: nn.Module) -> tuple[int, ...]:
    """One input sample's shape: ``model.in_shape`` (every ``spikecompress.models`` network)."""
    shape = getattr(model, "in_shape", None)
    if shape is None:
        raise ValueError(
            "SOPs-aware pruning sizes its neuron masks with a probe forward and needs "
            "model.in_shape (one input sample's shape, e.g. (C, H, W)); set it on the model"
        )
    return tuple(int(s) for s in shape)


@dataclass
class _Trace:
    """What the probe's hooks saw: grad_fn → neuron, synaptic outputs' grad_fns, calls."""

    neuron_of: dict = field(default_factory=dict)
    stops: set = field(default_factory=set)
    calls: list = field(default_factory=list)  # (synaptic layer, input grad_fn)


def probe_geometry(model: nn.Module, sample_shape: tuple[int, ...] | None = None) -> Geometry:
    """The penalty constants of every synaptic and neuron layer of ``model`` (module docstring)."""
    shape = tuple(sample_shape) if sample_shape is not None else sample_shape_of(model)
    geo, trace = Geometry(), _Trace()

    def on_synapse(layer, args, out):
        geo.weight_cost[layer] = geo.weight_cost.get(layer, 0.0) + positions(layer, out)
        trace.stops.add(out.grad_fn)
        trace.calls.append((layer, args[0].grad_fn))

    def on_neuron(neuron, args, out):
        trace.neuron_of[out.grad_fn] = neuron
        geo.neuron_shape.setdefault(neuron, tuple(out.shape[2:]))

    handles = [m.register_forward_hook(on_synapse) for m in model.modules()
               if isinstance(m, SYNAPTIC)]
    handles += [m.register_forward_hook(on_neuron) for m in model.modules()
                if isinstance(m, NEURON_TYPES)]
    modes = {m: m.training for m in model.modules()}
    p = next(model.parameters(), None)
    x_seq = torch.zeros(1, 1, *shape, device=p.device if p is not None else None,
                        dtype=p.dtype if p is not None else None, requires_grad=True)
    try:
        model.eval()
        with torch.enable_grad():
            model(x_seq)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
        reset_state(model)
    for layer, grad_fn in trace.calls:
        for neuron in _sources(grad_fn, trace):
            geo.neuron_cost[neuron] = geo.neuron_cost.get(neuron, 0.0) + fan_out(layer)
    return geo


def _sources(grad_fn, trace: _Trace) -> set[nn.Module]:
    """The neurons whose output spikes reach the tensor produced by ``grad_fn`` without passing
    another synaptic layer or neuron (a walk over the autograd graph, towards the inputs)."""
    found, seen, todo = set(), set(), [grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in trace.neuron_of:
            found.add(trace.neuron_of[node])
        elif node not in trace.stops:
            todo.extend(nxt for nxt, _ in node.next_functions)
    return found
