"""A Norse model walked for ``from_norse``: its modules scanned, its step mode read, its calls
recorded under forward hooks, and the calls mapped to a chain of ``LayerGraph`` nodes.

The model is run once on ``example`` with forward hooks on its layers and neurons, and the calls
become a chain of nodes, one to one, each checked against what Norse computed:

* neurons → ours (``interop.norse_neurons``);
* torch layers: Conv1d/2d, Linear, BatchNorm1d/2d, Max/AvgPool1d/2d, AdaptiveAvgPool2d,
  Dropout, Flatten (of one sample's dimensions), ``nn.Identity`` (dropped) → our time-folded
  twins with their weights copied (``interop.common.map_layer``); ``Lift(layer)`` and
  ``Lift(cell)`` are the layer or the cell over time; a flatten of one sample's dimensions in a
  custom forward (``x.flatten(1)``, ``x.view(B, -1)``) becomes a ``Flatten`` node;
* anything else (another Norse module such as ``LSNNCell`` or ``LIFAdExCell``, a recurrent cell,
  an encoder, ``nn.ReLU``, a functional op between two layers, a decoder over time such as a max
  of the read-out, a module called on something other than its predecessor's output) is a
  one-line ValueError naming the module path and its class.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from spikecompress.interop.common import first_line, map_layer, qualified, refuse
from spikecompress.interop.norse_neurons import FRAMEWORK, _neuron
from spikecompress.models.layer_graph import INPUT
from spikecompress.snn import layers as seq

HEAVISIDE = ("super", "heaviside", "triangle", "tanh", "circ", "heavi_erfc")
TORCH_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.MaxPool1d,
                nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout,
                nn.Flatten, nn.Identity)
ON_X_SEQ = (nn.Linear, nn.Dropout, nn.Flatten, nn.Identity)  # exact on [T, B, ...] unlifted


def _cls(m: nn.Module) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


# ----------------------------------------------------------------------------- structure


def _prescan(ns: SimpleNamespace, model: nn.Module) -> None:
    """Refuse, before running anything, every Norse module that does not convert."""
    known = (*ns.cells, *ns.multi, ns.nt.SequentialState, ns.nt.Lift)
    for name, m in model.named_modules():
        if type(m).__module__.split(".")[0] == "norse" and type(m) not in known:
            raise refuse(FRAMEWORK, name, m)
        if isinstance(m, ns.nt.SequentialState) and m.return_hidden:
            raise refuse(FRAMEWORK, name, m, "return_hidden=True (it returns every layer's "
                                             "output)")
        if type(m) is ns.nt.Lift:
            inner = m.lifted_module
            if not (type(inner) in ns.cells or isinstance(inner, TORCH_LAYERS)):
                raise refuse(FRAMEWORK, name, m, f"it lifts a {_cls(inner)} (a torch layer or "
                                                 f"a Norse cell converts)")
        if type(m) in (*ns.cells, *ns.multi):
            method = getattr(m.p, "method", "super")
            if method not in HEAVISIDE:
                raise refuse(FRAMEWORK, name, m, f"method {method!r} (the Heaviside methods "
                                                 f"{list(HEAVISIDE)} convert)")


def _stepped(ns: SimpleNamespace, model: nn.Module) -> bool:
    """True for a model of single-step cells, called once per step (a mix is refused)."""
    if type(model) in ns.cells:
        return True
    if type(model) in ns.multi or type(model) is ns.nt.Lift:
        return False
    if not isinstance(model, ns.containers):
        return False  # the user's module: it takes x_seq and loops itself
    found: dict[str, str] = {}
    layers: list[tuple[str, nn.Module]] = []

    def walk(module: nn.Module, path: str) -> None:
        for name, child in module.named_children():
            full = f"{path}.{name}" if path else name
            if type(child) in ns.cells:
                found.setdefault("cell", full)
            elif type(child) in ns.multi or type(child) is ns.nt.Lift:
                found.setdefault("multi", full)
            elif isinstance(child, ns.containers):
                walk(child, full)
            else:
                layers.append((full, child))
    walk(model, "")
    if len(found) == 2:
        raise ValueError(f"{FRAMEWORK}: the model mixes single-step cells ({found['cell']!r}) "
                         f"and multi-step modules ({found['multi']!r}); wrap the cells in "
                         f"norse.torch.Lift")
    if not found:
        raise ValueError(f"{FRAMEWORK}: {type(model).__name__} has no Norse neuron")
    if "multi" in found:  # its layers see x_seq [T, B, ...]: only the time-blind ones convert
        for path, m in layers:
            if isinstance(m, TORCH_LAYERS) and not isinstance(m, ON_X_SEQ):
                raise refuse(FRAMEWORK, path, m, "a layer called on x_seq [T, B, ...] directly "
                                                 "(wrap it in norse.torch.Lift)")
    return "cell" in found


# ----------------------------------------------------------------------------- recording


class _Recorder:
    """Forward hooks on every unit (Norse neuron, Lift, torch layer) and every other leaf module
    outside them; ``calls`` lists (path, input, output) in call order (cloned)."""

    def __init__(self, ns: SimpleNamespace, model: nn.Module) -> None:
        self.calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self.modules: dict[str, nn.Module] = {}
        self.handles = []
        units: list[str] = []
        for name, m in model.named_modules():
            if any(name == u or name.startswith(f"{u}.") or u == "" for u in units):
                continue  # inside a unit: its calls are the unit's
            is_unit = type(m) in (*ns.cells, *ns.multi, ns.nt.Lift) or \
                isinstance(m, TORCH_LAYERS)
            if is_unit:
                units.append(name)
            elif any(True for _ in m.children()):
                continue  # a container: transparent
            self.modules[name] = m
            self.handles.append(m.register_forward_hook(self._hook(name), with_kwargs=True))

    def _hook(self, name: str):
        def hook(module, args, kwargs, output):
            x = args[0] if args else next(
                (kwargs[k] for k in ("input_tensor", "input", "x") if k in kwargs), None)
            x = x[0] if isinstance(x, tuple) else x
            out = output[0] if isinstance(output, tuple) else output
            if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
                raise refuse(FRAMEWORK, name, module, "it is called on or returns something "
                                                      "other than a tensor")
            self.calls.append((name, x.detach().clone(), out.detach().clone()))
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _run_norse(model: nn.Module, x_seq: torch.Tensor, stepped: bool) -> torch.Tensor:
    """Norse's output over x_seq [T, B, ...]: per step with the state carried, or at once."""
    try:
        if stepped:
            state, outs = None, []
            for x in x_seq.unbind(0):
                out, state = model(x, state)
                outs.append(out)
            return torch.stack(outs)
        out = model(x_seq)
    except Exception as e:
        if isinstance(e, ValueError) and str(e).startswith(f"{FRAMEWORK}: "):
            raise  # a refusal from a hook
        raise ValueError(f"{FRAMEWORK}: {type(model).__name__} does not run on the example of "
                         f"shape {list(x_seq.shape[int(stepped):])}: {first_line(e)}") from None
    out = out[0] if isinstance(out, tuple) else out
    if not isinstance(out, torch.Tensor):
        raise refuse(FRAMEWORK, "", model, "its forward does not return a tensor (or a tensor "
                                           "and a state)")
    return out


