"""The walk of a model for NIR export: its modules as (name, module, inputs) in execution order,
one sample's shape per node, and every BatchNorm folded into the conv / linear before it.

Walk. A ``LayerGraph`` gives its node list; any other model (our builders' ``Network``, a plain
``nn.Sequential``, SEW / Spiking ResNet blocks) is traced with ``torch.fx``, our layers, neurons,
BatchNorms and every ``torch.nn`` module being leaves; an addition of two traced values (a
residual) becomes an ``Add``. Every other operation is refused by name.
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from spikecompress.export.nir_nodes import _LAYERS, NEURON_TYPES, _refuse
from spikecompress.models.bn_fold import fold_batchnorm_
from spikecompress.models.layer_graph import INPUT, Add, LayerGraph
from spikecompress.snn import layers as seq
from spikecompress.snn.bntt import BNTT

# model extras (``models.EXTRAS``) that change what the model computes beyond its layers
_EXTRAS = {
    "exit_policy": "an early-exit policy (a per-sample stopping rule over time steps)",
    "time_stages": "time stages (per-stage time steps and transformers)",
    "tsc": "a TSC conversion (two-phase neurons)",
    "ttfs": "a TTFS conversion (time-to-first-spike coding)",
}

Triple = tuple[str, nn.Module, list[str]]


def qualified(path: str) -> str:
    """A NIR node name from a module path: ``features.0.conv`` → ``features_0_conv``."""
    return path.replace(".", "_") or "root"


# --------------------------------------------------------------------------------------------
# the walk: (name, module, inputs) in execution order, and which node is the output


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, nn.Sequential | nn.ModuleList | nn.ModuleDict):
            return False
        if isinstance(m, (*NEURON_TYPES, Add, BNTT, nn.modules.batchnorm._BatchNorm)):
            return True
        return type(m).__module__.startswith(("torch.nn", "spikecompress.snn"))


class _Chain(nn.Module):
    """A ``Network`` without its input checks: ``classifier(features(x))`` (traceable)."""

    def __init__(self, features: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features, self.classifier = features, classifier

    def forward(self, x):
        return self.classifier(self.features(x))


_ADDS = (operator.add, operator.iadd, torch.add)


def _traced(root: nn.Module) -> tuple[list[Triple], str, dict[str, str]]:
    try:
        graph = _Tracer().trace(root)
    except Exception as e:  # fx raises many types; the message names the cause
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _refuse(f"cannot trace {type(root).__name__} with torch.fx ({first}); "
                      f"build it as a LayerGraph") from None
    names: dict[fx.Node, str] = {}
    paths: dict[str, str] = {}
    triples: list[Triple] = []
    used: set[str] = {INPUT}
    out = None
    for n in graph.nodes:
        if n.op == "placeholder":
            if INPUT in names.values():
                raise _refuse("the model takes more than one input")
            names[n] = INPUT
            continue
        if n.op == "output":
            out = n.args[0]
            if not isinstance(out, fx.Node):
                raise _refuse("the model's output is not a single tensor")
            break
        args = list(n.args)
        tensors = not n.kwargs and args and all(isinstance(a, fx.Node) for a in args)
        if n.op == "call_module" and tensors:
            module = root.get_submodule(n.target)
            name = qualified(n.target)
            if name in used:
                raise _refuse(f"module {n.target!r} is called twice (shared weights): NIR nodes "
                              f"are called once per step")
        elif n.op == "call_function" and n.target in _ADDS and len(args) == 2 and tensors:
            module, name = Add(), n.name
            while name in used:
                name += "_"
        else:
            target = getattr(n.target, "__name__", n.target)
            raise _refuse(f"operation {target!r} ({n.op} {n.name!r}, on "
                          f"{'tensors' if tensors else 'non-tensor arguments'}) has no NIR "
                          f"counterpart")
        used.add(name)
        names[n] = name
        paths[name] = n.target if n.op == "call_module" else name
        triples.append((name, module, [names[a] for a in args]))
    return triples, names[out], paths


def _walk(model: nn.Module) -> tuple[list[Triple], str, dict[str, str]]:
    """(name, module, inputs) in execution order, the output's name, {name: module path}."""
    if isinstance(model, LayerGraph):
        triples = [(name, m, list(model.inputs[name])) for name, m in model.nodes.items()]
        return triples, triples[-1][0], {name: name for name, _, _ in triples}
    if hasattr(model, "features") and hasattr(model, "classifier") and hasattr(model, "in_shape"):
        return _traced(_Chain(model.features, model.classifier))
    return _traced(model)


def _check_extras(model: nn.Module) -> None:
    spec = getattr(model, "spec", None)
    spec = spec if isinstance(spec, dict) else {}
    for key, what in _EXTRAS.items():
        if spec.get(key) is not None or getattr(model, key, None) is not None:
            raise _refuse(f"the model has {what} ({key}): NIR has no node for it; export the "
                          f"network without it")


# --------------------------------------------------------------------------------------------
# shapes and BN folding


@torch.no_grad()
def _shapes(triples: list[Triple], x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """One sample's output shape per node (the modules run once on x [1, 1, *in_shape])."""
    outs = {INPUT: x}
    for name, module, inputs in triples:
        try:
            outs[name] = module(*(outs[r] for r in inputs))
        except Exception as e:
            raise _refuse(f"node {name!r} ({type(module).__name__}) failed on the example input: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    seq.reset_state(nn.ModuleList([m for _, m, _ in triples]))
    return {k: tuple(v.shape[2:]) for k, v in outs.items()}


def _fold_bns(triples: list[Triple], consumers: dict[str, list[str]]) -> dict[str, str]:
    """Fold every BN into the conv / linear before it, in place (the triples hold copies);
    returns {layer name: BN name}."""
    kinds = {name: m for name, m, _ in triples}
    folded = {}
    for i, (name, module, inputs) in enumerate(triples):
        if isinstance(module, BNTT):
            raise _refuse(f"{name}: {type(module).__name__} (one BatchNorm per time step) cannot "
                          f"be folded into one weight")
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        if module.running_mean is None:
            raise _refuse(f"{name}: a BatchNorm without running statistics cannot be folded")
        src = inputs[0]
        layer = kinds.get(src)
        if not isinstance(layer, _LAYERS) or consumers[src] != [name]:
            raise _refuse(f"{name}: a BatchNorm that does not directly follow a conv or linear "
                          f"layer (its only consumer) has no NIR counterpart")
        if getattr(layer, "weight_scale", None) is not None:
            raise _refuse(f"{name}: folding this BatchNorm would move the quantized weights of "
                          f"{src!r} off their integer grid; fold BN before quantizing")
        pair = nn.Sequential(layer, module)
        fold_batchnorm_(pair)
        triples[i] = (name, nn.Identity(), inputs)
        folded[src] = name
    return folded
