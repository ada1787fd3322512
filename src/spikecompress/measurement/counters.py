"""Exact operation counts of one forward: SOPs, MACs, dense MACs, spikes, neuron updates.

``count(model, x_seq)`` runs the model once on ``x_seq`` [T, B, ...] with forward hooks on every
conv (1-D, 2-D, 3-D), linear layer and neuron, and returns ``Counts``: totals over all T steps and
all B samples, and the same figures per layer (keyed by the module's qualified name).

Definitions (``docs/energy.md``):
* A synaptic layer's input is *binary* (all values in {0, 1}, or bool), *ternary* ({-1, 0, 1})
  or *real*. Binary and ternary inputs are counted as SOPs (accumulates), real ones as MACs.
* Both count the (non-zero input, non-zero weight) pairs the layer actually sums, per time step
  and sample: ``sum(conv(1[x != 0], 1[W != 0]))`` with the layer's stride, padding, dilation and
  groups (so borders are exact), ``sum_i 1[x_i != 0] * nnz(W[:, i])`` for linear. For binary x
  this is ``sum(conv(x, 1[W != 0]))``; for real x it is NeuroBench's ``Effective_MACs``.
  Pruned (zero) weights cost nothing; ``count_zero_weights=True`` counts every weight position.
* ``dense_macs``: every weight position on every in-bounds input (zeros included), what the ANN
  twin computes per step: ``sum(conv(ones_like(x), ones_like(W)))`` (NeuroBench's ``Dense``).
* Bias additions are not counted. Pooling, BN (BNTT too), flatten, residual additions and every
  module other than conv / linear add no SOPs or MACs (transposed convs are not counted either).
* Neurons: ``spikes`` = output sum, ``neuron_updates`` = output numel, their ratio the rate;
  ``neurons``: the layer's neurons per sample (one step of one sample of its output), ``silent``:
  those of them that emitted no spike in the counted forward (over every step and sample; a
  pruned neuron is silent). ``fired`` ({sample shape: bool tensor of that shape}, not in
  ``to_dict``) is what ``count_loader`` ORs over batches to count the neurons silent on a whole
  test set (a layer called on inputs of two shapes has two sets of neurons).
  A neuron with ``signed_events`` (TSC: ON +1, OFF −1, ``snn.tsc``) counts |output|: each
  event is one spike; the ternary events it sends are SOPs like binary spikes.

Counting is exact: a layer's input is reduced to its non-zero count per position (over time and
batch; a float sum of 0/1 values is exact below 2**24 in float32, int64 beyond), then dotted in
int64 with the layer's *reach map*: how many (non-zero weight, output position) pairs each input
position feeds, a transposed convolution of ones in float64, redone when the weight mask changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from spikecompress.measurement.reach import CONVS, SYNAPTIC, alive_outputs, padded, reach_map
from spikecompress.measurement.spikes import is_neuron
from spikecompress.snn.foreign import refuse_foreign
from spikecompress.snn.layers import check_x_seq, reset_state

_KIND_ORDER = {"binary": 0, "ternary": 1, "real": 2}
_TOTALS = ("sops", "macs", "dense_macs", "spikes", "neuron_updates")


@dataclass
class LayerCounts:
    """Totals of one layer over every call of the counted forward.

    Synaptic layers (``kind="synaptic"``) fill ``sops``, ``macs``, ``dense_macs``, ``input_kind``
    ("binary", "ternary" or "real"; the widest over the layer's calls), ``params``,
    ``params_nonzero`` (weight and bias, masks applied) and ``input_elements`` (input numel).
    Neuron layers (``kind="neuron"``) fill ``spikes``, ``neuron_updates``, ``neurons`` (per
    sample), ``silent`` (neurons that never fired) and ``fired`` (which did: {sample shape:
    bool tensor}, left out of ``to_dict``); ``firing_rate``.
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
    neurons: int = 0
    silent: int = 0
    fired: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def firing_rate(self) -> float | None:
        """Spikes per neuron per time step (None for synaptic layers)."""
        if self.kind != "neuron":
            return None
        return self.spikes / self.neuron_updates if self.neuron_updates else 0.0

    def to_dict(self) -> dict:
        """JSON-serialisable dict of the fields (``fired`` left out) and ``firing_rate``."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "fired"}
        return {**d, "firing_rate": self.firing_rate}


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
        top = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "layers"}
        return {**top, "layers": layers}

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
    """What one ``count`` call's hooks share: synaptic calls to count after the forward, the
    reach-map cache, a scratch buffer (input-sized temporaries cost more than the reductions)."""

    time_steps: int
    count_zero_weights: bool
    static_input_once: bool
    cache: dict  # layer -> {geometry key: (mask, reach)}, owned by the caller of ``count``
    alive: dict = field(default_factory=dict)  # synaptic layer -> spike mask of its target
    buf: torch.Tensor | None = None
    calls: list = field(default_factory=list)  # (module, record, input kind, numel, non-zeros)

    def scratch(self, x: torch.Tensor) -> torch.Tensor:
        """A buffer with x's shape, dtype and device (contents undefined)."""
        b = self.buf
        if b is None or b.numel() < x.numel() or b.dtype != x.dtype or b.device != x.device:
            b = self.buf = torch.empty(x.numel(), dtype=x.dtype, device=x.device)
        return b[: x.numel()].view(x.shape)


def _input_kind(x: torch.Tensor, ctx: _Context) -> str:
    """Classify x: "binary" (only {0, 1}), "ternary" (only {-1, 0, 1}) or "real". For floating x:
    |x - x²| is 0 exactly for x in {0, 1}, and a float sum of non-negative terms is 0 only when
    every term is (NaN and inf make it non-zero)."""
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
    """x [..., *sample] → [*sample]: non-zero entries per position over the leading (time and
    batch) dimensions. A float sum of 0/1 values is exact while the count stays below
    2**(mantissa bits + 1) (2**24 for float32), returned in x's dtype; beyond, summed in int64."""
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
        return ind.sum(dim=lead)
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


def _synaptic_hook(rec: LayerCounts, ctx: _Context):
    """Forward pre-hook of a conv / linear layer: classify its input and reduce it to non-zero
    entries per position (while it is in cache); ``_count_calls`` counts after the forward."""

    def hook(module: nn.Module, inputs: tuple) -> None:
        if not inputs or not isinstance(inputs[0], torch.Tensor):
            return
        x = inputs[0].detach()
        sample_dims = len(module.kernel_size) + 1 if isinstance(module, CONVS) else 1
        if ctx.static_input_once:
            x = _first_step_if_static(x, ctx.time_steps, sample_dims)
        kind = _input_kind(x, ctx)
        nonzero = _nonzero_per_position(x, kind, sample_dims, ctx)
        ctx.calls.append((module, rec, kind, x.numel(), nonzero))

    return hook


def _count_calls(ctx: _Context, synaptic: dict[nn.Module, LayerCounts]) -> list[list[int]]:
    """After the forward: fill the synaptic records' parameters from the weights it used (masks
    applied), count the recorded calls; returns the weights' [numel, non-zero count]."""
    masks, weights = {}, []
    for m, rec in synaptic.items():
        masks[m] = m.weight.detach().to(torch.bool)  # bool: non-zero (faster than count_nonzero)
        weights.append([masks[m].numel(), int(torch.count_nonzero(masks[m]))])
        b = (m.bias if m.bias is not None else torch.zeros(0)).detach().to(torch.bool)
        rec.params, rec.params_nonzero = weights[-1][0] + b.numel(), weights[-1][1] + int(b.sum())
    for module, rec, kind, numel, nonzero in ctx.calls:
        nonzero = nonzero.to(torch.int64)
        rows = numel // max(1, nonzero.numel())
        reach, dense = reach_map(module, tuple(nonzero.shape), masks[module],
                                 ctx.count_zero_weights, ctx.cache, ctx.alive.get(module))
        if reach.shape != nonzero.shape:  # the conv pads by copying (reflect...) or unevenly
            nonzero = padded(module, nonzero[None].to(torch.float64))[0][0].round().long()
        ops = int((nonzero.to(reach.device) * reach).sum())
        rec.macs += ops if kind == "real" else 0
        rec.sops += 0 if kind == "real" else ops
        rec.dense_macs += dense * rows
        rec.input_elements += numel  # memory traffic of the input (L1 energy)
        if rec.input_kind is None or _KIND_ORDER[kind] > _KIND_ORDER[rec.input_kind]:
            rec.input_kind = kind
    return weights


def merge_fired(into: dict, fired: dict) -> tuple[int, int]:
    """OR the fired maps ``fired`` ({sample shape: bool tensor}) into ``into``; returns the
    (neurons, silent neurons) of the merged record."""
    for shape, mask in fired.items():
        old = into.get(shape)
        into[shape] = mask if old is None else old | mask.to(old.device)
    neurons = sum(m.numel() for m in into.values())
    return neurons, neurons - sum(int(m.sum()) for m in into.values())


def _neuron_hook(rec: LayerCounts):
    """Forward hook of a neuron: add its spikes and output elements to ``rec``, and mark which of
    its neurons fired (a neuron: one position of one sample's output [*S] of [T, B, *S])."""

    def hook(module: nn.Module, inputs: tuple, output) -> None:
        out = (output[0] if isinstance(output, tuple | list) else output).detach()
        if getattr(module, "signed_events", False):  # TSC: ON +1 and OFF -1 are one spike each
            out = out.abs()
        rec.neuron_updates += out.numel()
        if out.dim() >= 2 and out.numel():
            fired = (out != 0).flatten(0, 1).any(0)  # [*S]: fired at some step, in some sample
            rec.neurons, rec.silent = merge_fired(rec.fired, {tuple(fired.shape): fired})
        lim = _exact_limit(out.dtype) if out.is_floating_point() else 0
        # spikes are 0/1: a float sum of fewer than lim of them is exact (all, or per [T·B] row)
        if out.numel() < lim:
            rec.spikes += int(out.sum())
        elif lim and out.dim() >= 2 and math.prod(out.shape[2:]) < lim:
            rec.spikes += int(out.reshape(out.shape[0] * out.shape[1], -1).sum(1).long().sum())
        else:
            rec.spikes += int(out.sum(dtype=torch.int64))

    return hook


def _register(modules: list[tuple[str, nn.Module]], ctx: _Context):
    """Hook every synaptic and neuron layer; returns (records by name, hooks, synaptic records)."""
    layers, handles, synaptic = {}, [], {}
    for name, m in modules:
        if isinstance(m, SYNAPTIC):
            rec = synaptic[m] = LayerCounts("synaptic")
            handles.append(m.register_forward_pre_hook(_synaptic_hook(rec, ctx)))
        elif is_neuron(m):
            rec = LayerCounts("neuron")
            handles.append(m.register_forward_hook(_neuron_hook(rec)))
        else:
            continue
        layers[name] = rec
    return layers, handles, synaptic


def _model_stats(modules: list[tuple[str, nn.Module]], weights: list[list[int]]) -> dict:
    """Parameter count, footprint bytes (parameters + buffers, each counted once, as
    ``model.parameters()`` / ``buffers()``) and conv / linear weight zeros."""
    params = {id(p): p for _, m in modules for p in m._parameters.values() if p is not None}
    buffers = {id(b): b for _, m in modules for b in m._buffers.values() if b is not None}
    return {
        "params": sum(p.numel() for p in params.values()),
        "footprint_bytes": sum(t.numel() * t.element_size()
                               for t in (*params.values(), *buffers.values())),
        "weights": sum(n for n, _ in weights),
        "weights_zero": sum(n - nnz for n, nnz in weights),
    }


def count(
    model: nn.Module, x_seq: torch.Tensor, count_zero_weights: bool = False,
    static_input_once: bool = False, cache: dict | None = None,
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
        cache: a dict owned by the caller that keeps connection maps across calls (one per
            measurement; a map is reused while its layer's mask and geometry are unchanged).

    Returns ``Counts``: totals summed over the layers, and the per-layer records.
    """
    check_x_seq(x_seq, "[T, B, ...]", min_dim=2)
    time_steps, samples = int(x_seq.shape[0]), int(x_seq.shape[1])
    refuse_foreign(model, "count")
    modules = list(model.named_modules())
    modes = [(m, m.training) for _, m in modules]
    ctx = _Context(time_steps, count_zero_weights, static_input_once,
                   {} if cache is None else cache)
    ctx.alive = alive_outputs(modules)
    layers, handles, synaptic = _register(modules, ctx)
    try:
        reset_state(model)
        if any(training for _, training in modes):
            model.eval()
        with torch.no_grad():
            model(x_seq)
            weights = _count_calls(ctx, synaptic)  # still in eval mode, as the forward ran
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            if m.training != training:
                m.training = training
        reset_state(model)
    ran = {k: r for k, r in layers.items() if r.input_kind is not None or r.neuron_updates}
    totals = {key: sum(getattr(r, key) for r in ran.values()) for key in _TOTALS}
    return Counts(
        **totals, samples=samples, time_steps=time_steps, **_model_stats(modules, weights),
        count_zero_weights=count_zero_weights, static_input_once=static_input_once, layers=ran,
    )
