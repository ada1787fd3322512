"""Import a NIR graph (``nir`` 1.0.7+) as a ``LayerGraph`` of our modules.

    model = import_nir("model.nir")                          # ours: bit for bit
    model = import_nir("snn.nir", convention="snntorch")     # a graph snnTorch exported

``nir`` is the optional extra ``spikecompress[nir]``, imported on first use. One NIR evaluation
is one time step: the model runs x_seq [T, B, *shape of the graph's Input]. docs/nir.md has the
conventions and the agreement measured against snnTorch, SpikingJelly and Norse.

A NIR graph carries no time step and no discretisation, so the importer needs a convention:

``"spikecompress"`` (a graph with our metadata, ``format`` "spikecompress-nir/1"): every node is
    rebuilt from its metadata (our node description, spike masks, PLIF weights, weight scales) and
    its NIR fields; the neuron fields are checked against what our exporter would write from the
    metadata (a graph edited after export is refused), so the model is the exported one, bit for
    bit (BN folded, as exported).
``"spikingjelly"`` (the default for any other graph): the NIR equations under forward Euler with
    step ``dt``, as SpikingJelly 2.0's ``nir_exchange.import_from_nir`` reads them, operation for
    operation (neurons with ``semantics="spikingjelly"``): LIF ``τ = τ_N/dt`` (> 1), ``R = 1``
    (decay_input) or ``R = τ`` (not), ``v_leak = v_reset``; IF ``R = 1/dt``; fire ``H ≥ θ``; hard
    reset to ``v_reset``. Other R or v_leak are refused. Per-neuron parameters may differ per
    channel (SpikingJelly accepts only uniform ones).
``"snntorch"``: as snnTorch 1.0's ``import_nir.import_from_nir`` reads a graph (neurons with
    ``semantics="snntorch"``): LIF → Leaky with ``β = 1 − dt/τ_N`` (snnTorch's fixed dt is 1e-4),
    ``w_scale = R·dt/τ_N`` and, when it is not 1, the threshold divided by it; reset to **zero**
    whatever ``v_reset`` says; fire ``H > θ``; ``v_leak`` must be 0 and θ uniform. Computed in the
    graph's float dtype as snnTorch does, so a float32 graph (what snnTorch writes) gives its
    spikes bit for bit. NIR IF is refused (snnTorch imports it as a leaky Leaky(β = 0.9)).

The graph does not say which framework wrote it: pass ``convention`` for a foreign graph.
``dt``: None takes our metadata's dt, else 1e-4 (snnTorch's and SpikingJelly's convention).

Nodes: Affine / Linear → Linear, Conv1d / Conv2d → ours, AvgPool2d → AvgPool2d, Flatten (all
sample dimensions) → Flatten, SumPool2d → AvgPool2d when its kernel area is a power of two and it
feeds (through Flattens) exactly one Affine / Linear / Conv, whose weights are multiplied by the
area (exact: scaling by a power of two); LIF / IF as above. Several edges into a node are summed
(an ``Add`` node before it, summing in edge order). LI, CubaLI, CubaLIF, I, Scale, Threshold,
Delay, subgraphs and cycles have no counterpart and are refused by name and type, as is any node a
convention cannot represent exactly. Nodes the Output does not depend on are left out.
The neurons of each convention are built in ``interop.nir_neurons``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spikecompress.export.nir import FORMAT
from spikecompress.export.nir_nodes import _nir
from spikecompress.interop.nir_neurons import (
    neuron_ours,
    neuron_snntorch,
    neuron_spikingjelly,
    refuse,
    text,
)
from spikecompress.models.layer_graph import INPUT, Add, LayerGraph
from spikecompress.snn import layers as seq

CONVENTIONS = ("auto", "spikecompress", "spikingjelly", "snntorch")
DEFAULT_DT = 1e-4
_NO_COUNTERPART = {
    "LI": "a leaky integrator outputs its membrane, our neurons output spikes",
    "CubaLI": "a current-based integrator outputs its membrane",
    "CubaLIF": "our neurons have no synaptic current state",
    "I": "an integrator outputs its membrane",
    "Scale": "we have no elementwise scaling layer",
    "Threshold": "we have no stateless threshold layer",
    "Delay": "we have no delay layer",
    "NIRGraph": "subgraphs (recurrent layers) are not supported",
}


def _is_ours(graph) -> bool:
    return text((graph.metadata or {}).get("format")) == FORMAT


def _pair(v) -> tuple[int, ...]:
    a = np.asarray(v).reshape(-1)
    return (int(a[0]), int(a[0])) if a.size == 1 else tuple(int(x) for x in a)


def _one(v) -> int:
    return int(np.asarray(v).reshape(-1)[0])


def _padding(v, dims: int):
    t = text(v)
    if t is not None:
        return t
    a = np.asarray(v).reshape(-1)
    return int(a[0]) if dims == 1 else (tuple(int(x) for x in a) if a.size == 2
                                        else (int(a[0]),) * 2)


# --------------------------------------------------------------------------------------------
# layers


def _weight(node, gain: float) -> torch.Tensor:
    w = torch.tensor(np.asarray(node.weight), dtype=torch.float32)
    return w * gain if gain != 1 else w


def _restore_weight_meta(module: nn.Module, meta: dict) -> None:
    if "weight_scale" in meta:
        module.register_buffer("weight_scale",
                               torch.tensor(np.asarray(meta["weight_scale"]), dtype=torch.float32))


def _bias(node, meta: dict, ours: bool) -> torch.Tensor | None:
    b = torch.tensor(np.asarray(node.bias), dtype=torch.float32)
    if ours and not bool(meta.get("bias", True)) and not bool(b.any()):
        return None
    return b


def _layer(name: str, node, meta: dict, ours: bool, gain: float) -> nn.Module:
    kind = type(node).__name__
    if kind in ("Affine", "Linear"):
        if np.asarray(node.weight).ndim != 2:
            raise refuse(name, node, "a weight with more than 2 dimensions")
        w = _weight(node, gain)
        b = _bias(node, meta, ours) if kind == "Affine" else None
        module = seq.Linear(w.shape[1], w.shape[0], bias=b is not None)
    elif kind in ("Conv1d", "Conv2d"):
        dims = 1 if kind == "Conv1d" else 2
        w = _weight(node, gain)
        b = _bias(node, meta, ours)
        conv = seq.Conv1d if dims == 1 else seq.Conv2d
        pick = _one if dims == 1 else _pair
        module = conv(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[2:]),
                      stride=pick(node.stride), padding=_padding(node.padding, dims),
                      dilation=pick(node.dilation), groups=int(node.groups), bias=b is not None)
    elif kind in ("AvgPool2d", "SumPool2d"):
        return seq.AvgPool2d(_pair(node.kernel_size), stride=_pair(node.stride),
                             padding=_pair(node.padding))
    else:
        raise refuse(name, node, _NO_COUNTERPART.get(kind, "no spikecompress counterpart"))
    with torch.no_grad():
        module.weight.copy_(w)
        if b is not None:
            module.bias.copy_(b)
    if ours:
        _restore_weight_meta(module, meta)
    return module


def _flatten(name: str, node) -> nn.Module:
    shape = np.asarray(node.input_type["input"]).reshape(-1)
    n = shape.size
    start = int(node.start_dim) % n if n else 0
    end = int(node.end_dim) % n if n else -1
    if n and (start != 0 or end != n - 1):
        raise refuse(name, node, "a Flatten that keeps some sample dimensions (start_dim 0 and "
                                  "end_dim -1 are supported)")
    return seq.Flatten()


# --------------------------------------------------------------------------------------------
# the graph


def _order(graph) -> tuple[str, str, list[str], dict[str, list[str]]]:
    """(input node, output node, the nodes in execution order ending with what the output reads,
    {node: its sources in edge order})."""
    inputs = [k for k, v in graph.nodes.items() if type(v).__name__ == "Input"]
    outputs = [k for k, v in graph.nodes.items() if type(v).__name__ == "Output"]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"import_nir: the graph must have one Input and one Output node, it has "
                         f"{len(inputs)} and {len(outputs)}")
    preds: dict[str, list[str]] = {k: [] for k in graph.nodes}
    for a, b in graph.edges:
        preds[b].append(a)
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(n: str) -> None:
        stack = [(n, iter(preds[n]))]
        state[n] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                state[node] = 2
                order.append(node)
            elif state.get(nxt) == 1:
                raise ValueError(f"import_nir: the graph has a cycle through {nxt!r} (recurrent "
                                 f"connections have no counterpart in a LayerGraph)")
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(preds[nxt])))

    visit(outputs[0])
    order.remove(outputs[0])
    if inputs[0] not in order:
        raise ValueError("import_nir: the Output does not depend on the Input")
    order.remove(inputs[0])
    return inputs[0], outputs[0], order, preds


def _sumpool_gains(graph, order, preds) -> dict[str, float]:
    """{layer: k²} for every SumPool2d folded into the one Affine / Linear / Conv it feeds."""
    succs: dict[str, list[str]] = {k: [] for k in graph.nodes}
    for a, b in graph.edges:
        succs[a].append(b)
    gains = {}
    for name in order:
        node = graph.nodes[name]
        if type(node).__name__ != "SumPool2d":
            continue
        area = math.prod(_pair(node.kernel_size))
        if area & (area - 1):
            raise refuse(name, node, f"a sum pool of {area} elements is an average pool times "
                                      f"{area}, not a power of two: not exact")
        cur = name
        while True:
            nxt = succs[cur]
            if len(nxt) != 1 or len(preds[nxt[0]]) != 1:
                raise refuse(name, node, "a sum pool must feed (through Flattens) exactly one "
                                          "Affine, Linear or Conv, its only input")
            cur = nxt[0]
            kind = type(graph.nodes[cur]).__name__
            if kind in ("Affine", "Linear", "Conv1d", "Conv2d"):
                break
            if kind != "Flatten":
                raise refuse(name, node, f"a sum pool feeding nir.{kind} cannot fold its scale")
        gains[cur] = gains.get(cur, 1.0) * area
    return gains


def import_nir(path_or_graph, *, dt: float | None = None, convention: str = "auto") -> LayerGraph:
    """A NIR graph (a file path or a ``nir.NIRGraph``) as a ``LayerGraph`` (see the module
    docstring for ``convention`` and ``dt``)."""
    nir = _nir()
    if isinstance(path_or_graph, str | Path):
        graph = nir.read(str(path_or_graph))
    elif isinstance(path_or_graph, nir.NIRGraph):
        graph = path_or_graph
    else:
        raise TypeError(f"import_nir: expected a path or a nir.NIRGraph, got "
                        f"{type(path_or_graph).__name__}")
    if convention not in CONVENTIONS:
        raise ValueError(f"import_nir: convention must be one of {list(CONVENTIONS)}, got "
                         f"{convention!r}")
    ours = _is_ours(graph)
    if convention == "auto":
        convention = "spikecompress" if ours else "spikingjelly"
    if convention == "spikecompress" and not ours:
        raise ValueError("import_nir: convention 'spikecompress' needs a graph written by "
                         "spikecompress (metadata format 'spikecompress-nir/1')")
    if dt is None:
        dt = float(graph.metadata["dt"]) if ours and "dt" in graph.metadata else DEFAULT_DT
    if not (isinstance(dt, int | float) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"import_nir: dt must be a finite number > 0, got {dt!r}")
    use_meta = convention == "spikecompress"

    for name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            raise refuse(name, node, _NO_COUNTERPART["NIRGraph"])
    first, last, order, preds = _order(graph)
    in_shape = tuple(int(s) for s in np.asarray(graph.nodes[first].input_type["input"]).reshape(-1))
    gains = _sumpool_gains(graph, order, preds)

    used = {INPUT}
    ours_name = {first: INPUT}

    def fresh(base: str) -> str:
        base = base.replace(".", "_") or "node"
        base = f"n_{base}" if base == INPUT else base
        name = base
        while name in used:
            name += "_"
        used.add(name)
        return name

    def source(names: list[str], consumer: str) -> list[str]:
        """The input of a node: its one source, or an Add of its sources in edge order."""
        refs = [ours_name[p] for p in names]
        if len(refs) == 1:
            return refs
        add = fresh(f"{consumer}_sum")
        nodes.append((add, Add(), refs))
        return [add]

    nodes: list[tuple[str, nn.Module, list[str]]] = []
    for name in order:
        node = graph.nodes[name]
        kind = type(node).__name__
        meta = dict(node.metadata or {}) if use_meta else {}
        inputs = source(preds[name], name)
        if kind in ("LIF", "IF"):
            if use_meta:
                module = neuron_ours(nir, name, node, meta, dt)
            elif convention == "snntorch":
                module = neuron_snntorch(name, node, dt)
            else:
                module = neuron_spikingjelly(name, node, dt)
        elif kind == "Flatten":
            module = _flatten(name, node)
        else:
            module = _layer(name, node, meta, use_meta, gains.get(name, 1.0))
        own = fresh(name)
        nodes.append((own, module, inputs))
        ours_name[name] = own
    out = source(preds[last], "output")
    if not nodes or out[0] != nodes[-1][0]:  # the output reads the Input directly
        raise ValueError("import_nir: the Output reads the Input directly (an empty network)")
    model = LayerGraph(nodes, in_shape)
    return model.eval()
