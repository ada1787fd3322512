"""Export a model to NIR (the Neuromorphic Intermediate Representation, ``nir`` 1.0.7+).

    graph = export_nir(model, "model.nir", dt=1e-4)      # writes the file atomically

``nir`` (and ``h5py``) are the optional extra ``spikecompress[nir]``, imported on first use.
The graph describes the model in eval mode, one NIR evaluation per time step of x_seq [T, B, ...]
(NIR shapes exclude T and B). docs/nir.md has the full conventions and the measured agreement
with snnTorch, SpikingJelly and Norse.

How the model is walked: ``spikecompress.export.nir_walk``; how each module becomes a node
(neurons, compressed layers): ``spikecompress.export.nir_nodes``. This module assembles the graph
and writes the file.

Node mapping (ours → NIR):

    Linear (bias / no bias)       → Affine / Linear
    Conv1d, Conv2d                → Conv1d, Conv2d (tuple stride / padding / dilation, input_shape;
                                    a zero bias when the layer has none, metadata ``bias`` false)
    BatchNorm after a conv/linear → folded into it, exactly as ``models.bn_fold`` does (float64,
                                    rounded once; the BN is then an identity); any other BN refused
    AvgPool2d                     → AvgPool2d (no ceil_mode, no divisor_override, padding only
                                    with count_include_pad)
    AdaptiveAvgPool2d             → AvgPool2d (kernel = stride = input / output, when it divides)
    Flatten                       → Flatten(start_dim 0, end_dim −1, input_type)
    Dropout, Identity             → nothing (eval mode: identity)
    Add                           → edges: each summand's node feeds every consumer of the sum
                                    (NIR sums the edges that enter a node's input). Two summands
                                    are bit-exact (a + b = b + a); three or more only when every
                                    summand is a spike train (integers), else refused
    LIF, PLIF (hard reset)        → LIF, IF → IF, per-neuron float32 arrays shaped like the layer
    MaxPool, BNTT, ReLU, soft reset, integer membranes, anything else → a one-line ValueError

Metadata (NIR has no field for any of it). Graph: ``format`` ("spikecompress-nir/1"),
``generator``, ``dt``, ``time_step``, ``fire``. Every node: ``module`` (our node type), ``path``
(the module's path in the model). Neurons: ``describe`` (JSON of our node description, the one a
``LayerGraph`` spec holds: τ, θ, v_reset, decay_input, semantics, leak, surrogate), ``dt``,
``charge``, ``fire``, ``reset`` ("hard"), ``semantics``, and ``spike_mask`` / ``plif_w`` when set.
Conv / linear: ``bias``, ``folded_bn`` (the BN's path) and the pruning / quantization keys
(``spikecompress.export.nir_nodes``).
``spikecompress.interop.nir.import_nir`` reads them back and rebuilds the model bit for bit.
"""

from __future__ import annotations

import copy
import io
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spikecompress._version import __version__
from spikecompress.atomic import atomic_writer
from spikecompress.export.nir_nodes import (
    _LAYERS,
    NEURON_TYPES,
    _check_neuron,
    _layer_node,
    _neuron_node,
    _nir,
    _refuse,
)
from spikecompress.export.nir_walk import _check_extras, _fold_bns, _shapes, _walk
from spikecompress.models.layer_graph import INPUT, Add
from spikecompress.snn import layers as seq

FORMAT = "spikecompress-nir/1"
_IDENTITY = (nn.Identity, nn.Dropout)


# --------------------------------------------------------------------------------------------
# the graph


