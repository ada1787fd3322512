"""Exact operation counts of one forward: SOPs, MACs, dense MACs, spikes, neuron updates.

``count(model, x_seq)`` runs the model once on ``x_seq`` [T, B, ...] with forward hooks on every
conv (1-D, 2-D, 3-D), linear layer and neuron, and returns ``Counts``: totals over all T steps and
all B samples, and the same figures per layer (keyed by the module's qualified name).

Definitions (specs/quant-kd.md §5.1, specs/pruning.md §1.3):
* A synaptic layer's input is *binary* (all values in {0, 1}, or bool), *ternary* ({-1, 0, 1})
  or *real*. Binary and ternary inputs are counted as SOPs (accumulates), real ones as MACs.
* Both count the (non-zero input, non-zero weight) pairs the layer actually sums, per time step
  and sample: ``sum(conv(1[x != 0], 1[W != 0]))`` with the layer's stride, padding, dilation and
  groups (so borders are exact), ``sum_i 1[x_i != 0] * nnz(W[:, i])`` for linear. For binary x
  this is ``sum(conv(x, 1[W != 0]))``; for real x it is NeuroBench's ``Effective_MACs``.
  Pruned (zero) weights cost nothing; ``count_zero_weights=True`` counts every weight position.
* ``dense_macs``: every weight position on every in-bounds input (zeros included), what the ANN
  twin computes per step: ``sum(conv(ones_like(x), ones_like(W)))`` (NeuroBench's ``Dense``).
* Bias additions are not counted. Pooling, BN, flatten, residual additions and every module
  other than conv / linear add no SOPs or MACs (transposed convs are not counted either).
* Neurons: ``spikes`` = output sum, ``neuron_updates`` = output numel, their ratio the rate.

Counting is exact: a layer's input is reduced to its non-zero count per position (over time and
batch; a float sum of 0/1 values is exact below 2**24 in float32, int64 beyond), then dotted in
int64 with the layer's *reach map*: how many (non-zero weight, output position) pairs each input
position feeds, a transposed convolution of ones done once per call in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from spikecompress.measure.spikes import is_neuron
from spikecompress.snn.layers import check_x_seq, reset_state

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_SYNAPTIC = (*_CONVS, nn.Linear)
_KIND_ORDER = {"binary": 0, "ternary": 1, "real": 2}
_TOTALS = ("sops", "macs", "dense_macs", "spikes", "neuron_updates")
_CONV_INPUT_GRAD = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input,
                    3: torch.nn.grad.conv3d_input}


@dataclass
class LayerCounts:
    """Totals of one layer over every call of the counted forward.

    Synaptic layers (``kind="synaptic"``) fill ``sops``, ``macs``, ``dense_macs``, ``input_kind``
    ("binary", "ternary" or "real"; the widest over the layer's calls), ``params``,
    ``params_nonzero`` (weight and bias, masks applied) and ``input_elements`` (input numel).
    Neuron layers (``kind="neuron"``) fill ``spikes``, ``neuron_updates``; ``firing_rate``.
    """

    kind: str
    sops: int = 0
    macs: int = 0
    dense_macs: int = 0
    spikes: int = 0
    neuron_updates: int = 0
    input_kind: str | None = None
    input_elements: int = 0
    params: int | None = None
    params_nonzero: int | None = None

    @property
    def firing_rate(self) -> float | None:
        """Spikes per neuron per time step (None for synaptic layers)."""
        if self.kind != "neuron":
            return None
        return self.spikes / self.neuron_updates if self.neuron_updates else 0.0

    def to_dict(self) -> dict:
        """JSON-serialisable dict of the fields and ``firing_rate``."""
        return {**asdict(self), "firing_rate": self.firing_rate}


@dataclass
class Counts:
    """What ``count`` measured: totals over all T steps and all samples, and ``layers``.

    ``params`` (all parameters), ``footprint_bytes`` (bytes of parameters and buffers, as
    NeuroBench's ``Footprint``), ``weights`` / ``weights_zero`` (conv and linear weights, bias
    excluded, as NeuroBench's ``ConnectionSparsity``) describe the model; ``count_zero_weights``
    and ``static_input_once`` record the options used.
    """

    sops: int
    macs: int
    dense_macs: int
    spikes: int
    neuron_updates: int
    samples: int
    time_steps: int
    params: int
    footprint_bytes: int
    weights: int
    weights_zero: int
    count_zero_weights: bool
    static_input_once: bool
    layers: dict[str, LayerCounts] = field(default_factory=dict)

    def per_sample(self, name: str) -> float:
        """One of sops, macs, dense_macs, spikes, neuron_updates divided by ``samples``."""
        if name not in _TOTALS:
            raise ValueError(f"per_sample takes one of {list(_TOTALS)}, got {name!r}")
        return getattr(self, name) / self.samples if self.samples else 0.0

    def to_dict(self) -> dict:
        """JSON-serialisable dict: every field, ``layers`` as {name: layer dict}."""
        layers = {name: rec.to_dict() for name, rec in self.layers.items()}
        return {**{k: v for k, v in asdict(self).items() if k != "layers"}, "layers": layers}

    def to_neurobench(self) -> dict[str, float | int]:
        """The same figures under NeuroBench 2.3's metric names and conventions.

        ``Effective_ACs`` / ``Effective_MACs`` / ``Dense``: SOPs / MACs / dense MACs per sample,
        summed over T; ``ActivationSparsity``: 1 - spikes / neuron updates over the neuron layers;
        ``ConnectionSparsity``: zero / all conv and linear weights (not rounded, NeuroBench rounds
        to 4 decimals); ``ParameterCount``; ``Footprint`` in bytes (parameters + buffers).
        """
        rate = self.spikes / self.neuron_updates if self.neuron_updates else 0.0
        return {
            "Effective_ACs": self.per_sample("sops"),
            "Effective_MACs": self.per_sample("macs"),
            "Dense": self.per_sample("dense_macs"),
            "ActivationSparsity": 1 - rate if self.neuron_updates else 0.0,
            "ConnectionSparsity": self.weights_zero / self.weights if self.weights else 0.0,
            "ParameterCount": self.params,
            "Footprint": self.footprint_bytes,
        }


def _exact_limit(dtype: torch.dtype) -> int:
    """2**(mantissa bits + 1): every integer below it is exact in the float ``dtype``."""
    return int(2 / torch.finfo(dtype).eps)


@dataclass
class _Context:
    """What the hooks of one ``count`` call share, and one reusable scratch buffer (allocating
    input-sized temporaries costs more than the reductions themselves)."""

    time_steps: int
    count_zero_weights: bool
    static_input_once: bool
    buf: torch.Tensor | None = None

    def scratch(self, x: torch.Tensor) -> torch.Tensor:
        """A buffer with x's shape, dtype and device (contents undefined)."""
        b = self.buf
        if b is None or b.numel() < x.numel() or b.dtype != x.dtype or b.device != x.device:
            b = self.buf = torch.empty(x.numel(), dtype=x.dtype, device=x.device)
        return b[: x.numel()].view(x.shape)


def _input_kind(x: torch.Tensor, ctx: _Context) -> str:
    """Classify x: "binary" (only {0, 1}), "ternary" (only {-1, 0, 1}) or "real".

    For floating x: |x - x²| is 0 exactly for x in {0, 1}, and a float sum of non-negative terms
    is 0 only when every term is (NaN and inf make it non-zero).
    """
    if x.dtype == torch.bool:
        return "binary"
    if not x.is_floating_point():
        x = x.double()
    b = ctx.scratch(x)
    torch.addcmul(x, x, x, value=-1, out=b)  # x - x²
    if float(b.abs_().sum()) == 0:
        return "binary"
    torch.abs(x, out=b)
    b.addcmul_(b, b, value=-1)  # |x| - x²
    return "ternary" if float(b.abs_().sum()) == 0 else "real"


def _nonzero_per_position(x: torch.Tensor, kind: str, sample_dims: int, ctx: _Context):
    """x [..., *sample] → int64 [*sample]: non-zero entries per position over the leading
    (time and batch) dimensions.

    A float sum of 0/1 values is exact while the count stays below 2**(mantissa bits + 1) (2**24
    for float32); beyond that, and for other dtypes, the sum is taken in int64.
    """
    lead = tuple(range(x.dim() - sample_dims))
    if not x.is_floating_point():
        return torch.count_nonzero(x, dim=lead)
    ind = x if kind == "binary" else ctx.scratch(x)
    if kind == "ternary":
        torch.abs(x, out=ind)
    elif kind == "real":
        torch.ne(x, 0, out=ind)
    rows = math.prod(x.shape[: len(lead)])
    if rows < _exact_limit(x.dtype):
        return ind.sum(dim=lead).to(torch.int64)
    return ind.sum(dim=lead, dtype=torch.int64)


def _first_step_if_static(x: torch.Tensor, time_steps: int, sample_dims: int) -> torch.Tensor:
    """x [T, B, ...] or [T·B, ...] → its first step when all T steps are equal, else x."""
    if time_steps > 1 and x.dim() == sample_dims + 2 and x.shape[0] == time_steps:
        x_seq = x  # time-major [T, B, ...]
    elif time_steps > 1 and x.dim() == sample_dims + 1 and x.shape[0] % time_steps == 0:
        x_seq = x.view(time_steps, -1, *x.shape[1:])  # [T·B, ...] -> [T, B, ...]
    else:
        return x
    return x_seq[0] if bool((x_seq[1:] == x_seq[:1]).all()) else x


def _padded(conv: nn.Module, a: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Apply the conv's own padding to a map a [1, C, *S] when the conv would not pad with zeros
    itself ('same' / 'valid' strings, reflect / replicate / circular modes); returns
    (the map as the kernel sees it, the padding left for the convolution)."""
    nd = a.dim() - 2
    if conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
        return a, tuple(conv.padding)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(a, conv._reversed_padding_repeated_twice, mode=mode), (0,) * nd


def _conv_reach(conv: nn.Module, sample_shape: tuple[int, ...], count_zero_weights: bool):
    """Reach map and dense MACs of one conv for inputs of one sample's shape [C, *S].

    Returns (reach [C, *S'] int64 over the padded grid: for each input position, the number of
    (non-zero weight, output position) pairs it feeds, computed in float64, exact for these small
    integers; the padding left for the count map; dense MACs per sample). The dense count is
    separable: C_out · C_in/groups · Π over dims of the in-bounds (output, tap) pairs.
    """
    w = conv.weight.detach()
    f64 = {"dtype": torch.float64, "device": w.device if w.device.type != "mps" else "cpu"}
    ones_p, pad = _padded(conv, torch.ones(1, 1, *sample_shape[1:], **f64))  # [1, 1, *S']
    dense, out = conv.out_channels * (conv.in_channels // conv.groups), []
    for dim, (p, d, k, st) in enumerate(zip(pad, conv.dilation, conv.kernel_size, conv.stride,
                                            strict=True)):
        side = ones_p[0, 0].movedim(dim, 0)
        real = side.reshape(len(side), -1).amax(1).tolist()  # 1 = an input there, 0 = padding
        out.append((len(real) + 2 * p - d * (k - 1) - 1) // st + 1)
        taps = (o * st + j * d - p for o in range(out[-1]) for j in range(k))
        dense *= int(sum(real[i] for i in taps if 0 <= i < len(real)))
    kernel = torch.ones(w.shape, **f64) if count_zero_weights else (w != 0).to(**f64)
    grad_out = torch.ones(1, conv.out_channels, *out, **f64)  # [1, C_out, *S_out]
    grid = (1, sample_shape[0], *ones_p.shape[2:])  # [1, C, *S']
    reach = _CONV_INPUT_GRAD[len(out)](grid, kernel, grad_out, conv.stride, pad, conv.dilation,
                                       conv.groups)[0]  # [C, *S'] float64
    return reach.round().to(torch.int64), pad, dense


def _conv_counts(conv: nn.Module, nonzero: torch.Tensor, rows: int, cache: dict, zero_w: bool):
    """(ops, dense MACs) of one call of a conv whose input has ``nonzero`` [C, *S] non-zero
    entries per position over its ``rows`` samples and steps; ops = (non-zero input, non-zero
    weight) pairs summed."""
    shape = tuple(nonzero.shape)
    if shape not in cache:
        cache[shape] = _conv_reach(conv, shape, zero_w)
    reach, pad, dense = cache[shape]
    if reach.shape != nonzero.shape:  # the conv pads by copying (reflect...) or unevenly
        nonzero = _padded(conv, nonzero[None].to(torch.float64))[0][0].round().to(torch.int64)
    return int((nonzero.to(reach.device) * reach).sum()), dense * rows


def _linear_counts(linear: nn.Linear, nonzero: torch.Tensor, rows: int, zero_w: bool):
    """(ops, dense MACs) of one call of a linear layer whose input has ``nonzero`` [F]
    non-zero entries per feature over its ``rows`` samples and steps."""
    if zero_w:
        ops = int(nonzero.sum()) * linear.out_features
    else:
        fan_out = torch.count_nonzero(linear.weight.detach(), dim=0)  # [F] non-zero weights
        ops = int((nonzero * fan_out.to(nonzero.device)).sum())
    return ops, rows * linear.in_features * linear.out_features


def _synaptic_hook(rec: LayerCounts, ctx: _Context):
    """Forward hook of a conv / linear layer: classify the input, count, add to ``rec``."""
    cache: dict = {}

    def hook(module: nn.Module, inputs: tuple, output) -> None:
        if not inputs or not isinstance(inputs[0], torch.Tensor):
            return
        x = inputs[0].detach()
        is_conv = isinstance(module, _CONVS)
        sample_dims = len(module.kernel_size) + 1 if is_conv else 1
        if ctx.static_input_once:
            x = _first_step_if_static(x, ctx.time_steps, sample_dims)
        kind = _input_kind(x, ctx)
        nonzero = _nonzero_per_position(x, kind, sample_dims, ctx)
        rows = x.numel() // max(1, nonzero.numel())
        if is_conv:
            ops, dense = _conv_counts(module, nonzero, rows, cache, ctx.count_zero_weights)
        else:
            ops, dense = _linear_counts(module, nonzero, rows, ctx.count_zero_weights)
        rec.macs += ops if kind == "real" else 0
        rec.sops += 0 if kind == "real" else ops
        rec.dense_macs += dense
        rec.input_elements += x.numel()  # memory traffic of the input (L1 energy)
        if rec.input_kind is None or _KIND_ORDER[kind] > _KIND_ORDER[rec.input_kind]:
            rec.input_kind = kind

    return hook


def _neuron_hook(rec: LayerCounts):
    """Forward hook of a neuron: add its spikes and output elements to ``rec``."""

    def hook(module: nn.Module, inputs: tuple, output) -> None:
        out = (output[0] if isinstance(output, tuple | list) else output).detach()
        rec.neuron_updates += out.numel()
        if out.dim() >= 2 and out.is_floating_point():
            # spikes are 0/1: a row of fewer than _exact_limit sums exactly in its float dtype
            rows = out.reshape(out.shape[0] * out.shape[1], -1)  # [T, B, ...] -> [T·B, N]
            if rows.shape[1] < _exact_limit(out.dtype):
                rec.spikes += int(rows.sum(dim=1).to(torch.int64).sum())
                return
        rec.spikes += int(out.sum(dtype=torch.int64))

    return hook


def _register(model: nn.Module, ctx: _Context):
    """Hook every synaptic and neuron layer; returns (records by name, hook handles)."""
    layers: dict[str, LayerCounts] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, _SYNAPTIC):
            params = [t for t in (m.weight, m.bias) if t is not None]  # masks applied
            rec = LayerCounts(
                "synaptic", params=sum(p.numel() for p in params),
                params_nonzero=sum(int(torch.count_nonzero(p)) for p in params),
            )
            hook: Callable = _synaptic_hook(rec, ctx)
        elif is_neuron(m):
            rec = LayerCounts("neuron")
            hook = _neuron_hook(rec)
        else:
            continue
        layers[name] = rec
        handles.append(m.register_forward_hook(hook))
    return layers, handles


def _model_stats(model: nn.Module) -> dict[str, int]:
    """Parameter count, footprint bytes (parameters + buffers) and conv / linear weight zeros."""
    params = list(model.parameters())
    footprint = sum(t.numel() * t.element_size() for t in (*params, *model.buffers()))
    weights = [m.weight for m in model.modules() if isinstance(m, _SYNAPTIC)]
    return {
        "params": sum(p.numel() for p in params),
        "footprint_bytes": footprint,
        "weights": sum(w.numel() for w in weights),
        "weights_zero": sum(w.numel() - int(torch.count_nonzero(w)) for w in weights),
    }


def count(
    model: nn.Module, x_seq: torch.Tensor, count_zero_weights: bool = False,
    static_input_once: bool = False,
) -> Counts:
    """Run ``model`` once on ``x_seq`` [T, B, ...] in eval mode and count its operations exactly.

    Works on any model built from torch conv / linear / pooling / BN / flatten modules and our
    neurons, whether a conv is a time-folded ``spikecompress.snn`` layer (its input [T, B, ...])
    or a plain torch module inside ``SeqWrap`` (its input [T·B, ...]): both give the same counts.
    Definitions in the module docstring; bias additions are not counted.

    Args:
        model: the network; its train / eval mode of every module is restored afterwards, and its
            neuron state is reset before and after (``spikecompress.snn.reset_state``).
        x_seq: the input [T, B, ...]; ``samples`` is B and ``time_steps`` is T.
        count_zero_weights: count every weight position (the dense convention of SpikingJelly's
            ``SynOpCounter`` and Sinabs) instead of only non-zero (unpruned) weights.
        static_input_once: a layer whose input is identical at all T steps (a repeated static
            input, e.g. the first conv under direct coding) is counted for one step, not T; its
            ``dense_macs`` too, since the layer is computed once.

    Returns:
        ``Counts`` with totals summed over the layers and the per-layer records.
    """
    check_x_seq(x_seq, "[T, B, ...]", min_dim=2)
    time_steps, samples = int(x_seq.shape[0]), int(x_seq.shape[1])
    modes = {m: m.training for m in model.modules()}
    ctx = _Context(time_steps, count_zero_weights, static_input_once)
    layers, handles = _register(model, ctx)
    try:
        reset_state(model)
        model.eval()
        with torch.no_grad():
            model(x_seq)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
        reset_state(model)
    ran = {k: r for k, r in layers.items() if r.input_kind is not None or r.neuron_updates}
    totals = {key: sum(getattr(r, key) for r in ran.values()) for key in _TOTALS}
    return Counts(
        **totals, samples=samples, time_steps=time_steps, **_model_stats(model),
        count_zero_weights=count_zero_weights, static_input_once=static_input_once, layers=ran,
    )