# ----------------------------------------------------------------------------- the chain


def _same(a: torch.Tensor, b: torch.Tensor, start: int) -> str | None:
    """"same" when a is b, "flatten" when a is b flattened from dim ``start``, else None."""
    if a.shape == b.shape and torch.equal(a, b):
        return "same"
    if b.dim() > start + 1:
        flat = b.flatten(start)
        if a.shape == flat.shape and torch.equal(a, flat):
            return "flatten"
    return None


class _Converter:
    """The recorded calls → LayerGraph nodes, with each node's Norse inputs and outputs."""

    def __init__(self, ns: SimpleNamespace, model: nn.Module, rec: _Recorder, T: int) -> None:
        self.ns, self.model, self.rec, self.T = ns, model, rec, T
        self.nodes: list[tuple[str, nn.Module, list[str]]] = []
        self.names: set[str] = {INPUT}
        # checks: (node names, Norse module path, module, its inputs [T, B, ...] and outputs)
        self.checks: list[tuple[list[str], str, nn.Module, torch.Tensor, torch.Tensor]] = []
        self.expected: dict[str, torch.Tensor] = {}  # node -> Norse's output there
        self.roles: set[str] = set()  # "step" / "seq": how Norse calls the synaptic layers

    def emit(self, wanted: str, module: nn.Module, src: str) -> str:
        name, i = wanted, 1
        while name in self.names:
            name, i = f"{wanted}_{i}", i + 1
        self.names.add(name)
        self.nodes.append((name, module, [src]))
        return name

    def run(self, x_seq: torch.Tensor, expected: torch.Tensor) -> None:
        by_unit: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for path, x, out in self.rec.calls:
            m = self.rec.modules[path]
            if not (type(m) in (*self.ns.cells, *self.ns.multi, self.ns.nt.Lift)
                    or isinstance(m, TORCH_LAYERS)):
                raise refuse(FRAMEWORK, path, m)
            by_unit.setdefault(path, []).append((x, out))
        prev, src = x_seq, INPUT
        for path, calls in by_unit.items():
            prev, src = self.unit(path, self.rec.modules[path], calls, prev, src)
        if src == INPUT:
            raise ValueError(f"{FRAMEWORK}: {type(self.model).__name__} calls no layer or neuron "
                             f"on the example")
        if expected.shape != prev.shape or not torch.equal(expected, prev):
            raise refuse(FRAMEWORK, "", self.model, "its forward does not return the last "
                                                    "layer's outputs over time (a decoder such as "
                                                    "a max over time does not convert: apply it "
                                                    "to the converted model's output)")

    def unit(self, path, m, calls, prev, src):
        """Map one unit called ``calls`` times; returns (its output [T, B, ...], its node)."""
        ns = self.ns
        n = len(calls)
        if n == 1 and (how := _same(calls[0][0], prev, 2)):
            role, x, out = "seq", calls[0][0], calls[0][1]
        elif n == self.T and all(_same(c[0], prev[t], 1) for t, c in enumerate(calls)):
            how = _same(calls[0][0], prev[0], 1)
            role = "step"
            x, out = torch.stack([c[0] for c in calls]), torch.stack([c[1] for c in calls])
        else:
            why = ("its input is not the previous layer's output" if n in (1, self.T) else
                   f"it is called {n} times over {self.T} time steps")
            raise refuse(FRAMEWORK, path, m, why)
        if how == "flatten":
            src = self.emit(qualified(f"{path}.flatten" if path else "flatten"), seq.Flatten(),
                            src)
            self.expected[src] = x
        name = qualified(path)
        if type(m) is ns.nt.Lift:
            if role != "seq":
                raise refuse(FRAMEWORK, path, m, "a Lift called on one time step")
            m, role, path = m.lifted_module, "step", f"{path}.lifted_module"
        if type(m) in ns.multi and role != "seq":
            raise refuse(FRAMEWORK, path, m, "a multi-step module called on one time step (it "
                                             "takes x_seq [T, B, ...])")
        if type(m) in ns.cells and role != "step":
            raise refuse(FRAMEWORK, path, m, "a single-step cell called on the whole x_seq [T, "
                                             "B, ...] (wrap it in norse.torch.Lift)")
        step = x.shape[1:]
        if type(m) is ns.nt.LILinearCell:
            self.roles.add(role)
            w = m.input_weights.detach()
            lin = seq.Linear(w.shape[1], w.shape[0], bias=False).to(w.device)
            with torch.no_grad():
                lin.weight.copy_(w)
            names = [self.emit(f"{name}_linear", lin, src)]
            names.append(self.emit(name, _neuron(ns, path, m, torch.Size((*step[:-1],
                                                                         w.shape[0]))),
                                   names[0]))
        elif type(m) in (*ns.cells, *ns.multi):
            names = [self.emit(name, _neuron(ns, path, m, step), src)]
        else:
            names = self.layer(path, m, role, src, name)
            if not names:  # nn.Identity
                return out, src
        self.checks.append((names, path, m, x, out))
        self.expected[names[-1]] = out
        return out, names[-1]

    def layer(self, path, m, role, src, name) -> list[str]:
        if isinstance(m, nn.Identity):
            return []
        if role == "seq" and not isinstance(m, ON_X_SEQ):
            raise refuse(FRAMEWORK, path, m, "a layer called on x_seq [T, B, ...] directly "
                                             "(wrap it in norse.torch.Lift)")
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.modules.batchnorm._BatchNorm):
            self.roles.add(role)
        if isinstance(m, nn.Flatten):
            lead = 2 if role == "seq" else 1
            if (m.start_dim, m.end_dim) != (lead, -1):
                raise refuse(FRAMEWORK, path, m, f"Flatten(start_dim={m.start_dim}, end_dim="
                                                 f"{m.end_dim}) does not flatten one sample "
                                                 f"(start_dim={lead}, end_dim=-1 does here)")
            return [self.emit(name, seq.Flatten(), src)]
        twin = map_layer(m, path, FRAMEWORK)
        if twin is None:  # pragma: no cover - every TORCH_LAYERS class maps
            raise refuse(FRAMEWORK, path, m)
        return [self.emit(name, twin, src)]
