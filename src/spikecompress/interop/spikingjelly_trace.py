"""A SpikingJelly model walked for ``from_spikingjelly``: its step mode, its ``torch.fx`` trace,
and the traced graph mapped node by node to ``LayerGraph`` nodes.

The model is traced with ``torch.fx`` (SpikingJelly's neurons and layers are leaves;
``nn.Sequential`` and the user's own blocks are traced through; SpikingJelly's
``SeqToANNContainer``, ``MultiStepContainer`` and ``StepModeContainer`` are expanded child by
child), and every node is mapped one to one:

* neurons → ours (``interop.spikingjelly_neurons``);
* layers (SpikingJelly's ``layer.*`` or torch's, by exact class): Conv1d/2d, Linear,
  BatchNorm1d/2d, Max/AvgPool1d/2d, AdaptiveAvgPool2d, Dropout, Flatten and ``nn.Identity``
  → our time-folded twins with their weights and buffers copied (``interop.common.map_layer``);
* ``+`` / ``torch.add`` of two tensors → an ``Add`` node (residual sums);
  ``torch.flatten`` / ``Tensor.flatten`` of one sample's dimensions → ``Flatten``.

Anything else (another SpikingJelly module, a functional op such as ``torch.relu`` or
``x.mean(0)``, an attribute read, a module called twice, a forward fx cannot trace) is a one-line
ValueError naming the module path and its class (and the op).
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch import nn

from spikecompress.interop.common import first_line, map_layer, qualified, refuse
from spikecompress.interop.spikingjelly_neurons import FRAMEWORK, _neuron
from spikecompress.models.layer_graph import INPUT, Add
from spikecompress.snn import layers as seq


class _Refused(ValueError):
    """A refusal raised inside tracing: passed through as it is."""


# ----------------------------------------------------------------------------- step mode


def _containers(sj) -> tuple[type, ...]:
    layer = sj[2]
    return layer.SeqToANNContainer, layer.MultiStepContainer, layer.StepModeContainer


def _steps_inside(sj, container: nn.Module) -> bool:
    """True when ``container`` runs its children once per time step (a stateful container)."""
    layer = sj[2]
    if isinstance(container, layer.MultiStepContainer):
        return True
    return isinstance(container, layer.StepModeContainer) and container.stateful and \
        container.step_mode == "m"


def _step_mode(sj, model: nn.Module, wanted: str | None) -> str:
    """The model's step mode, read from its neurons (a one-line ValueError for a mix)."""
    neuron = sj[3]
    if wanted not in (None, "s", "m"):
        raise ValueError(f"{FRAMEWORK}: step_mode must be 's', 'm' or None, got {wanted!r}")
    modes: dict[str, str] = {}

    def walk(module: nn.Module, path: str, stepped: bool) -> None:
        for name, child in module.named_children():
            full = f"{path}.{name}" if path else name
            if type(child).__module__.startswith(neuron.__name__):
                modes[full] = "m" if stepped else getattr(child, "step_mode", "s")
            walk(child, full, stepped or _steps_inside(sj, child))
    walk(model, "", False)
    found = sorted(set(modes.values()))
    if len(found) > 1:
        by = {m: next(n for n, v in modes.items() if v == m) for m in found}
        raise ValueError(f"{FRAMEWORK}: the model mixes single-step and multi-step neurons "
                         f"({by['s']!r} has step_mode 's', {by['m']!r} 'm'); use "
                         f"functional.set_step_mode(model, ...) first")
    if found and wanted is not None and wanted != found[0]:
        raise ValueError(f"{FRAMEWORK}: step_mode={wanted!r}, but the model's neurons have "
                         f"step_mode {found[0]!r}")
    if not found and wanted is None:
        raise ValueError(f"{FRAMEWORK}: the model has no SpikingJelly neuron to read the step "
                         f"mode from; pass step_mode='s' or 'm'")
    return found[0] if found else wanted


# ----------------------------------------------------------------------------- tracing


class _Tracer(fx.Tracer):
    """SpikingJelly's neurons, layers and stateful modules are leaves; a forward that cannot be
    traced is refused naming its module."""

    def __init__(self, sj) -> None:
        super().__init__()
        self.sj = sj

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        base, _, layer, neuron, _ = self.sj
        kind = type(m).__module__
        if kind.startswith((neuron.__name__, layer.__name__)) or isinstance(
                m, base.MemoryModule | base.StepModule | base.MultiStepModule):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except _Refused:
            raise
        except Exception as e:
            path = self.path_of_module(m)
            raise _Refused(str(refuse(FRAMEWORK, path, m, f"torch.fx cannot trace its forward "
                                                          f"({first_line(e)})"))) from None


def _trace(sj, model: nn.Module) -> fx.Graph:
    try:
        return _Tracer(sj).trace(model)
    except _Refused as e:
        raise ValueError(str(e)) from None
    except Exception as e:
        raise refuse(FRAMEWORK, "", model,
                     f"torch.fx cannot trace its forward ({first_line(e)})") from None


