"""snnTorch models in: ``from_snntorch(model, example)`` gives an equivalent ``LayerGraph``.

    net = MyTutorial5Net()                        # forward loops over num_steps, returns
    model = from_snntorch(net, x)                 # (torch.stack(spk_rec), torch.stack(mem_rec))
    out = model(x.expand(num_steps, *x.shape))    # [T, B, classes]: the last Leaky's spikes

    seq = nn.Sequential(nn.Conv2d(1, 8, 3), nn.MaxPool2d(2), snn.Leaky(0.9, init_hidden=True),
                        nn.Flatten(), nn.Linear(..., 10), snn.Leaky(0.9, init_hidden=True,
                                                                    output=True))
    model = from_snntorch(seq, x_step)            # one step [B, ...]; model(x_seq) runs all T

Both ways users write snnTorch nets convert: (a) a module whose ``forward`` loops over the time
steps itself (``spk1, mem1 = self.lif1(self.fc1(x), mem1)`` ...), with the same static ``x`` at
every step or ``x[step]``, and (b) a module called once per step by the user's own loop, such as
an ``nn.Sequential`` of torch layers and ``snn.Leaky(..., init_hidden=True)``. The converter
runs the model once on a copy of it under hooks and reads the chain of modules it calls
(``interop.snntorch_trace``); anything else is a one-line ValueError naming the module and its
class.

The converted model takes ``x_seq`` [T, B, *sample] and returns the chain's last output per step
(the last Leaky's spikes) [T, B, ...]. For (a) with a static input, feed ``x`` repeated over the
T steps (``x.expand(T, *x.shape)``); for (a) with ``x[step]``, feed ``x`` itself; for (b), the
per-step inputs stacked. T is free: the converted model is not tied to the ``num_steps`` of (a).
Its state is our neurons' membranes, so ``reset_state(model)`` (which ``count`` and ``measure``
call before every batch) starts it from rest, as ``utils.reset(net)`` / ``init_leaky()`` do.

Mapped one to one: ``nn.Linear``, ``nn.Conv1d/2d``, ``nn.BatchNorm1d/2d``, ``nn.MaxPool1d/2d``,
``nn.AvgPool1d/2d``, ``nn.AdaptiveAvgPool2d``, ``nn.Dropout``, ``nn.Flatten`` (to our time-folded
twins, ``interop.common.map_layer``, weights copied), ``nn.Identity`` (dropped) and
``snntorch.Leaky`` → our ``LIF(semantics="snntorch")`` (``interop.snntorch_neurons`` says how its
parameters and surrogate map, and which Leakys and other snnTorch neurons it refuses).

Exactness: after converting, both models run on ``example`` (T = (a)'s steps; (b) ``steps``
calls) and every Leaky's spikes and the output must be equal bit for bit, else a ValueError. The
converted graph runs its layers one time step at a time (``LayerGraph(per_step=True)``): a GEMM
of T·B rows may sum in another order than snnTorch's T GEMMs of B rows (float32 rounding, about
1e-7 relative, enough to flip a membrane at the threshold), so it keeps snnTorch's shapes and
order of operations, bit-exact by construction; BatchNorm and Dropout then also behave per step
as snnTorch's do, in training too.

Checkpoints: ``state_dict`` (a dict, or the path of a file ``torch.save``d from the snnTorch model)
is loaded into a copy of ``model`` (strict, ``torch.load(weights_only=True)``) before converting.
"""

from __future__ import annotations

import torch
from torch import nn

from spikecompress.interop.common import load_state, map_layer, qualified, refuse
from spikecompress.interop.snntorch_neurons import _leaky
from spikecompress.interop.snntorch_trace import (
    FRAMEWORK,
    _Call,
    _check_output,
    _copy,
    _is_snntorch,
    _Recorder,
    _run,
    _split,
    _Trace,
    _units,
    _wire,
)
from spikecompress.models.layer_graph import INPUT, LayerGraph
from spikecompress.snn.layers import Flatten as SeqFlatten
from spikecompress.snn.layers import reset_state
from spikecompress.snn.neuron import LIF

# --- our modules ----------------------------------------------------------------------------------

def _node(call: _Call) -> nn.Module | None:
    """Our module for one chain member; None for one that passes its input through."""
    m = call.module
    if _is_snntorch(m):
        return _leaky(call)
    if isinstance(m, nn.Identity):
        return None
    if isinstance(m, nn.Flatten) and (m.start_dim, m.end_dim) != (1, -1):
        raise refuse(FRAMEWORK, call.name, m, f"start_dim={m.start_dim}, end_dim={m.end_dim} "
                                              f"(ours flattens each whole sample: 1, -1)")
    ours = map_layer(m, call.name, FRAMEWORK)
    if ours is None:
        raise refuse(FRAMEWORK, call.name, m,
                     "the converter knows torch's linear, conv, BN, pooling, dropout, flatten "
                     "and identity layers and snntorch.Leaky")
    return ours


