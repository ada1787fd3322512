"""The generic model: any graph of conv / linear / pool / BN / dropout / flatten / neurons / adds.

Where our builders do not fit (a model converted from SpikingJelly, snnTorch, Norse or NIR), the
model is a list of nodes, each one module or an addition, run in order over x_seq [T, B, ...]:

    {"name": "layers", "in_shape": [1, 28, 28], "nodes": [
        {"name": "conv1", "type": "conv2d", "in_channels": 1, "out_channels": 8,
         "kernel_size": [3, 3], "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1],
         "groups": 1, "bias": true},
        {"name": "sn1", "type": "lif", "tau": 2.0, "v_threshold": 1.0, "v_reset": 0.0, ...},
        {"name": "res", "type": "add", "inputs": ["sn1", "input"]},
        ...]}

A node reads the previous node's output unless it names its ``inputs`` ("input" is the model's
input); the model returns the last node's output. Node names are module names (no dots: a
converter writes ``layer1_0_conv1`` for ``layer1.0.conv1``). Every node's parameters are read back
from its module (``describe``), so a spec written after channel surgery (``respec``) rebuilds the
smaller model; tensors such as per-channel thresholds are written as lists.

``per_step`` (spec key, default false): run every stateless node (conv, linear, pool, BN, ...)
on one time step at a time instead of on all T·B samples folded into one batch. The floats are
the same in exact arithmetic, but a GEMM of T·B rows may sum in another order than T GEMMs of B
rows; a model converted from a framework that calls its layers once per step (snnTorch,
SpikingJelly's single-step mode, Norse cells) sets it, so it reproduces that framework's floats
by construction. Neurons (modules with a membrane ``v``) always run over the whole sequence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from spikecompress.snn import layers as seq
from spikecompress.snn.neuron import IF, LIF, PLIF
from spikecompress.snn.norse_neurons import NorseLI, NorseLIF, NorseLIFBox
from spikecompress.snn.surrogate import SURROGATES

INPUT = "input"


def _pair(v) -> list[int]:
    return list(v) if isinstance(v, tuple | list) else [v]


def _conv(cls):
    def make(p):
        return cls(p["in_channels"], p["out_channels"], tuple(p["kernel_size"]),
                   stride=tuple(p["stride"]), padding=tuple(p["padding"]),
                   dilation=tuple(p["dilation"]), groups=p["groups"], bias=p["bias"])

    def describe(m):
        return {"in_channels": m.in_channels, "out_channels": m.out_channels,
                "kernel_size": list(m.kernel_size), "stride": list(m.stride),
                "padding": _pair(m.padding), "dilation": list(m.dilation), "groups": m.groups,
                "bias": m.bias is not None}
    return make, describe


def _bn(cls):
    def make(p):
        return cls(p["num_features"], eps=p["eps"], momentum=p["momentum"], affine=p["affine"],
                   track_running_stats=p["track_running_stats"])

    def describe(m):
        return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                "affine": m.affine, "track_running_stats": m.track_running_stats}
    return make, describe


def _pool(cls, avg: bool):
    def make(p):
        extra = {"count_include_pad": p["count_include_pad"]} if avg else {}
        return cls(tuple(p["kernel_size"]), stride=tuple(p["stride"]),
                   padding=tuple(p["padding"]), ceil_mode=p["ceil_mode"], **extra)

    def describe(m):
        dims = 2 if isinstance(m, nn.MaxPool2d | nn.AvgPool2d) else 1

        def as_list(v):
            return list(v) if isinstance(v, tuple | list) else [v] * dims
        out = {"kernel_size": as_list(m.kernel_size), "stride": as_list(m.stride),
               "padding": as_list(m.padding), "ceil_mode": m.ceil_mode}
        if avg:
            out["count_include_pad"] = m.count_include_pad
        return out
    return make, describe


def _value(t: torch.Tensor):
    return t.item() if t.dim() == 0 else t.tolist()


def _neuron_common(m) -> dict:
    s = m.surrogate
    return {"v_threshold": _value(m.v_threshold), "v_reset": m.reset.v_reset,
            "detach_reset": m.reset.detach, "semantics": m.semantics,
            "leak": None if m.leak is None else _value(m.leak),
            "surrogate": next(k for k, c in SURROGATES.items() if type(s) is c),
            "surrogate_params": dataclasses.asdict(s)}


def _make_neuron(cls, p, **kw):
    surrogate = SURROGATES[p["surrogate"]](**p["surrogate_params"])
    m = cls(v_threshold=torch.tensor(p["v_threshold"]), v_reset=p["v_reset"],
            detach_reset=p["detach_reset"], surrogate=surrogate, semantics=p["semantics"], **kw)
    if p["leak"] is not None:
        m.leak = torch.tensor(p["leak"], dtype=torch.get_default_dtype())
    return m


NODE_TYPES: dict[str, tuple[type, Callable, Callable]] = {  # type -> (class, make, describe)
    "conv1d": (seq.Conv1d, *_conv(seq.Conv1d)),
    "conv2d": (seq.Conv2d, *_conv(seq.Conv2d)),
    "linear": (seq.Linear, lambda p: seq.Linear(p["in_features"], p["out_features"],
                                                bias=p["bias"]),
               lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                          "bias": m.bias is not None}),
    "bn1d": (seq.BatchNorm1d, *_bn(seq.BatchNorm1d)),
    "bn2d": (seq.BatchNorm2d, *_bn(seq.BatchNorm2d)),
    "maxpool1d": (seq.MaxPool1d, *_pool(seq.MaxPool1d, False)),
    "maxpool2d": (seq.MaxPool2d, *_pool(seq.MaxPool2d, False)),
    "avgpool1d": (seq.AvgPool1d, *_pool(seq.AvgPool1d, True)),
    "avgpool2d": (seq.AvgPool2d, *_pool(seq.AvgPool2d, True)),
    "adaptive_avgpool2d": (seq.AdaptiveAvgPool2d,
                           lambda p: seq.AdaptiveAvgPool2d(tuple(p["output_size"])),
                           lambda m: {"output_size": _pair(m.output_size)}),
    "flatten": (seq.Flatten, lambda p: seq.Flatten(), lambda m: {}),
    "dropout": (seq.Dropout, lambda p: seq.Dropout(p["p"]), lambda m: {"p": m.p}),
    "lif": (LIF, lambda p: _make_neuron(LIF, p, tau=torch.tensor(p["tau"]),
                                        decay_input=p["decay_input"]),
            lambda m: {"tau": _value(m.tau), "decay_input": m.decay_input, **_neuron_common(m)}),
    "if": (IF, lambda p: _make_neuron(IF, p), _neuron_common),
    "plif": (PLIF, lambda p: _make_neuron(PLIF, p, decay_input=p["decay_input"],
                                          channels=p["channels"]),
             lambda m: {"decay_input": m.decay_input,
                        "channels": m.w.shape[0] if m.w.dim() else None, **_neuron_common(m)}),
    # Norse (snn/norse_neurons.py)
    "norse_lif": (NorseLIF, NorseLIF.from_spec, NorseLIF.to_spec),
    "norse_lif_box": (NorseLIFBox, NorseLIFBox.from_spec, NorseLIFBox.to_spec),
    "norse_li": (NorseLI, NorseLI.from_spec, NorseLI.to_spec),
}


class Add(nn.Module):
    """The sum of a node's inputs (a residual connection)."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


