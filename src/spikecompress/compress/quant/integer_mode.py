"""Put a model on the integer grid (weights and membrane) and bake it; shared by the weight +
membrane quantization methods (``uniform_quant`` with ``membrane_bits``, ``mint``).

``install_(model, ...)``:

1. folds every BatchNorm into the layer before it (``models.bn_fold``; an unfoldable BN is an
   error naming it),
2. walks the network's leaves in execution order (our model families are sequential; a residual
   network or a foreign module is refused by name) and gives every conv / linear layer a
   ``weight_quant`` (``WeightQuantizer``) and an ``input_scale``: 1 after a neuron (spikes),
   1/area after an average pooling, and for the first layer a power of two calibrated on the
   first batch with ``input_bits`` (the network's input is quantized to integers),
3. gives the neuron after each layer an integer membrane: ``membrane_bits`` and, unless the
   neuron shares the layer's grid (MINT), a ``membrane_scale`` = membrane_range · V_th / qmax_u.

The forward is then the integer program of ``snn.quantized`` / ``snn.integer``. ``bake_(model)``
(at finalize) writes ``weight = scale · codes`` and the bias on its grid exactly, stores
``weight_scale`` and the neuron's ``input_grid`` / ``membrane_scale`` buffers and removes the
quantizers: the model then saves, loads and lowers (``export.integer``) as it runs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from spikecompress.collectives import Collectives
from spikecompress.compress.quant.quantizers import WeightQuantizer
from spikecompress.models.bn_fold import fold_batchnorm_
from spikecompress.snn.integer import qmax
from spikecompress.snn.neuron import IF, LIF, PLIF

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
NEURONS = (LIF, IF, PLIF)
PASS = (nn.Identity, nn.Flatten, nn.Dropout, nn.MaxPool1d, nn.MaxPool2d)
AVG = (nn.AvgPool1d, nn.AvgPool2d)


def _leaves(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """Layers, neurons and other leaves in execution order (every container below the model must
    be a plain nn.Sequential chain)."""
    out = []
    for name, m in model.named_children():
        path = prefix + name
        if isinstance(m, (*LAYERS, *NEURONS)) or not list(m.children()):
            out.append((path, m))
        elif isinstance(m, nn.Sequential):
            out.extend(_leaves(m, path + "."))
        else:
            raise ValueError(f"{path}: {type(m).__name__} is not a sequential chain; integer "
                             f"quantization supports sequential networks (no residual blocks)")
    return out


def _area(pool: nn.Module) -> int:
    """Values one average-pooling output sums (kernel area)."""
    k = pool.kernel_size
    return math.prod(k) if isinstance(k, tuple) else k ** (2 if isinstance(pool, nn.AvgPool2d)
                                                          else 1)


def plan(model: nn.Module) -> list[tuple[str, nn.Module, float, tuple[str, nn.Module] | None]]:
    """(layer path, layer, its input scale (nan = calibrate), its neuron or None) per layer."""
    steps, scale, layer = [], math.nan, None
    for name, m in _leaves(model):
        if isinstance(m, LAYERS):
            steps.append([name, m, scale, None])
            layer = steps[-1]
        elif isinstance(m, NEURONS):
            if layer is None or layer[3] is not None:
                raise ValueError(f"{name}: a neuron that no conv / linear layer feeds directly")
            layer[3], scale, layer = (name, m), 1.0, None
        elif isinstance(m, AVG):
            scale = scale / _area(m)
            if not math.isnan(scale) and not math.frexp(scale)[0] == 0.5:
                raise ValueError(f"{name}: average pooling over {_area(m)} values gives an "
                                 f"input scale that is not a power of two")
        elif not isinstance(m, PASS):
            raise ValueError(f"{name}: {type(m).__name__} has no integer form")
    if not steps:
        raise ValueError("model: no conv or linear layer to quantize")
    return [tuple(s) for s in steps]


def check_membrane(membrane_bits: object, membrane_range: object) -> None:
    """Bits in 2..16 and a range that holds the threshold (one line naming the field)."""
    if isinstance(membrane_bits, bool) or not isinstance(membrane_bits, int) \
            or not 2 <= membrane_bits <= 16:
        raise ValueError(f"membrane_bits must be an int in 2..16 (a 1-bit grid {{0}} cannot hold "
                         f"the threshold), got {membrane_bits!r}")
    if not isinstance(membrane_range, (int, float)) or isinstance(membrane_range, bool) \
            or not math.isfinite(membrane_range) or membrane_range < 1:
        raise ValueError(f"membrane_range must be a number >= 1 (the membrane grid spans "
                         f"±membrane_range·V_th and must hold the threshold), got "
                         f"{membrane_range!r}")


def install_(model: nn.Module, weight_bits: int, per_channel: bool, scale: str,
             membrane_bits: int, membrane_range: float | None, input_bits: int,
             edge_bits: int | None = None, tanh: bool = False,
             lsq_init: str = "least_squares") -> list[nn.Module]:
    """Put ``model`` on the integer grid (see the module docstring); returns the layers.

    ``membrane_range`` None: the neuron shares its layer's grid (MINT). ``edge_bits``: weight
    bits of the first and the last layer (None: ``weight_bits``). ``lsq_init``: see
    ``WeightQuantizer``."""
    fold_batchnorm_(model)
    steps = plan(model)
    for i, (name, layer, s_in, neuron) in enumerate(steps):
        bits = edge_bits if edge_bits is not None and i in (0, len(steps) - 1) else weight_bits
        layer.weight_quant = WeightQuantizer(layer.weight, bits, per_channel, scale, tanh, lsq_init)
        dev = layer.weight.device
        layer.register_buffer("input_scale", torch.tensor(s_in, device=dev))
        layer.register_buffer("input_bits", torch.tensor(input_bits, device=dev)
                              if math.isnan(s_in) else None)
        if neuron is None:
            if i != len(steps) - 1:
                raise ValueError(f"{name}: only the read-out layer may have no neuron after it")
            continue
        nname, n = neuron
        if n.reset.v_reset not in (None, 0.0):
            raise ValueError(f"{nname}: an integer membrane supports soft reset or hard reset "
                             f"to 0, not v_reset={n.reset.v_reset}")
        n.register_buffer("membrane_bits", torch.tensor(membrane_bits, device=dev))
        if membrane_range is not None:
            th = n.v_threshold.detach()
            n.register_buffer("membrane_scale", th * membrane_range / qmax(membrane_bits))
        n.grid_source = (layer,)
    return [layer for _, layer, _, _ in steps]


def agree_input_scale_(layers: list[nn.Module], comm: Collectives) -> None:
    """The first layer's input scale, calibrated on each rank's own first batch, set to the
    largest over the ranks: the power of two one process finds on the union of those batches."""
    comm.max_(*(layer.input_scale for layer in layers
                if getattr(layer, "input_bits", None) is not None))


@torch.no_grad()
def bake_(model: nn.Module) -> nn.Module:
    """Write every quantized layer's weight and bias on its grid and fix the buffers."""
    for name, layer, _, neuron in plan(model):
        quant = getattr(layer, "weight_quant", None)
        if quant is None:
            raise ValueError(f"{name}: not on the integer grid (install_ first)")
        if not bool(torch.isfinite(layer.input_scale)):
            raise ValueError(f"{name}: the input scale was never calibrated (run a forward)")
        codes, s = quant.codes(layer.weight)
        codes, s = codes.detach(), s.detach().clone()
        view = s.view(-1, *([1] * (codes.dim() - 1))) if s.dim() else s
        layer.weight.copy_(codes * view + 0.0)
        grid = s * layer.input_scale
        if layer.bias is not None:
            layer.bias.copy_(torch.round(layer.bias / grid) * grid + 0.0)
        del layer.weight_quant
        layer.register_buffer("weight_scale", s)
        if neuron is not None:
            n = neuron[1]
            n.register_buffer("input_grid", grid.clone())
            if getattr(n, "membrane_scale", None) is None:
                n.register_buffer("membrane_scale", grid.clone())
            del n.grid_source
    return model
