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
an ``nn.Sequential`` of torch layers and ``snn.Leaky(..., init_hidden=True)``. The converter runs
the model once on ``example`` (a copy of it: the user's model, its hidden state and its BN
statistics are left alone) with hooks on every leaf module, takes the modules of the first step in
call order as a chain (a module called again starts the next step), and checks that every module
reads the previous one's output (a Leaky's spikes), the first the model's input, and every Leaky
its own membrane of the step before. A view that flattens each sample (``x.view(B, -1)``,
``x.flatten(1)``) between two modules becomes a Flatten node. Anything else (a tensor made by a
functional op such as ``F.max_pool2d``, an addition, a Leaky's membrane read by the next layer, a
module we have no counterpart for) is a one-line ValueError naming the module and its class: write
such parts as torch modules (``nn.MaxPool2d``, ``nn.Flatten``) in an ``nn.Sequential`` instead.

The converted model takes ``x_seq`` [T, B, *sample] and returns the chain's last output per step
(the last Leaky's spikes) [T, B, ...]. For (a) with a static input, feed ``x`` repeated over the
T steps (``x.expand(T, *x.shape)``); for (a) with ``x[step]``, feed ``x`` itself; for (b), the
per-step inputs stacked. T is free: the converted model is not tied to the ``num_steps`` of (a).
Its state is our neurons' membranes, so ``reset_state(model)`` (which ``count`` and ``measure``
call before every batch) starts it from rest, as ``utils.reset(net)`` / ``init_leaky()`` do.

Mapped one to one: ``nn.Linear``, ``nn.Conv1d/2d``, ``nn.BatchNorm1d/2d``, ``nn.MaxPool1d/2d``,
``nn.AvgPool1d/2d``, ``nn.AdaptiveAvgPool2d``, ``nn.Dropout``, ``nn.Flatten`` (to our time-folded
twins, ``interop.common.map_layer``, weights copied), ``nn.Identity`` (dropped) and
``snntorch.Leaky`` → our ``LIF(semantics="snntorch")`` (``snn.semantics``): snnTorch fires on
``H > V_th`` (a tie does not fire) and resets one step late (``reset_delay=True``, its default):

