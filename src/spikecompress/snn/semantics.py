"""Other frameworks' neuron updates, reproduced operation for operation.

Our neurons (``LIF``, ``IF``, ``PLIF``) run the charge ``k·(V − V_c) + V_c + a·X`` in a fused
kernel. A model converted from another framework (``spikecompress.interop``) must give exactly the
spikes that framework gives, in float32, so its neurons carry ``semantics`` naming the framework
whose update they run, step by step in plain autograd ops and in that framework's order:

``"spikingjelly"`` (SpikingJelly 2.0's torch reference, ``_ops/lif/reference.py``):
    LIF  ``H = V + (X − (V − V_r)) / τ`` (decay_input) or ``H = V − (V − V_r) / τ + X``
    PLIF the same with ``· sigmoid(w)`` in place of ``/ τ``
    IF   ``H = V + X``
    fire ``H ≥ V_th`` (ties fire), reset as ours (hard ``S·V_r + (1 − S)·H``, soft ``H − S·V_th``,
    both exact for S ∈ {0, 1}).
``"snntorch"`` (snnTorch 1.0's ``Leaky`` with its default ``reset_delay=True``), LIF only, the
    decay β in the neuron's ``leak`` buffer and ``V`` holding the membrane *before* its reset:
    ``R = [V > V_th]`` (the previous step's spike, detached), then
    subtract (``v_reset=None``): ``H = β·V + X − R·V_th``;
    zero (``v_reset=0``): ``H = β·((1 − R)·V) + X``;
    fire ``H > V_th`` (ties do not fire).
``"native"``: our own update (the fused kernel); the default.

The surrogate derivative is ours (the neuron's ``surrogate``); only the forward is the framework's.
Integer membranes (``snn.quantized``) and the fused kernel need "native".
"""

from __future__ import annotations

import torch
from torch import nn

SEMANTICS = ("native", "spikingjelly", "snntorch")


def check_semantics(module: nn.Module, semantics: object) -> str:
    """``semantics`` validated for ``module`` (a one-line ValueError names what does not fit)."""
    name = type(module).__name__
    if semantics not in SEMANTICS:
        raise ValueError(f"{name}: semantics must be one of {list(SEMANTICS)}, got {semantics!r}")
    if semantics == "snntorch" and name != "LIF":
        raise ValueError(f"{name}: semantics 'snntorch' is snnTorch's Leaky, a LIF")
    if semantics == "snntorch" and module.reset.v_reset not in (None, 0.0):
        raise ValueError(f"{name}: semantics 'snntorch' resets by subtraction (v_reset null) or "
                         f"to zero (v_reset 0), got v_reset {module.reset.v_reset}")
    return semantics


def _channels(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar or [C] tensor viewed to broadcast against one step x [B, C, ...]."""
    return p if p.dim() == 0 else p.view(-1, *([1] * (x.dim() - 2)))


def _charge_spikingjelly(module: nn.Module, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    kind = type(module).__name__
    if kind == "IF":
        return v + x
    vr = module.reset.v_c
    if kind == "PLIF":
        inv = _channels(torch.sigmoid(module.w), x)
        if module.decay_input:
            return v + (x - (v - vr)) * inv
        return v - (v - vr) * inv + x
    tau = _channels(module.tau, x)
    if module.decay_input:
        return v + (x - (v - vr)) / tau
    return v - (v - vr) / tau + x


def _fire(module: nn.Module, h: torch.Tensor, v_th: torch.Tensor) -> torch.Tensor:
    return module.surrogate(h - v_th)


def _step_spikingjelly(module, x, v):
    v_th = _channels(module.v_threshold, x)
    h = _charge_spikingjelly(module, x, v)
    s = _fire(module, h, v_th)
    s_r = s.detach() if module.reset.detach else s
    if module.reset.v_reset is None:
        v_next = h - s_r * v_th
    else:
        v_next = s_r * module.reset.v_reset + (1.0 - s_r) * h
    return s, v_next, h


def _step_snntorch(module, x, v):
    if module.leak is None:
        raise ValueError("LIF with semantics 'snntorch' needs its decay β in `leak`")
    v_th = _channels(module.v_threshold, x)
    beta = _channels(module.leak, x)
    r = (v > v_th).to(x.dtype)  # the previous step's spike, detached (reset_delay=True)
    if module.reset.v_reset is None:
        h = beta * v + x - r * v_th
    else:
        h = beta * ((1 - r) * v) + x
    s = _fire(module, h, v_th)
    s = s - (h == v_th).to(s.dtype)  # snnTorch fires on H > V_th: a tie does not spike
    return s, h, h  # the state is the membrane before its (delayed) reset


STEPS = {"spikingjelly": _step_spikingjelly, "snntorch": _step_snntorch}


def run(module: nn.Module, x_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All steps of x_seq [T, B, ...] under ``module.semantics``: (spikes [T, B, ...], V[T-1])."""
    step = STEPS[module.semantics]
    v = module.v
    if v is None or v.shape != x_seq.shape[1:]:
        v = torch.full_like(x_seq[0], module.reset.v_c)
    spikes, charges, after = [], [], []
    for x in x_seq.unbind(0):
        s, v, h = step(module, x, v)
        spikes.append(s)
        if module.record_v:
            charges.append(h.detach())
            after.append(v.detach())
    if module.record_v:
        module.h_seq, module.v_seq = torch.stack(charges), torch.stack(after)
    return torch.stack(spikes), v


def single(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step x [B, ...] under ``module.semantics``: (spikes, V)."""
    v = module.v
    if v is None or v.shape != x.shape:
        v = torch.full_like(x, module.reset.v_c)
    s, v, _ = STEPS[module.semantics](module, x, v)
    return s, v