def _op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "get_attr":
        return f"the attribute {node.target!r}"
    t = node.target
    mod = getattr(t, "__module__", None) or "torch"
    mod = {"_operator": "operator", "torch._C._VariableFunctions": "torch"}.get(mod, mod)
    return f"{mod}.{getattr(t, '__name__', repr(t))}"


# ----------------------------------------------------------------------------- mapping


def _layer_types(sj) -> tuple[set[type], set[type]]:
    """(layers that convert, of them the ones that are exact on x_seq [T, B, ...] unfolded)."""
    layer = sj[2]
    names = ("Conv1d", "Conv2d", "Linear", "BatchNorm1d", "BatchNorm2d", "MaxPool1d",
             "MaxPool2d", "AvgPool1d", "AvgPool2d", "AdaptiveAvgPool2d", "Flatten", "Dropout")
    known = {getattr(nn, n) for n in names} | {getattr(layer, n) for n in names} | {nn.Identity}
    unfolded = {nn.Linear, layer.Linear, nn.Dropout, layer.Dropout, nn.Flatten, layer.Flatten,
                nn.Identity}
    return known, unfolded


def _flatten_ok(start, end, folded: bool) -> bool:
    """Whether flatten(start, end) flattens exactly one sample's dimensions."""
    return start == (1 if folded else 2) and end == -1