* ``beta`` → ``leak`` (clamped to [0, 1], as snnTorch does at every step); a scalar, or one value
  per neuron of a linear layer / per channel (a conv's ``beta`` of shape [C, 1, 1]);
* ``threshold`` → ``v_threshold`` (scalar or per channel, the same way);
* ``reset_mechanism`` "subtract" → ``v_reset=None``, "zero" → ``v_reset=0`` (read from the update
  the Leaky really runs, which snnTorch fixes when it is built);
* ``spike_grad``: the surrogate derivative of later training (the forward of every surrogate in
  ``snntorch.surrogate`` is ``x > 0``, which the neuron reproduces): ``atan(alpha)`` → our
  ``ATan(alpha)`` (the same formula, ``(α/2) / (1 + (π/2·α·x)²)``), ``sigmoid(slope)`` → our
  ``Sigmoid(alpha=slope)`` (the same formula). ``fast_sigmoid(slope)``, the tutorials' choice,
  ``1 / (1 + slope·|x|)²``, has no counterpart among ours (it integrates to 2/slope, ours to 1):
  it becomes ``ATan(alpha=2)``, snnTorch's default, with the same peak 1 at the threshold but
  wider flanks; so do the others (triangular, straight-through, SSO, ...) and
  ``surrogate_disable=True``. Only gradients differ; set ``neuron.surrogate`` to choose another.
* ``learn_beta`` / ``learn_threshold``: the learned values are copied, but our ``leak`` and
  ``v_threshold`` are buffers: they stay fixed while our methods fine-tune the converted model.

Refused by name: every other snnTorch neuron (Synaptic, Alpha, Lapicque, RLeaky, RSynaptic, SLSTM,
SConv2dLSTM, ...), and a Leaky with ``reset_mechanism="none"``, ``reset_delay=False``,
``graded_spikes_factor`` ≠ 1, ``inhibition``, ``state_quant``, or a ``spike_grad`` that is not
from ``snntorch.surrogate`` (its forward may not be ``x > 0``), or a ``beta`` / ``threshold``
that varies inside a conv channel.

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

import copy
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from spikecompress.interop.common import load_state, map_layer, qualified, refuse
from spikecompress.models.layer_graph import INPUT, LayerGraph
from spikecompress.snn.layers import Flatten as SeqFlatten
from spikecompress.snn.layers import reset_state
from spikecompress.snn.neuron import LIF
from spikecompress.snn.surrogate import ATan, Sigmoid, Surrogate

FRAMEWORK = "snntorch"
_HINT = ("write it with torch modules (nn.MaxPool2d, nn.Flatten, ...) in an nn.Sequential or "
         "call modules in a plain chain")


def _cls(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _is_snntorch(module: nn.Module) -> bool:
    return type(module).__module__.split(".")[0] == "snntorch"


@dataclass
class _Call:
    """One call of a leaf module: what it read, its state before, what it gave."""

    name: str
    module: nn.Module
    x: object
    state: torch.Tensor | None = None  # a Leaky's membrane before the call
    extra: bool = False  # called with more than its input (and a Leaky's mem)
    out: object = None  # the output the next module should read (a Leaky's spikes)
    mem: torch.Tensor | None = None  # a Leaky's membrane after the call


@dataclass
class _Recorder:
    units: dict[nn.Module, str]
    calls: list[_Call] = field(default_factory=list)
    open: dict[int, _Call] = field(default_factory=dict)

    def pre(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("input_", kwargs.get("input"))
        if _is_snntorch(module):
            mem = args[1] if len(args) > 1 else kwargs.get("mem")
            extra = len(args) > 2 or bool(set(kwargs) - {"input_", "mem"})
            state = mem if mem is not None else getattr(module, "mem", None)
        else:
            extra, state = len(args) != 1 or bool(kwargs), None
        call = _Call(self.units[module], module, x, state, extra)
        self.calls.append(call)
        self.open[id(module)] = call

    def post(self, module, args, kwargs, output):
        call = self.open.pop(id(module))
        call.out = output[0] if isinstance(output, tuple) and _is_snntorch(module) else output
        if _is_snntorch(module):
            call.mem = getattr(module, "mem", None)


def _units(model: nn.Module) -> dict[nn.Module, str]:
    """The modules hooked: leaves, and snnTorch modules whole (their insides are theirs)."""
    out: dict[nn.Module, str] = {}

    def walk(module: nn.Module, name: str) -> None:
        children = list(module.named_children())
        if not children or _is_snntorch(module):
            out.setdefault(module, name)
            return
        for child_name, child in children:
            walk(child, f"{name}.{child_name}" if name else child_name)

    walk(model, "")
    return out


def _run(model: nn.Module, example: torch.Tensor, calls: int, rec: _Recorder) -> list:
    """``calls`` forwards of ``model`` on ``example`` under hooks; the outputs."""
    handles = []
    for m in rec.units:
        handles.append(m.register_forward_pre_hook(rec.pre, with_kwargs=True))
        handles.append(m.register_forward_hook(rec.post, with_kwargs=True))
    try:
        with torch.no_grad():
            return [model(example) for _ in range(calls)]
    finally:
        for h in handles:
            h.remove()


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with every snnTorch neuron at rest (a membrane left with an
    autograd history by the user's last forward cannot be deep-copied; it is dropped)."""
    memo: dict[int, object] = {}
    for m in model.modules():
        tensors = list(m._buffers.values()) + [v for v in vars(m).values()
                                               if isinstance(v, torch.Tensor)]
        for t in tensors:
            if isinstance(t, torch.Tensor) and not t.is_leaf:
                memo[id(t)] = t.detach().clone()
    work = copy.deepcopy(model, memo)
    for m in work.modules():
        if _is_snntorch(m) and isinstance(getattr(m, "mem", None), torch.Tensor):
            m.mem = torch.zeros(0, device=m.mem.device)
    return work.eval()


# --- wiring ------------------------------------------------------------------------------------

def _link(q, p) -> str | None:
    """How tensor q derives from p: "same" (p itself, or a view of it with p's shape), "flatten"
    (a view flattening each sample of p), or None."""
    if not isinstance(q, torch.Tensor) or not isinstance(p, torch.Tensor):
        return None
    if q is p:
        return "same"
    if (q.dtype != p.dtype or q.device != p.device or q.numel() == 0 or q.numel() != p.numel()
            or q.data_ptr() != p.data_ptr() or not q.is_contiguous() or not p.is_contiguous()):
        return None  # contiguous, same start, same size: the very same memory
    if q.shape == p.shape:
        return "same"
    if p.dim() > 2 and q.dim() == 2 and q.shape[0] == p.shape[0]:
        return "flatten"
    return None


def _reads_badly(call: _Call, what: str, hint: bool = True) -> ValueError:
    return ValueError(f"{FRAMEWORK}: module {call.name!r} ({_cls(call.module)}) reads {what}"
                      + (f"; only a chain of modules converts: {_HINT}" if hint else ""))


def _at_rest(call: _Call) -> bool:
    s = call.state
    return (s is None or not isinstance(s, torch.Tensor) or s.numel() == 0
            or s.shape != getattr(call.x, "shape", None) or not bool(s.any()))


@dataclass
class _Trace:
    chain: list[_Call]  # the first step's calls
    steps: list[list[_Call]]  # every step's calls
    mode: str  # "static" (every step reads example) or "indexed" (step t reads example[t])
    flatten: list[bool]  # per chain position: the module reads a flattened view
    restarts: bool = False  # a one-step model whose neurons start from rest at every call


def _split(calls: list[_Call]) -> tuple[list[_Call], list[list[_Call]]]:
    """The first pass over distinct modules, and the calls cut into steps of that chain."""
    if not calls:
        raise ValueError(f"{FRAMEWORK}: the model called no module on `example`")
    chain: list[_Call] = []
    seen: set[int] = set()
    for c in calls:
        if id(c.module) in seen:
            break
        seen.add(id(c.module))
        chain.append(c)
    n = len(chain)
    for i, c in enumerate(calls):
        want = chain[i % n]
        if c.module is not want.module:
            raise ValueError(
                f"{FRAMEWORK}: module {c.name!r} ({_cls(c.module)}) is called where "
                f"{want.name!r} was, in step {i // n}: the modules are not one chain called in "
                f"the same order at every step (a module used twice in a step is not supported)")
    if len(calls) % n:
        last = calls[-1]
        raise ValueError(f"{FRAMEWORK}: the last step stops after module {last.name!r} "
                         f"({_cls(last.module)}): every step must call the whole chain")
    return chain, [calls[i:i + n] for i in range(0, len(calls), n)]


def _source(call: _Call, example: torch.Tensor, t: int) -> tuple[str, str] | None:
    """(mode, link) of the first module's input at step t: example or example[t]."""
    link = _link(call.x, example)
    if link:
        return "static", link
    if example.dim() > 1 and t < example.shape[0]:
        link = _link(call.x, example[t])
        if link:
            return "indexed", link
    return None


def _wire(steps: list[list[_Call]], example: torch.Tensor, one_step_calls: bool) -> _Trace:
    """Check that every step is the chain, each module reading its predecessor's output."""
    chain = steps[0]
    mode, flatten = None, [False] * len(chain)
    restarted = carried = False
    for t, step in enumerate(steps):
        for i, c in enumerate(step):
            if c.extra:
                raise _reads_badly(c, "more arguments than one input tensor (and a Leaky's mem)")
            if i == 0:
                src = _source(c, example, t)
                if src is None or (mode is not None and src[0] != mode):
                    raise _reads_badly(c, "a tensor that is not the model's input `example` "
                                          "(nor example[step]), e.g. one computed in forward")
                mode, link = src
            else:
                prev = step[i - 1]
                link = _link(c.x, prev.out)
                if link is None:
                    if prev.mem is not None and _link(c.x, prev.mem):
                        raise _reads_badly(c, f"the membrane potential of {prev.name!r}, not its "
                                              f"spikes")
                    raise _reads_badly(c, f"a tensor that is not the output of {prev.name!r} "
                                          f"(computed by a functional op such as F.max_pool2d, "
                                          f"an addition, or another module's output)")
            if t == 0:
                flatten[i] = link == "flatten"
            elif flatten[i] != (link == "flatten"):
                raise _reads_badly(c, f"its input flattened at some steps only (step {t})")
            if _is_snntorch(c.module) and t > 0:
                before = steps[t - 1][i]
                if c.state is before.mem and before.mem is not None:
                    carried = True
                elif one_step_calls and _at_rest(c):
                    restarted = True
                else:
                    raise _reads_badly(c, f"a membrane at step {t} that is not its own of the "
                                          f"step before (pass the mem it returned)", hint=False)
            elif _is_snntorch(c.module) and not _at_rest(c):
                raise _reads_badly(c, "a membrane that is not at rest at the first step "
                                      "(reset it, e.g. mem = lif.init_leaky(), at the start)",
                                   hint=False)
    if restarted and carried:
        raise ValueError(f"{FRAMEWORK}: some neurons of the model keep their membrane from one "
                         f"call to the next and others start from rest: not one model in time")
    return _Trace(chain, steps, mode, flatten, restarts=restarted)


def _check_output(outputs, trace: _Trace) -> None:
    """The model must return its last module's output (stacked over its steps, for (a))."""
    last = [step[-1].out for step in trace.steps]
    want = last[0] if len(last) == 1 else torch.stack(last)

    def found(obj) -> bool:
        if isinstance(obj, torch.Tensor):
            return obj is want or (obj.shape == want.shape and obj.dtype == want.dtype
                                   and bool(torch.equal(obj, want)))
        if isinstance(obj, list | tuple):
            if len(obj) == len(last) and all(a is b for a, b in zip(obj, last, strict=True)):
                return True
            return any(found(o) for o in obj)
        if isinstance(obj, Mapping):
            return any(found(o) for o in obj.values())
        return False

    if not found(outputs):
        c = trace.chain[-1]
        raise ValueError(f"{FRAMEWORK}: the model does not return the output of its last module "
                         f"{c.name!r} ({_cls(c.module)}) (for a Leaky: its spikes, stacked over "
                         f"the steps when forward loops over them); the converted model returns "
                         f"it, so what forward does after it cannot be reproduced")


# --- neurons -----------------------------------------------------------------------------------

def _per_channel(call: _Call, what: str, value: torch.Tensor) -> torch.Tensor:
    """A Leaky's beta or threshold as a scalar or one value per channel of its input [B, C, ...]."""
    value = value.detach()
    if value.numel() == 1 and value.dim() <= call.x.dim() - 1:
        return value.reshape(())
    shape = tuple(call.x.shape[1:])
    why = None
    if value.dim() > len(shape):
        why = f"its {what} has shape {list(value.shape)}, more dimensions than a sample {shape}"
    else:
        try:
            full = value.expand(shape)
        except RuntimeError:
            why = f"its {what} of shape {list(value.shape)} does not fit a sample {list(shape)}"
        else:
            chan = full.reshape(shape[0], -1)[:, 0]
            if torch.equal(full, chan.view(-1, *([1] * (len(shape) - 1))).expand(shape)):
                return chan.clone()
            why = (f"its {what} varies inside a channel (shape {list(value.shape)}); ours is a "
                   f"scalar or one value per channel")
    raise refuse(FRAMEWORK, call.name, call.module, why)


def _surrogate(call: _Call) -> Surrogate:
    """Our surrogate for the Leaky's spike_grad (see the module docstring)."""
    m = call.module
    if getattr(m, "surrogate_disable", False):
        return ATan()
    fn = m.spike_grad
    if getattr(fn, "__module__", None) != "snntorch.surrogate":
        raise refuse(FRAMEWORK, call.name, m,
                     f"its spike_grad {getattr(fn, '__qualname__', repr(fn))} is not from "
                     f"snntorch.surrogate (whose forward, x > 0, is what we reproduce)")
    kind = getattr(fn, "__qualname__", "").split(".")[0]
    try:
        params = inspect.getclosurevars(fn).nonlocals
    except (TypeError, ValueError):
        params = {}
    if kind == "atan" and "alpha" in params:
        return ATan(alpha=float(params["alpha"]))
    if kind == "sigmoid" and "slope" in params:
        return Sigmoid(alpha=float(params["slope"]))
    return ATan()  # fast_sigmoid and the rest: snnTorch's default, the same peak 1


def _leaky(call: _Call) -> LIF:
    import snntorch

    m = call.module
    if type(m) is not snntorch.Leaky:
        raise refuse(FRAMEWORK, call.name, m,
                     "of snnTorch's modules only snntorch.Leaky converts (Synaptic, Alpha, "
                     "Lapicque, RLeaky, RSynaptic, SLSTM, ... keep other state)")
    update = getattr(m.state_function, "__func__", None)
    if update is snntorch.Leaky._base_int:
        raise refuse(FRAMEWORK, call.name, m, "reset_mechanism 'none' is not supported")
    if update not in (snntorch.Leaky._base_sub, snntorch.Leaky._base_zero):
        raise refuse(FRAMEWORK, call.name, m, "its state_function was replaced")
    if not getattr(m, "reset_delay", True):
        raise refuse(FRAMEWORK, call.name, m,
                     "reset_delay=False is not supported (only snnTorch's default, True)")
    if m.inhibition:
        raise refuse(FRAMEWORK, call.name, m, "inhibition=True is not supported")
    if m.state_quant:
        raise refuse(FRAMEWORK, call.name, m, "state_quant is not supported")
    gsf = m.graded_spikes_factor.detach()
    if not bool((gsf == 1).all()):
        raise refuse(FRAMEWORK, call.name, m, f"graded_spikes_factor {gsf.flatten().tolist()} "
                                              f"(ours are spikes of 1) is not supported")
    if not isinstance(call.x, torch.Tensor) or call.x.dim() < 2:
        raise _reads_badly(call, "an input that is not a batch [B, ...]", hint=False)
    beta = _per_channel(call, "beta", m.beta.detach().clamp(0, 1))
    threshold = _per_channel(call, "threshold", m.threshold)
    zero = update is snntorch.Leaky._base_zero
    neuron = LIF(tau=2.0, v_threshold=threshold.float(), v_reset=0.0 if zero else None,
                 decay_input=False, surrogate=_surrogate(call), detach_reset=True,
                 semantics="snntorch")
    neuron.leak = beta.to(torch.get_default_dtype())
    return neuron.to(m.beta.device)


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