def node_type(module: nn.Module) -> str:
    """The node type of one of our modules (a ValueError names a module with none)."""
    if isinstance(module, Add):
        return "add"
    for name, (cls, _, _) in NODE_TYPES.items():
        if type(module) is cls:
            return name
    raise ValueError(f"a layer graph has no node type for {type(module).__name__} "
                     f"(known: {sorted(NODE_TYPES)} and add)")


class LayerGraph(nn.Module):
    """Nodes run in order over x_seq [T, B, *in_shape]; the last node's output is returned."""

    def __init__(self, nodes: list[tuple[str, nn.Module, list[str]]],
                 in_shape: tuple[int, ...], per_step: bool = False) -> None:
        super().__init__()
        if not isinstance(per_step, bool):
            raise ValueError(f"layers: per_step must be true or false, got {per_step!r}")
        self.per_step = per_step
        seen = {INPUT}
        for i, (name, _, inputs) in enumerate(nodes):
            if not name or "." in name or name in seen:
                raise ValueError(f"layers: node {i} has a bad or repeated name {name!r} "
                                 f"(names are unique and have no dots)")
            for ref in inputs:
                if ref not in seen:
                    raise ValueError(f"layers: node {name!r} reads {ref!r}, which is not an "
                                     f"earlier node or 'input'")
            seen.add(name)
        self.nodes = nn.ModuleDict({name: m for name, m, _ in nodes})
        self.inputs = {name: list(inputs) for name, _, inputs in nodes}
        self.in_shape = tuple(in_shape)
        self.spec = self.describe()

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        """x_seq [T, B, *in_shape] → the last node's output [T, B, ...]."""
        if x_seq.dim() < 3 or tuple(x_seq.shape[2:]) != self.in_shape:
            raise ValueError(f"layers expects x_seq of shape [T, B, "
                             f"{', '.join(map(str, self.in_shape))}], got {list(x_seq.shape)}")
        return self.run_nodes(x_seq)

    def run_nodes(self, x: torch.Tensor, per_step: bool | None = None) -> torch.Tensor:
        """The nodes on ``x``, unchecked (channel grouping traces one step [B, ...])."""
        stepwise = self.per_step if per_step is None else per_step
        outs = {INPUT: x}
        out = x
        for name, module in self.nodes.items():
            args = [outs[r] for r in self.inputs[name]]
            if stepwise and not isinstance(module, Add) and not hasattr(module, "v"):
                # one step [1, B, ...] at a time: the GEMM shapes of a per-step framework
                (a,) = args
                out = torch.cat([module(a[t:t + 1]) for t in range(a.shape[0])])
            else:
                out = module(*args)
            outs[name] = out
        return out

    def describe(self) -> dict:
        """The spec that ``layers(**spec)`` rebuilds this model from (read from the modules)."""
        nodes = []
        prev = INPUT
        for name, module in self.nodes.items():
            kind = node_type(module)
            node = {"name": name, "type": kind}
            if self.inputs[name] != [prev]:
                node["inputs"] = self.inputs[name]
            if kind != "add":
                node.update(NODE_TYPES[kind][2](module))
            nodes.append(node)
            prev = name
        spec = {"name": "layers", "in_shape": list(self.in_shape), "nodes": nodes}
        if self.per_step:
            spec["per_step"] = True
        return spec