class _Converter:
    """Maps the traced graph to LayerGraph nodes (name, module, inputs)."""

    def __init__(self, sj, model: nn.Module, mode: str) -> None:
        self.sj, self.model, self.mode = sj, model, mode
        self.nodes: list[tuple[str, nn.Module, list[str]]] = []
        self.sources: dict[str, nn.Module] = {}  # our node name -> the SpikingJelly module
        self.used: dict[int, str] = {}  # id(module) -> its path, for "called twice"
        self.names: set[str] = {INPUT}
        self.known, self.unfolded = _layer_types(sj)

    def name(self, wanted: str) -> str:
        out, i = wanted, 1
        while out in self.names:
            out, i = f"{wanted}_{i}", i + 1
        self.names.add(out)
        return out

    def emit(self, wanted: str, module: nn.Module, inputs: list[str],
             source: nn.Module | None = None) -> str:
        name = self.name(wanted)
        self.nodes.append((name, module, inputs))
        if source is not None:
            self.sources[name] = source
        return name

    def claim(self, path: str, m: nn.Module) -> None:
        if id(m) in self.used:
            raise refuse(FRAMEWORK, path, m, f"it is called twice (also as "
                                             f"{self.used[id(m)]!r}); give each call its own "
                                             f"module")
        self.used[id(m)] = path

    # ---- modules

    def module(self, path: str, m: nn.Module, src: str, folded: bool, stepped: bool) -> str:
        """Map one module called on ``src``; returns the name of its output."""
        base, _, layer, _, _ = self.sj
        self.claim(path, m)
        if isinstance(m, _containers(self.sj)):
            return self.container(path, m, src, folded)
        if type(m) is nn.Sequential:
            for child_name, child in m.named_children():
                src = self.module(f"{path}.{child_name}", child, src, folded, stepped)
            return src
        ours = _neuron(self.sj, path, m)
        if ours is not None:
            mode = "m" if stepped else getattr(m, "step_mode", "s")
            if folded and not stepped and self.mode == "m":
                raise refuse(FRAMEWORK, path, m, "a neuron inside a SeqToANNContainer sees "
                                                 "time folded into the batch")
            if mode != self.mode and not stepped:  # pragma: no cover - _step_mode refuses
                raise refuse(FRAMEWORK, path, m, f"step_mode {mode!r} in a {self.mode!r} model")
            return self.emit(qualified(path), ours, [src], m)
        if type(m) not in self.known:
            why = "a stateful module" if isinstance(m, base.MemoryModule) else ""
            raise refuse(FRAMEWORK, path, m, why)
        step = getattr(m, "step_mode", None)
        if step == "m" and self.mode == "s":
            raise refuse(FRAMEWORK, path, m, "step_mode 'm' in a single-step model")
        if step == "m" and folded:
            raise refuse(FRAMEWORK, path, m, "step_mode 'm' inside a container")
        sees_folded = folded or self.mode == "s" or step == "m"
        if not sees_folded and type(m) not in self.unfolded:
            raise refuse(FRAMEWORK, path, m, "a layer called on x_seq [T, B, ...] directly (set "
                                             "its step_mode to 'm' or wrap it in a "
                                             "SeqToANNContainer)")
        if isinstance(m, nn.Identity):
            return src
        if isinstance(m, nn.Flatten):
            if not _flatten_ok(m.start_dim, m.end_dim, sees_folded):
                lead = 1 if sees_folded else 2
                raise refuse(FRAMEWORK, path, m, f"Flatten(start_dim={m.start_dim}, end_dim="
                                                 f"{m.end_dim}) does not flatten one sample "
                                                 f"(start_dim={lead}, end_dim=-1 does here)")
            return self.emit(qualified(path), seq.Flatten(), [src], m)
        if isinstance(m, layer.Dropout):
            if type(m) is not layer.Dropout:  # pragma: no cover - Dropout2d is not known
                raise refuse(FRAMEWORK, path, m)
            return self.emit(qualified(path), seq.Dropout(m.p), [src], m)
        twin = map_layer(m, path, FRAMEWORK)
        if twin is None:  # pragma: no cover - every known layer maps
            raise refuse(FRAMEWORK, path, m)
        return self.emit(qualified(path), twin, [src], m)

    def container(self, path: str, m: nn.Module, src: str, folded: bool) -> str:
        layer = self.sj[2]
        if self.mode == "s":
            if not (isinstance(m, layer.StepModeContainer) and m.step_mode == "s"):
                raise refuse(FRAMEWORK, path, m, "a multi-step container in a single-step model")
            stepped, inner = False, True
        elif isinstance(m, layer.StepModeContainer) and m.step_mode == "s":
            stepped, inner = False, folded
        else:
            if folded:
                raise refuse(FRAMEWORK, path, m, "a multi-step container inside a container")
            stepped, inner = _steps_inside(self.sj, m), True
        for child_name, child in m.named_children():
            src = self.module(f"{path}.{child_name}", child, src, inner, stepped)
        return src

    # ---- the graph

    def owner(self, node: fx.Node) -> tuple[str, nn.Module]:
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return "", self.model
        path = next(reversed(stack.values()))[0]
        return path, self.model.get_submodule(path)

    def refuse_op(self, node: fx.Node, why: str = "") -> ValueError:
        path, m = self.owner(node)
        return refuse(FRAMEWORK, path, m, f"its forward calls {_op_name(node)}"
                      + (f" {why}" if why else "") + " (modules, + and flatten convert)")

    def run(self, graph: fx.Graph) -> str:
        values: dict[fx.Node, str] = {}
        last = None
        for node in graph.nodes:
            if node.op == "placeholder":
                if values:
                    raise refuse(FRAMEWORK, "", self.model, "its forward takes more than one "
                                                            "input")
                values[node] = INPUT
                continue
            if node.op == "output":
                out = node.args[0]
                if not isinstance(out, fx.Node) or out not in values:
                    raise refuse(FRAMEWORK, "", self.model, "its forward does not return one "
                                                            "tensor")
                if values[out] == INPUT or values[out] != last:
                    raise refuse(FRAMEWORK, "", self.model, "its forward does not return the "
                                                            "last layer it computes")
                return values[out]
            args = [a for a in node.args if isinstance(a, fx.Node)]
            if node.op == "call_module":
                m = self.model.get_submodule(node.target)
                if len(node.args) != 1 or node.kwargs or not args:
                    raise refuse(FRAMEWORK, node.target, m, "it is called with more than one "
                                                            "input")
                values[node] = self.module(node.target, m, values[args[0]],
                                           folded=self.mode == "s", stepped=False)
            elif self.is_add(node):
                path, _ = self.owner(node)
                ins = [values[a] for a in node.args]
                values[node] = self.emit(qualified(f"{path}.add" if path else "add"), Add(), ins)
            elif self.is_flatten(node):
                if not self.flatten_args_ok(node):
                    raise self.refuse_op(node, "over other than one sample's dimensions")
                path, _ = self.owner(node)
                values[node] = self.emit(qualified(f"{path}.flatten" if path else "flatten"),
                                         seq.Flatten(), [values[node.args[0]]])
            else:
                raise self.refuse_op(node)
            last = values[node]
        raise refuse(FRAMEWORK, "", self.model, "its forward returns nothing")  # pragma: no cover

    @staticmethod
    def is_add(node: fx.Node) -> bool:
        two = len(node.args) == 2 and all(isinstance(a, fx.Node) for a in node.args) \
            and not node.kwargs
        if node.op == "call_function":
            return two and node.target in (operator.add, operator.iadd, torch.add)
        return node.op == "call_method" and node.target in ("add", "add_", "__add__") and two

    @staticmethod
    def is_flatten(node: fx.Node) -> bool:
        return (node.op == "call_function" and node.target is torch.flatten) or \
            (node.op == "call_method" and node.target == "flatten")

    def flatten_args_ok(self, node: fx.Node) -> bool:
        names = ("input", "start_dim", "end_dim")
        given = dict(zip(names, node.args, strict=False)) | dict(node.kwargs)
        if set(given) - set(names) or not isinstance(given.get("input"), fx.Node):
            return False
        return _flatten_ok(given.get("start_dim", 0), given.get("end_dim", -1),
                           self.mode == "s")
