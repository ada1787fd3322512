"""How ``from_snntorch`` reads an snnTorch model: its calls under hooks, cut into steps of one
chain of modules, each reading its predecessor's output.

The converter runs the model once on ``example`` (a copy of it: the user's model, its hidden state
and its BN statistics are left alone) with hooks on every leaf module, takes the modules of the
first step in call order as a chain (a module called again starts the next step), and checks that
every module reads the previous one's output (a Leaky's spikes), the first the model's input, and
every Leaky its own membrane of the step before. A view that flattens each sample
(``x.view(B, -1)``, ``x.flatten(1)``) between two modules becomes a Flatten node. Anything else (a
tensor made by a functional op such as ``F.max_pool2d``, an addition, a Leaky's membrane read by
the next layer, a module we have no counterpart for) is a one-line ValueError naming the module and
its class: write such parts as torch modules (``nn.MaxPool2d``, ``nn.Flatten``) in an
``nn.Sequential`` instead.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

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
