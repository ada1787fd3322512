"""Norse models in, exactly: ``from_norse(model, example)`` → a ``LayerGraph``.

    from spikecompress.interop.norse import from_norse
    ours = from_norse(cell_net, x)                        # single-step cells: x [B, ...]
    ours = from_norse(seq_net, x_seq, state_dict="w.pt")  # multi-step modules: x_seq [T, B, ...]

Norse (1.1) models are a ``norse.torch.SequentialState`` (or ``nn.Sequential``) of torch layers
and Norse neurons, a single Norse neuron, or the user's own module that calls them in a loop over
time. The model is run once on ``example`` with forward hooks on its layers and neurons, and the
calls become a chain of nodes, one to one (``interop.norse_trace``; the neurons:
``interop.norse_neurons``), each checked against what Norse computed; anything else is a one-line
ValueError naming the module path and its class.

Time. A model of single-step cells (``*Cell``, in a ``SequentialState`` or alone) is called by its
user once per step with the state it returned; the converted model runs x_seq [T, B, ...] at once
and equals ``torch.stack`` of those per-step outputs. ``example`` is one step x [B, ...], the
input the cells take; the conversion is checked on it repeated over 4 steps. A model of multi-step
modules (``LIF``, ``LI``, ``Lift``; torch ``Linear`` / ``Flatten(2)`` on x_seq directly) or a
custom module takes x_seq [T, B, ...] as ours do, and ``example`` is such an x_seq. A model
mixing cells and multi-step modules is refused.

Layers per step. Where Norse calls the synaptic layers once per time step (cells, ``Lift``, a
loop), the graph does too (``LayerGraph(per_step=True)``, spec key "per_step"): a GEMM or conv of
T·B rows may sum in another order than T of B rows, and float32 rounding (about 1e-7 relative)
can flip a membrane at the threshold, so keeping Norse's shapes keeps its floats bit for bit.
A multi-step model that also calls a layer on x_seq directly (an unlifted ``Linear``) mixes the
two; the graph then runs per step, and only weights and inputs on a short dyadic grid (every sum
exact in any order) make the whole model bit-identical.

The check. In eval mode, every node is checked on the inputs Norse's own layer saw: each neuron's
outputs (spikes, or the read-out's membranes) must be equal (``torch.equal``), each layer's
close (rtol 1e-4); a node that differs is a ValueError naming it. Then the whole converted model
runs on the example, and where its output is not bit-identical to Norse's (the mixed case above)
a ``RuntimeWarning`` gives the share that differs and the first node. In training mode, Dropout
draws one mask per sample for all steps (``snn.layers.Dropout``), Norse's ``nn.Dropout`` one per
call; BatchNorm normalises what each call sees, as Norse's.

``state_dict`` (a path, ``torch.load(weights_only=True)``, or a dict) is loaded (strict) into the
Norse model first. The result is a ``LayerGraph`` (spec name "layers") in the model's train / eval
mode, on its device, with node names ``qualified(module path)`` (a lone module: "root").
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from spikecompress.interop.common import check_and_load
from spikecompress.interop.norse_neurons import FRAMEWORK
from spikecompress.interop.norse_trace import (
    _cls,
    _Converter,
    _prescan,
    _Recorder,
    _run_norse,
    _stepped,
)
from spikecompress.models.layer_graph import LayerGraph
from spikecompress.snn import layers as seq
from spikecompress.snn.norse_neurons import NorseLI, NorseLIF, NorseLIFBox

CHECK_STEPS = 4  # time steps a single-step model is checked over


def _norse() -> SimpleNamespace:
    try:
        import norse.torch as nt
        from norse.torch.functional.reset import reset_subtract, reset_value
    except ImportError as e:  # pragma: no cover - the oracle install has it
        raise ImportError(f"from_norse needs Norse (pip install norse): {e}") from None
    cells = (nt.LIFCell, nt.LIFBoxCell, nt.LICell, nt.LIBoxCell, nt.LILinearCell)
    return SimpleNamespace(nt=nt, cells=cells, multi=(nt.LIF, nt.LI),
                           containers=(nt.SequentialState, nn.Sequential),
                           resets={reset_value: "value", reset_subtract: "subtract"})


# ----------------------------------------------------------------------------- the checks


@torch.no_grad()
def _check_nodes(graph: LayerGraph, conv: _Converter) -> None:
    """Every node on the inputs Norse's module saw: neurons equal, layers close."""
    ns = conv.ns
    for names, path, m, x, out in conv.checks:
        ours = [graph.nodes[n] for n in names]
        if type(m) is ns.nt.LILinearCell:  # Norse's li_step: i + F.linear(x_t, W) per step
            x = torch.stack([F.linear(xt, m.input_weights) for xt in x.unbind(0)])
            ours = ours[1:]
        neuron = isinstance(ours[-1], NorseLI | NorseLIF | NorseLIFBox)
        seq.reset_state(graph)
        got = x
        for module in ours:  # as the graph runs it (a layer one step at a time when per_step)
            got = torch.cat([module(got[t:t + 1]) for t in range(got.shape[0])]) \
                if graph.per_step and not neuron else module(got)
        seq.reset_state(graph)
        fits = got.shape == out.shape and (
            torch.equal(got, out) if neuron else
            torch.allclose(got, out, rtol=1e-4, atol=1e-6 * max(1.0, out.abs().max().item())))
        if not fits:
            diff = (f"max |difference| {(got - out).abs().max().item():.3g}"
                    if got.shape == out.shape else
                    f"shape {list(got.shape)} against {list(out.shape)}")
            raise ValueError(f"{FRAMEWORK}: the converted {names[-1]!r} does not reproduce "
                             f"{path or type(m).__name__!r} ({_cls(m)}) on its inputs ({diff})")


