"""Norse's neurons → ours, for ``from_norse``:

* neurons (their parameters copied: ``LIFParameters`` and friends, scalars or one value per
  channel; ``dt``) → ``snn.norse_neurons``, which run Norse's float update exactly:
  ``LIFCell`` / ``LIF`` → ``NorseLIF`` (current-based, states v and i), ``LIFBoxCell`` →
  ``NorseLIFBox`` (``reset_value`` / ``reset_subtract``), ``LICell`` / ``LI`` → ``NorseLI``,
  ``LIBoxCell`` → ``NorseLI(box=True)``, ``LILinearCell`` → a bias-free ``Linear`` (its
  ``input_weights``) then ``NorseLI``. Spikes are Norse's ``1[v − v_th > 0]`` for every
  ``method`` whose forward is that step ("super", "heaviside", "triangle", "tanh", "circ",
  "heavi_erfc"); the backward is ``ATan(alpha=2)`` (``snn.norse_neurons`` says why);
  ``method="adjoint"`` is refused.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from spikecompress.interop.common import refuse
from spikecompress.snn.norse_neurons import NorseLI, NorseLIF, NorseLIFBox

FRAMEWORK = "norse"


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
