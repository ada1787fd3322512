"""SpikingJelly's neurons and surrogates → ours, for ``from_spikingjelly``:

* neurons ``neuron.LIFNode`` → ``LIF``, ``neuron.IFNode`` → ``IF``, ``neuron.ParametricLIFNode`` →
  ``PLIF`` (its ``w`` copied), with ``semantics="spikingjelly"``: SpikingJelly's float update,
  operation for operation (``decay_input``, ``v_reset`` hard / None soft / non-zero,
  ``detach_reset``); every other neuron class (subclasses and ``Simple*Node`` included) is refused;
* surrogates: only the backward depends on them (the forward is a Heaviside step either way), but
  fine-tuning a converted model must see the gradient it was trained with, so only exact
  counterparts convert: ``ATan(α)`` → ``ATan(α)``, ``Sigmoid(α)`` → ``Sigmoid(α)`` (both the same
  formula as ours), ``PiecewiseQuadratic(α)`` → ``Triangle(α)`` (``α − α²|x|`` on ``|x| ≤ 1/α``),
  ``Rect(α)`` → ``Rectangular(width=1/α)`` (``α`` on ``|x| < 0.5/α``); any other surrogate, or one
  with ``spiking=False`` (whose forward is not a spike), is refused naming the neuron.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from spikecompress.interop.common import refuse
from spikecompress.snn.neuron import IF, LIF, PLIF
from spikecompress.snn.surrogate import ATan, Rectangular, Sigmoid, Triangle

FRAMEWORK = "spikingjelly"


def _scalar_or_vector(value, what: str, name: str, module: nn.Module):
    if isinstance(value, torch.Tensor):
        if value.dim() > 1:
            raise refuse(FRAMEWORK, name, module, f"{what} of shape {tuple(value.shape)} (a "
                                                  f"scalar or one value per channel converts)")
        return value.detach().float().cpu().clone()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise refuse(FRAMEWORK, name, module, f"{what} {value!r} is not a number")
    return float(value)


def _surrogate(sj, name: str, module: nn.Module):
    s_mod = sj[4]
    s = module.surrogate_function
    if not getattr(s, "spiking", True):
        raise refuse(FRAMEWORK, name, module, f"its surrogate {type(s).__name__} has "
                                              f"spiking=False (its forward is not a spike)")
    alpha = getattr(s, "alpha", None)
    makers = {s_mod.ATan: lambda a: ATan(alpha=a), s_mod.Sigmoid: lambda a: Sigmoid(alpha=a),
              s_mod.PiecewiseQuadratic: lambda a: Triangle(alpha=a),
              s_mod.Rect: lambda a: Rectangular(width=1.0 / a)}
    make = makers.get(type(s))
    if make is None or isinstance(alpha, bool) or not isinstance(alpha, int | float) \
            or not math.isfinite(alpha) or alpha <= 0:
        raise refuse(FRAMEWORK, name, module, f"surrogate {type(s).__name__}"
                     f"({'' if alpha is None else f'alpha={alpha}'}) has no exact counterpart "
                     f"(ATan, Sigmoid, PiecewiseQuadratic and Rect with alpha > 0 convert)")
    return make(float(alpha))


def _neuron(sj, name: str, m: nn.Module) -> nn.Module | None:
    """Our neuron for a SpikingJelly LIF / IF / PLIF node (None for another class)."""
    neuron = sj[3]
    kind = {neuron.LIFNode: LIF, neuron.IFNode: IF, neuron.ParametricLIFNode: PLIF}.get(type(m))
    if kind is None:
        return None
    if getattr(m, "_neuron_precision", None) is not None:
        raise refuse(FRAMEWORK, name, m, "a reduced neuron precision (set_neuron_precision) "
                                         "does not run float32's update")
    v_reset = m.v_reset
    if v_reset is not None:
        v_reset = _scalar_or_vector(v_reset, "v_reset", name, m)
        if isinstance(v_reset, torch.Tensor):
            if v_reset.dim():
                raise refuse(FRAMEWORK, name, m, "a per-channel v_reset does not convert")
            v_reset = float(v_reset)
    common = {"v_threshold": _scalar_or_vector(m.v_threshold, "v_threshold", name, m),
              "v_reset": v_reset, "detach_reset": bool(m.detach_reset),
              "surrogate": _surrogate(sj, name, m), "semantics": FRAMEWORK}
    if kind is LIF:
        return LIF(tau=_scalar_or_vector(m.tau, "tau", name, m),
                   decay_input=bool(m.decay_input), **common)
    if kind is IF:
        return IF(**common)
    w = m.w.detach()
    if w.dim() > 1:
        raise refuse(FRAMEWORK, name, m, f"w of shape {tuple(w.shape)} (a scalar or one value "
                                         f"per channel converts)")
    ours = PLIF(decay_input=bool(m.decay_input), channels=w.numel() if w.dim() else None,
                **common)
    with torch.no_grad():
        ours.w.copy_(w)
    ours.w.requires_grad_(m.w.requires_grad)
    return ours