@torch.no_grad()
def _check_model(model: nn.Module, graph: LayerGraph, conv: _Converter, x_seq: torch.Tensor,
                 expected: torch.Tensor) -> None:
    """The whole converted model against Norse's output: a RuntimeWarning where not identical."""
    calls: dict[str, list[torch.Tensor]] = {}
    handles = [graph.nodes[n].register_forward_hook(
        lambda _m, _i, out, n=n: calls.setdefault(n, []).append(out)) for n in conv.expected]
    try:
        seq.reset_state(graph)
        got = graph(x_seq)
    finally:
        seq.reset_state(graph)
        for h in handles:
            h.remove()
    if torch.equal(got, expected):
        return
    seen = {n: torch.cat(outs) for n, outs in calls.items()}  # a per-step layer: T calls
    first = next((n for n in graph.nodes if n in seen and (
        seen[n].shape != conv.expected[n].shape or not torch.equal(seen[n], conv.expected[n]))),
        "")
    differ = int((got != expected).sum())
    warnings.warn(
        f"{FRAMEWORK}: the converted model's output differs from {type(model).__name__}'s in "
        f"{differ} of {got.numel()} values (max |difference| "
        f"{(got - expected).abs().max().item():.3g}; first at node {first!r}): every node "
        f"reproduces Norse on Norse's inputs, but Norse calls some layers once per step and "
        f"others on all T·B samples, and the converted model runs them all "
        f"{'per step' if graph.per_step else 'on all T·B samples'}: float32 rounds those sums "
        f"differently (weights and inputs on a short dyadic grid are exact)", RuntimeWarning,
        stacklevel=4)  # past no_grad's wrapper and from_norse


# ----------------------------------------------------------------------------- entry point


def _device(model: nn.Module, example: torch.Tensor) -> torch.device:
    t = next(iter(model.state_dict().values()), None)
    return t.device if t is not None else example.device


def from_norse(model: nn.Module, example: torch.Tensor, *, state_dict=None) -> LayerGraph:
    """The Norse ``model`` as an equivalent ``LayerGraph`` (see the module docstring).

    Args:
        model: a ``norse.torch.SequentialState`` / ``nn.Sequential`` of torch layers and Norse
            neurons, one Norse neuron, or a module calling them in a loop over time; left as it
            was (its train / eval flags restored), except that ``state_dict`` is loaded into it.
        example: the input the model takes: one step x [B, ...] for single-step cells, x_seq
            [T, B, ...] for multi-step modules and custom modules; it gives ``in_shape`` and the
            conversion is checked on it.
        state_dict: a path (``torch.load(..., weights_only=True)``) or a dict, loaded (strict)
            into ``model`` first.

    Raises a one-line ValueError naming the module (path and class) that does not convert, the
    state dict that does not load or fit, or the node whose outputs differ from Norse's.
    """
    ns = _norse()
    check_and_load(model, example, state_dict, FRAMEWORK)
    _prescan(ns, model)
    stepped = _stepped(ns, model)
    lead = 1 if stepped else 2
    if example.dim() < lead + 1:
        raise ValueError(f"{FRAMEWORK}: a {'single' if stepped else 'multi'}-step model's "
                         f"example is {'x [B, ...]' if stepped else 'x_seq [T, B, ...]'}, got "
                         f"shape {list(example.shape)}")
    x_seq = example.unsqueeze(0).repeat(CHECK_STEPS, *([1] * example.dim())) if stepped \
        else example
    flags = {m: m.training for m in model.modules()}
    rec = _Recorder(ns, model)
    try:
        model.eval()
        with torch.no_grad():
            expected = _run_norse(model, x_seq, stepped)
    finally:
        rec.remove()
        for m, flag in flags.items():
            m.training = flag
    conv = _Converter(ns, model, rec, x_seq.shape[0])
    conv.run(x_seq, expected)
    graph = LayerGraph(conv.nodes, tuple(x_seq.shape[2:]), per_step="step" in conv.roles)
    graph.to(_device(model, example))
    graph.eval()
    _check_nodes(graph, conv)
    _check_model(model, graph, conv, x_seq, expected)
    return graph.train(model.training)