def to_nir(model: nn.Module, *, dt: float = 1e-4, example: torch.Tensor | None = None):
    """The ``nir.NIRGraph`` of ``model`` (see the module docstring); nothing is written.

    ``example``: an input x_seq [T, B, *in_shape], needed only when the model has no
    ``in_shape`` (it is run once on its first step to find every node's shape)."""
    nir = _nir()
    if not (isinstance(dt, int | float) and math.isfinite(dt) and dt > 0):
        raise _refuse(f"dt must be a finite number > 0, got {dt!r}")
    _check_extras(model)
    in_shape = getattr(model, "in_shape", None)
    if in_shape is None:
        if not isinstance(example, torch.Tensor) or example.dim() < 3:
            raise _refuse("the model has no in_shape: pass example=x_seq [T, B, ...]")
        in_shape = tuple(example.shape[2:])
    in_shape = tuple(int(s) for s in in_shape)
    model = copy.deepcopy(model).eval()  # folding and the shape run leave the caller's intact
    seq.reset_state(model)
    triples, out_name, paths = _walk(model)
    for name, m, _ in triples:  # before the shape run, which an integer model cannot pass
        if isinstance(m, NEURON_TYPES):
            _check_neuron(name, m)
        elif isinstance(m, _LAYERS) and getattr(m, "input_scale", None) is not None:
            raise _refuse(f"{name}: an integer-mode layer (input_scale: the network on the "
                          f"integer grid) has no NIR counterpart; export it with sc.to_integer")
    param = next(model.parameters(), None)
    x = torch.zeros(1, 1, *in_shape, dtype=param.dtype if param is not None else None)
    shapes = _shapes(triples, x)
    consumers: dict[str, list[str]] = {INPUT: []}
    for name, _, inputs in triples:
        consumers[name] = []
        for r in inputs:
            consumers[r].append(name)
    folded = _fold_bns(triples, consumers)

    def node_name(name: str) -> str:
        return f"n_{name}" if name in ("input", "output") else name

    nodes = {"input": nir.Input(input_type={"input": np.array(in_shape)})}
    edges: list[tuple[str, str]] = []
    sources: dict[str, list[str]] = {INPUT: ["input"]}
    spiking: set[str] = set()
    for name, m, inputs in triples:
        if isinstance(m, _IDENTITY):
            sources[name] = sources[inputs[0]]
            continue
        if isinstance(m, Add):
            summed = [s for r in inputs for s in sources[r]]
            if len(set(summed)) != len(summed):
                raise _refuse(f"{name}: a sum that holds one node twice (x + x) is not NIR edges")
            if len(summed) > 2 and not all(s in spiking for s in summed):
                raise _refuse(f"{name}: a sum of {len(summed)} terms that are not all spikes "
                              f"depends on the order of the additions, which NIR leaves open")
            sources[name] = summed
            continue
        own = node_name(name)
        shape = shapes[name]
        if isinstance(m, NEURON_TYPES):
            nodes[own] = _neuron_node(nir, m, shape, dt, name, paths[name])
            spiking.add(own)
        else:
            nodes[own] = _layer_node(nir, m, name, paths[name], shapes[inputs[0]], shape,
                                     folded.get(name))
        edges += [(s, own) for s in sources[inputs[0]]]
        sources[name] = [own]
    nodes["output"] = nir.Output(output_type={"output": np.array(shapes[out_name])})
    edges += [(s, "output") for s in sources[out_name]]
    meta = {"format": FORMAT, "generator": f"spikecompress {__version__}", "dt": float(dt),
            "time_step": "one NIR evaluation is one step of x_seq [T, B, ...]",
            "fire": "v >= v_threshold (ties fire) unless a node's metadata says '>'"}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def write_nir(graph, path: str | Path) -> Path:
    """Write ``graph`` to ``path`` atomically (a reader sees the old file or the new one)."""
    nir = _nir()
    buf = io.BytesIO()
    nir.write(buf, graph)
    path = Path(path)
    with atomic_writer(path) as f:
        f.write(buf.getvalue())
    return path


def export_nir(model: nn.Module, path: str | Path, *, dt: float = 1e-4,
               example: torch.Tensor | None = None):
    """Write ``model`` as a NIR graph to ``path`` (atomically) and return the ``nir.NIRGraph``.

    ``dt``: the time step in seconds the NIR time constants are written for (1e-4: snnTorch's
    and SpikingJelly's convention; Norse imports with its own ``dt`` argument). See the module
    docstring for the mapping, the metadata and what is refused."""
    graph = to_nir(model, dt=dt, example=example)
    write_nir(graph, path)
    return graph
