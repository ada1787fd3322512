"""snnTorch's neurons for ``from_snntorch``: ``snntorch.Leaky`` → our LIF, every other one refused.

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
"""

from __future__ import annotations

import inspect

import torch

from spikecompress.interop.common import refuse
from spikecompress.interop.snntorch_trace import FRAMEWORK, _Call, _reads_badly
from spikecompress.snn.neuron import LIF
from spikecompress.snn.surrogate import ATan, Sigmoid, Surrogate


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