def _build(trace: _Trace, modules: list[nn.Module | None],
           example: torch.Tensor) -> tuple[LayerGraph, dict[str, str]]:
    """The LayerGraph of the chain (``modules``: ours for each), and {Leaky name: node name}."""
    taken = {INPUT}
    nodes: list[tuple[str, nn.Module, list[str]]] = []
    neurons: dict[str, str] = {}

    def unique(base: str) -> str:
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    for c, ours, flat in zip(trace.chain, modules, trace.flatten, strict=True):
        if flat:
            nodes.append((unique(f"{qualified(c.name)}_flatten"), SeqFlatten(), []))
        if ours is None:
            continue
        name = unique(qualified(c.name))
        nodes.append((name, ours, []))
        if isinstance(ours, LIF):
            neurons[c.name] = name
    if not nodes:
        raise ValueError(f"{FRAMEWORK}: the model has no layer to convert")
    wired, prev = [], INPUT
    for name, module, _ in nodes:
        wired.append((name, module, [prev]))
        prev = name
    in_shape = tuple(example.shape[2:] if trace.mode == "indexed" else example.shape[1:])
    return LayerGraph(wired, in_shape, per_step=True).to(example.device), neurons


# --- the check ---------------------------------------------------------------------------------

def _check(graph: LayerGraph, trace: _Trace, neurons: dict[str, str],
           example: torch.Tensor) -> None:
    """Run ours step by step on the traced input; every Leaky and the output must be equal."""
    steps = trace.steps[:1] if trace.restarts else trace.steps
    T = len(steps)
    x_seq = example[:T] if trace.mode == "indexed" else example.unsqueeze(0).expand(
        T, *example.shape)
    got: dict[str, list[torch.Tensor]] = {n: [] for n in neurons.values()}
    handles = [graph.nodes[n].register_forward_hook(
        lambda m, a, out, n=n: got[n].append(out)) for n in got]
    training = graph.training
    graph.eval()
    try:
        with torch.no_grad():
            reset_state(graph)
            out = graph(x_seq)
            reset_state(graph)
    finally:
        for h in handles:
            h.remove()
        graph.train(training)
    pairs = []
    for i, c in enumerate(trace.chain):
        if c.name in neurons:
            theirs = torch.stack([step[i].out for step in steps])
            pairs.append((f"Leaky {c.name!r}", torch.cat(got[neurons[c.name]]), theirs))
    pairs.append(("the output", out, torch.stack([step[-1].out for step in steps])))
    for what, ours, theirs in pairs:
        if ours.shape != theirs.shape or not torch.equal(ours, theirs.to(ours.dtype)):
            bad = (int((ours != theirs).sum()) if ours.shape == theirs.shape
                   else f"shape {list(ours.shape)} vs {list(theirs.shape)}:")
            raise ValueError(f"{FRAMEWORK}: the converted model differs from the original on "
                             f"`example` at {what}: {bad} of {theirs.numel()} values differ "
                             f"(please report this model)")


# --- the converter -----------------------------------------------------------------------------

def from_snntorch(model: nn.Module, example: torch.Tensor, *, state_dict=None,
                  steps: int = 8) -> LayerGraph:
    """An equivalent spikecompress ``LayerGraph`` of the snnTorch ``model`` (module docstring).

    Args:
        model: an snnTorch network: a module whose forward loops over the time steps, or one
            called once per step (e.g. an ``nn.Sequential`` with ``init_hidden=True`` Leakys).
            It is not modified (the converter works on a copy).
        example: what ``model`` takes: its whole input for a looping forward (``x`` [B, ...]
            repeated each step, or ``x`` [T, B, ...] read as ``x[step]``), one step [B, ...] for
            a per-step model.
        state_dict: weights saved from the snnTorch model (a dict or a ``torch.save`` file),
            loaded into the copy (strict; files with ``weights_only=True``) before converting.
        steps: how many calls the check makes of a per-step model, feeding ``example`` each step.

    Returns the converted model, in ``model``'s train / eval mode; its input is x_seq
    [T, B, *sample] and its output the last module's output (the last Leaky's spikes) per step.
    Raises a one-line ValueError naming the module and its class for anything it cannot convert,
    and if the converted model's spikes on ``example`` differ from snnTorch's.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"{FRAMEWORK}: model must be a torch nn.Module, got "
                         f"{type(model).__name__}")
    if not isinstance(example, torch.Tensor) or example.dim() < 2:
        raise ValueError(f"{FRAMEWORK}: example must be one tensor [B, ...] or [T, B, ...] (what "
                         f"the model takes), got {getattr(example, 'shape', type(example))}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{FRAMEWORK}: steps must be a positive integer, got {steps!r}")
    work = _copy(model)
    if state_dict is not None:
        load_state(work, state_dict, FRAMEWORK)
    rec = _Recorder(_units(work))
    outputs = _run(work, example, 1, rec)
    chain, split = _split(rec.calls)
    one_step_calls = len(split) == 1
    if one_step_calls and steps > 1:  # a per-step model: more calls, the state carrying over
        _run(work, example, steps - 1, rec)
        chain, split = _split(rec.calls)
    modules = [_node(c) for c in chain]  # refusals by class first, in call order
    trace = _wire(split, example, one_step_calls)
    _check_output(outputs[0], _Trace(chain, split[:1] if one_step_calls else split,
                                     trace.mode, trace.flatten))
    graph, neurons = _build(trace, modules, example)
    _check(graph, trace, neurons, example)
    reset_state(graph)
    return graph.train(model.training)
