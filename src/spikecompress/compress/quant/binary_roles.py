"""Where each conv / linear layer's output goes (``Role``), for ``binary``'s balancing.

``layer_roles`` traces it from one forward of the model: which leaf module consumes which tensor
(forward hooks) and which tensors an operation between modules consumes (``_Flow``, a
TorchFunctionMode). ``_check_role`` refuses, by name, a selected layer whose scale has nowhere
exact to go.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from spikecompress.snn.neuron import NEURONS

SYNAPSES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NEURON_TYPES = tuple(NEURONS.values())
_BN = nn.modules.batchnorm._BatchNorm
# balanced: layer [→ BN] → neuron, the scale moves into the threshold; readout: the model's output;
# bn_gain: layer → BN → (added to another input) → neuron, the scale stays in the BN's gain;
# unsupported: anything else (refused when selected)
ROLE_KINDS = ("balanced", "readout", "bn_gain", "unsupported")


@dataclass(frozen=True)
class Role:
    """Where a conv / linear layer's output goes: ``kind`` (``ROLE_KINDS``), its BN and the neuron
    it feeds (qualified names, None where there is none)."""

    kind: str
    bn: str | None = None
    neuron: str | None = None


def _check_role(name: str, role: Role, modules: dict[str, nn.Module]) -> None:
    """Refuse, by name, a selected layer whose scale has nowhere exact to go."""
    if role.kind == "unsupported":
        raise ValueError(f"binary: {name}'s output reaches neither a BatchNorm nor a neuron "
                         "directly (nor the model's output), so its scale cannot be moved into "
                         "a threshold: exclude it")
    if role.bn is not None:
        bn = modules[role.bn]
        if not bn.affine or not bn.track_running_stats:
            raise ValueError(f"binary: {role.bn} needs affine parameters and running statistics "
                             "to hold the folded scale (BatchNorm affine=True, "
                             "track_running_stats=True)")
    if role.kind == "balanced":
        v_reset = modules[role.neuron].reset.v_reset
        if v_reset not in (None, 0.0):
            raise ValueError(f"binary: neuron {role.neuron} has v_reset={v_reset}; threshold "
                             "balancing needs soft reset (v_reset: null) or a hard reset to 0")


# ---------------------------------------------------------------- tracing the wiring


def layer_roles(model: nn.Module) -> tuple[dict[str, Role], list[str]]:
    """Every conv / linear layer's ``Role`` and the layers in forward-call order, from one forward
    of a zero input [1, 1, *in_shape] in eval mode (state and modes restored after).

    A layer is ``balanced`` when its output tensor is consumed only by a BN whose output is
    consumed only by a neuron (or only by a neuron directly), ``readout`` when it is the model's
    output, ``bn_gain`` when it feeds only a BN whose output goes elsewhere (an addition).
    Consumption is seen at module boundaries (forward hooks on the leaf modules) and, for the
    operations written between modules (``out + identity``), by a TorchFunctionMode."""
    in_shape = getattr(model, "in_shape", None)
    if in_shape is None:
        raise ValueError("binary needs a model of spikecompress.models (with in_shape)")
    param = next(model.parameters())
    x_seq = torch.zeros(1, 1, *in_shape, dtype=param.dtype, device=param.device)
    flow = _Flow()
    modules = dict(model.named_modules())
    handles = []
    for name, m in modules.items():
        parts = name.split(".")
        if not name or "parametrizations" in parts:
            continue
        if any(n != "parametrizations" for n, _ in m.named_children()):
            continue  # a container: its own operations are the "between modules" ones
        handles += [m.register_forward_pre_hook(flow.before(name)),
                    m.register_forward_hook(flow.after(name))]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), flow:
            out = model(x_seq)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
        _reset(model)
    order = [n for n in flow.order if isinstance(modules[n], SYNAPSES)]
    roles = {name: _role(name, flow, modules, id(out)) for name in order}
    return roles, order


def _role(name: str, flow: _Flow, modules: dict, out_id: int) -> Role:
    if flow.calls[name] != 1:
        return Role("unsupported")
    first = id(flow.outputs[name])
    if first == out_id:
        return Role("readout") if not flow.users(first) and first not in flow.used else Role(
            "unsupported")
    users = flow.users(first)
    if len(users) != 1 or first in flow.used or flow.calls[users[0]] != 1:
        return Role("unsupported")
    nxt = modules[users[0]]
    if isinstance(nxt, _NEURON_TYPES):
        return Role("balanced", None, users[0])
    if not isinstance(nxt, _BN):
        return Role("unsupported")
    bn_out = id(flow.outputs[users[0]])
    after = flow.users(bn_out)
    if (len(after) == 1 and bn_out not in flow.used and bn_out != out_id
            and isinstance(modules[after[0]], _NEURON_TYPES) and flow.calls[after[0]] == 1):
        return Role("balanced", users[0], after[0])
    return Role("bn_gain", users[0], None)


def _reset(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, _NEURON_TYPES):
            m.v = None


def _tensors(value: object):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


class _Flow(TorchFunctionMode):
    """Which leaf module consumes which tensor, and which tensors an operation outside every leaf
    module consumes (``used``); tensors seen stay alive so their ids stay theirs."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.used: set[int] = set()
        self.consumers: dict[int, list[str]] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self.order: list[str] = []
        self.alive: list[object] = []

    def users(self, tensor_id: int) -> list[str]:
        return self.consumers.get(tensor_id, [])

    def before(self, name: str):
        def hook(module, inputs) -> None:
            for t in _tensors(inputs):
                self.consumers.setdefault(id(t), []).append(name)
            self.alive.append(inputs)
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.calls[name] == 1:
                self.order.append(name)
            self.depth += 1
        return hook

    def after(self, name: str):
        def hook(module, inputs, output) -> None:
            self.depth -= 1
            self.alive.append(output)
            if isinstance(output, torch.Tensor):
                self.outputs[name] = output
        return hook

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.depth == 0:
            for t in _tensors((args, kwargs)):
                self.used.add(id(t))
                self.alive.append(t)
        return func(*args, **kwargs)