def layers(in_shape: list[int], nodes: list[dict], per_step: bool = False) -> LayerGraph:
    """Build a ``LayerGraph`` from its spec's nodes (see the module docstring)."""
    if not isinstance(in_shape, list | tuple) or not in_shape or not all(
            isinstance(d, int) and d > 0 for d in in_shape):
        raise ValueError(f"layers: in_shape must be a list of positive integers, got {in_shape!r}")
    if not isinstance(nodes, list) or not nodes:
        raise ValueError("layers: nodes must be a non-empty list")
    built = []
    prev = INPUT
    for i, node in enumerate(nodes):
        if not isinstance(node, dict) or "type" not in node or "name" not in node:
            raise ValueError(f"layers: nodes[{i}] must be a dict with 'name' and 'type'")
        kind = node["type"]
        inputs = node.get("inputs", [prev])
        if kind == "add":
            if len(inputs) < 2:
                raise ValueError(f"layers: add node {node['name']!r} needs two or more inputs")
            module = Add()
        elif kind in NODE_TYPES:
            params = {k: v for k, v in node.items() if k not in ("name", "type", "inputs")}
            try:
                module = NODE_TYPES[kind][1](params)
            except KeyError as e:
                raise ValueError(f"layers: node {node['name']!r} ({kind}) lacks {e}") from None
        else:
            raise ValueError(f"layers: nodes[{i}] has unknown type {kind!r} "
                             f"(known: {sorted(NODE_TYPES)} and add)")
        built.append((node["name"], module, list(inputs)))
        prev = node["name"]
    return LayerGraph(built, tuple(in_shape), per_step)

