"""Norse models in, exactly: ``from_norse(model, example)`` → a ``LayerGraph``.

    from spikecompress.interop.norse import from_norse
    ours = from_norse(cell_net, x)                        # single-step cells: x [B, ...]
    ours = from_norse(seq_net, x_seq, state_dict="w.pt")  # multi-step modules: x_seq [T, B, ...]

Norse (1.1) models are a ``norse.torch.SequentialState`` (or ``nn.Sequential``) of torch layers
and Norse neurons, a single Norse neuron, or the user's own module that calls them in a loop over
time. The model is run once on ``example`` with forward hooks on its layers and neurons, and the
calls become a chain of nodes, one to one, each checked against what Norse computed:

* neurons (their parameters copied: ``LIFParameters`` and friends, scalars or one value per
  channel; ``dt``) → ``snn.norse_neurons``, which run Norse's float update exactly:
  ``LIFCell`` / ``LIF`` → ``NorseLIF`` (current-based, states v and i), ``LIFBoxCell`` →
  ``NorseLIFBox`` (``reset_value`` / ``reset_subtract``), ``LICell`` / ``LI`` → ``NorseLI``,
  ``LIBoxCell`` → ``NorseLI(box=True)``, ``LILinearCell`` → a bias-free ``Linear`` (its
  ``input_weights``) then ``NorseLI``. Spikes are Norse's ``1[v − v_th > 0]`` for every
  ``method`` whose forward is that step ("super", "heaviside", "triangle", "tanh", "circ",
  "heavi_erfc"); the backward is ``ATan(alpha=2)`` (``snn.norse_neurons`` says why);
  ``method="adjoint"`` is refused;
* torch layers: Conv1d/2d, Linear, BatchNorm1d/2d, Max/AvgPool1d/2d, AdaptiveAvgPool2d,
  Dropout, Flatten (of one sample's dimensions), ``nn.Identity`` (dropped) → our time-folded
  twins with their weights copied (``interop.common.map_layer``); ``Lift(layer)`` and
  ``Lift(cell)`` are the layer or the cell over time; a flatten of one sample's dimensions in a
  custom forward (``x.flatten(1)``, ``x.view(B, -1)``) becomes a ``Flatten`` node;
* anything else (another Norse module such as ``LSNNCell`` or ``LIFAdExCell``, a recurrent cell,
  an encoder, ``nn.ReLU``, a functional op between two layers, a decoder over time such as a max
  of the read-out, a module called on something other than its predecessor's output) is a
  one-line ValueError naming the module path and its class.

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

from spikecompress.interop.common import (
    check_and_load,
    first_line,
    map_layer,
    qualified,
    refuse,
)
from spikecompress.models.layer_graph import INPUT, LayerGraph
from spikecompress.snn import layers as seq
from spikecompress.snn.norse_neurons import NorseLI, NorseLIF, NorseLIFBox

FRAMEWORK = "norse"
CHECK_STEPS = 4  # time steps a single-step model is checked over
HEAVISIDE = ("super", "heaviside", "triangle", "tanh", "circ", "heavi_erfc")
TORCH_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.MaxPool1d,
                nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout,
                nn.Flatten, nn.Identity)
ON_X_SEQ = (nn.Linear, nn.Dropout, nn.Flatten, nn.Identity)  # exact on [T, B, ...] unlifted


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


def _cls(m: nn.Module) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


# ----------------------------------------------------------------------------- state dict


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


# ----------------------------------------------------------------------------- parameters


def _channel_param(value, what: str, step: torch.Size, path: str, m: nn.Module) -> torch.Tensor:
    """A Norse parameter as a float32 scalar or [C] (it must broadcast per channel over one step
    [B, C, ...], as Norse broadcasts it)."""
    t = torch.as_tensor(value).detach().to(torch.float32).cpu().clone()
    if t.numel() == 1:
        return t.reshape(())
    sample = tuple(step[1:])
    shape = (1,) * (len(sample) - t.dim()) + tuple(t.shape)
    if t.dim() > len(sample) or shape[0] != sample[0] or any(d != 1 for d in shape[1:]):
        raise refuse(FRAMEWORK, path, m, f"{what} of shape {list(t.shape)} is not one value per "
                                         f"channel of a step {list(step)}")
    return t.reshape(-1)


def _time(p, dt: float, fields: tuple[str, ...], step, path, m) -> tuple[float, dict]:
    """(dt, {τ⁻¹ field: tensor}) whose products ``dt * τ⁻¹`` in float32 are Norse's own.

    Norse multiplies ``dt * p.tau_*_inv``: in float32 for a tensor, in Python doubles (rounded
    to float32 when it meets a tensor) for a number. Where the two differ, dt becomes 1 and the
    τ⁻¹ buffers hold Norse's products."""
    taus = {f: _channel_param(getattr(p, f), f, step, path, m) for f in fields}
    theirs = {f: _channel_param(dt * getattr(p, f), f, step, path, m) for f in fields}
    if all(torch.equal(dt * taus[f], theirs[f]) for f in fields):
        return float(dt), taus
    return 1.0, theirs


def _neuron(ns: SimpleNamespace, path: str, m: nn.Module, step: torch.Size) -> nn.Module:
    """Our neuron for a Norse neuron (``LILinearCell``: its LI part)."""
    p, kind = m.p, type(m)

    def par(field):
        return _channel_param(getattr(p, field), field, step, path, m)
    if kind in (ns.nt.LIFCell, ns.nt.LIF):
        dt, t = _time(p, m.dt, ("tau_syn_inv", "tau_mem_inv"), step, path, m)
        return NorseLIF(v_leak=par("v_leak"), v_threshold=par("v_th"), v_reset=par("v_reset"),
                        dt=dt, **t)
    if kind is ns.nt.LIFBoxCell:
        reset = ns.resets.get(p.reset_method)
        if reset is None:
            raise refuse(FRAMEWORK, path, m, f"reset_method {p.reset_method!r} (reset_value and "
                                             f"reset_subtract convert)")
        dt, t = _time(p, m.dt, ("tau_mem_inv",), step, path, m)
        return NorseLIFBox(v_leak=par("v_leak"), v_threshold=par("v_th"),
                           v_reset=par("v_reset"), reset=reset, dt=dt, **t)
    if kind is ns.nt.LIBoxCell:
        dt, t = _time(p, m.dt, ("tau_mem_inv",), step, path, m)
        return NorseLI(v_leak=par("v_leak"), box=True, dt=dt, **t)
    dt, t = _time(p, m.dt, ("tau_syn_inv", "tau_mem_inv"), step, path, m)  # LICell, LI, LILinear
    return NorseLI(v_leak=par("v_leak"), dt=dt, **t)


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
