"""Norse's neurons (norse.torch 1.1) over ``x_seq`` [T, B, ...], with Norse's float update exactly.

A model converted from Norse (``spikecompress.interop.norse``) keeps Norse's neuron models, whose
updates are not ours: a current-based LIF with two states, a box LIF with Norse's own charge, and
the non-spiking leaky-integrator read-out. Each step below is Norse's forward Euler step
(``norse/torch/functional/lif.py``, ``lif_box.py``, ``leaky_integrator.py``,
``leaky_integrator_box.py``), operation for operation and in the same order, so float32 results are
bit-identical to Norse's on the same inputs (``interop.norse`` checks it on every conversion):

``NorseLIF`` (``LIFCell``, ``LIF``; a feed-forward step, state ``v`` and ``i``)::

    i' = i + x
    v~ = v + (dt·τ_mem⁻¹) · ((v_leak − v) + i')
    i  ← i' + (−dt·τ_syn⁻¹) · i'
    z  = Θ(v~ − v_th)                      Θ(u) = 1[u > 0]: a tie does not fire
    v  ← (1 − z) · v~ + z · v_reset

``NorseLIFBox`` (``LIFBoxCell``; no current)::

    v~ = v + (dt·τ_mem⁻¹) · ((x + v_leak) − v)
    z  = Θ(v~ − v_th)
    v  ← (1 − z) · v~ + z · v_reset        reset="value" (Norse's reset_value)
    v  ← (1 − z) · v~ + z · (v~ − v_th)    reset="subtract" (reset_subtract)

``NorseLI`` (``LICell``, ``LI``; ``box=True``: ``LIBoxCell``, no current); output: the membrane::

    i' = i + x                              (box: i' = x, no state i)
    v  ← v + (dt·τ_mem⁻¹) · ((v_leak − v) + i')
    i  ← i' + (−dt·τ_syn⁻¹) · i'

The initial state is Norse's: ``v = v_leak``, ``i = 0``. ``dt`` is a float (Norse's default 1e-3
s) and ``dt·τ⁻¹`` is computed as Norse does, a Python float times the float32 tensor τ⁻¹ (the
converter stores ``dt = 1`` and the products as τ⁻¹ where Norse's own product was taken in Python
doubles and rounds differently). Parameters are buffers, each a scalar or one value per channel
[C] (channel = dim 2 of x_seq, dim 1 of a step), so surgery can slice them.

Conventions of our neurons: state in the attribute ``v`` (and ``i``), never a buffer; a forward
continues from it when its shape matches the input, else starts from Norse's initial state;
``snn.reset_state`` clears it (setting ``v`` to None also clears ``i``). ``record_v=True`` keeps
``v_seq`` (membrane after reset, [T, B, ...]) and ``h_seq`` (``v~``, before firing), detached.
The spiking neurons have a ``v_threshold`` buffer and the optional ``spike_mask`` of
``snn.neuron`` (spikes times the mask; the membrane runs as usual).

Surrogate gradient: only the backward. Norse's default ``method="super"`` (SuperSpike, Zenke &
Ganguli 2018: ``g'(u) = 1 / (1 + |u|)²``, Norse 1.1 ignores its ``alpha``) has no twin among
``snn.surrogate.SURROGATES``; the default here is ``ATan(alpha=2)``, ``1 / (1 + (πu)²)``: the same
peak (1 at the threshold) and the same 1/u² tails, half width 0.32 against SuperSpike's 0.41.
The forward is Norse's Heaviside whatever the surrogate (``surrogate(u)`` minus the tie ``u = 0``,
where our ``SpikeFunction`` fires and Norse does not).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from spikecompress.snn.layers import check_x_seq
from spikecompress.snn.surrogate import SURROGATES, ATan, Surrogate


def _param(value: float | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.get_default_dtype()).detach().clone()
    if t.dim() > 1:
        raise ValueError(f"{name} must be a scalar or a per-channel vector [C], got shape "
                         f"{tuple(t.shape)}")
    return t


def _channels(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar or [C] tensor viewed to broadcast against one step x [B, C, ...]."""
    if p.dim() == 0:
        return p
    if x.dim() < 2 or x.shape[1] != p.shape[0]:
        raise ValueError(f"per-channel parameter has {p.shape[0]} channels, input step has "
                         f"shape {tuple(x.shape)}")
    return p.view(-1, *([1] * (x.dim() - 2)))


def _value(t: torch.Tensor):
    return t.item() if t.dim() == 0 else t.tolist()


def _fmt(t: torch.Tensor) -> str:
    return f"{t.item():.4g}" if t.dim() == 0 else f"[{t.numel()} channels]"


class _NorseNeuron(nn.Module):
    """State convention shared by the three classes (``v``, ``i``, ``record_v``)."""

    PARAMS: tuple[str, ...] = ()  # buffers, in spec order

    def __init__(self, dt: float, record_v: bool, **params) -> None:
        super().__init__()
        dt = float(dt)
        if not dt > 0:
            raise ValueError(f"dt must be > 0, got {dt}")
        self.dt = dt
        for name in self.PARAMS:
            self.register_buffer(name, _param(params[name], name))
        self.record_v = bool(record_v)
        self._v = self.i = None
        self.v_seq = self.h_seq = None

    @property
    def v(self) -> torch.Tensor | None:
        """The membrane after the last step [B, ...] (detached), or None before any."""
        return self._v

    @v.setter
    def v(self, value: torch.Tensor | None) -> None:
        self._v = value
        if value is None:  # reset_state: the current goes with the membrane
            self.i = None

    def _start(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(v, i) to continue from: the kept state when its shape fits, else Norse's initial."""
        if self._v is not None and self._v.shape == x0.shape:
            return self._v, self.i
        v = _channels(self.v_leak.to(x0.dtype), x0).expand_as(x0)
        return v, (torch.zeros_like(x0) if "tau_syn_inv" in self.PARAMS else None)

    def _rates(self, x0: torch.Tensor):
        """Norse's ``dt * tau_mem_inv`` and ``-dt * tau_syn_inv``, viewed per channel."""
        mem = _channels(self.dt * self.tau_mem_inv.to(x0.dtype), x0)
        syn = _channels(-self.dt * self.tau_syn_inv.to(x0.dtype), x0) \
            if "tau_syn_inv" in self.PARAMS else None
        return mem, syn

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        """x_seq [T, B, ...] → spikes (LI: membranes) [T, B, ...]."""
        check_x_seq(x_seq, "[T, B, ...]", min_dim=2)
        x0 = x_seq[0]
        consts = self._consts(x0)
        v, i = self._start(x0)
        outs, charges, after = [], [], []
        for x in x_seq.unbind(0):
            out, h, v, i = self._step(x, v, i, consts)
            outs.append(out)
            if self.record_v:
                charges.append(h.detach())
                after.append(v.detach())
        self.v = v.detach()
        self.i = None if i is None else i.detach()
        if self.record_v:
            self.h_seq, self.v_seq = torch.stack(charges), torch.stack(after)
        return self._masked(torch.stack(outs), x0)

    def single_step(self, x: torch.Tensor) -> torch.Tensor:
        """One step x [B, ...] → spikes (LI: membrane) [B, ...] (streaming; state in ``v``)."""
        v, i = self._start(x)
        out, _, v, i = self._step(x, v, i, self._consts(x))
        self.v = v
        self.i = i
        return self._masked(out, x)

    def _masked(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mask = getattr(self, "spike_mask", None)
        if mask is None:
            return out
        if tuple(mask.shape) != tuple(x.shape[1:]):
            raise ValueError(f"spike_mask has shape {tuple(mask.shape)}, one sample of the input "
                             f"has shape {tuple(x.shape[1:])}")
        return out * mask.to(out.dtype)

    def _fire(self, u: torch.Tensor) -> torch.Tensor:
        """Norse's Heaviside ``1[u > 0]`` forward, the surrogate's derivative backward."""
        s = self.surrogate(u)
        return s - (u == 0).to(s.dtype)  # our SpikeFunction fires on a tie, Norse does not

    # ---- spec (models.layer_graph NODE_TYPES)

    def to_spec(self) -> dict:
        """The node parameters that ``from_spec`` rebuilds this neuron from."""
        out = {name: _value(getattr(self, name)) for name in self.PARAMS}
        out["dt"] = self.dt
        surrogate = getattr(self, "surrogate", None)
        if surrogate is not None:
            out["surrogate"] = next(k for k, c in SURROGATES.items() if type(surrogate) is c)
            out["surrogate_params"] = dataclasses.asdict(surrogate)
        return out

    @classmethod
    def _from_spec_args(cls, p: dict) -> dict:
        args = {name: torch.tensor(p[name], dtype=torch.get_default_dtype())
                for name in cls.PARAMS}
        if "surrogate" in p:
            args["surrogate"] = SURROGATES[p["surrogate"]](**p["surrogate_params"])
        return args | {"dt": p["dt"]}

    def extra_repr(self) -> str:
        return ", ".join(f"{n}={_fmt(getattr(self, n))}" for n in self.PARAMS) + f", dt={self.dt}"


class _Spiking(_NorseNeuron):
    """A spiking Norse neuron: ``v_threshold``, ``spike_mask`` and a surrogate."""

    def __init__(self, dt, record_v, surrogate, **params) -> None:
        super().__init__(dt, record_v, **params)
        self.surrogate = surrogate if surrogate is not None else ATan()
        self.register_buffer("spike_mask", None)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, surrogate={self.surrogate}"


class NorseLIF(_Spiking):
    """Norse's current-based LIF (``LIFCell`` / ``LIF``) over x_seq [T, B, ...] → spikes.

    Parameters as Norse's ``LIFParameters`` (defaults too), ``v_th`` named ``v_threshold``.
    """

    PARAMS = ("tau_syn_inv", "tau_mem_inv", "v_leak", "v_threshold", "v_reset")

    def __init__(
        self,
        tau_syn_inv: float | torch.Tensor = 200.0,
        tau_mem_inv: float | torch.Tensor = 100.0,
        v_leak: float | torch.Tensor = 0.0,
        v_threshold: float | torch.Tensor = 1.0,
        v_reset: float | torch.Tensor = 0.0,
        dt: float = 0.001,
        surrogate: Surrogate | None = None,
        record_v: bool = False,
    ) -> None:
        super().__init__(dt, record_v, surrogate, tau_syn_inv=tau_syn_inv,
                         tau_mem_inv=tau_mem_inv, v_leak=v_leak, v_threshold=v_threshold,
                         v_reset=v_reset)

    def _consts(self, x0):
        return (*self._rates(x0), _channels(self.v_leak.to(x0.dtype), x0),
                _channels(self.v_threshold.to(x0.dtype), x0),
                _channels(self.v_reset.to(x0.dtype), x0))

    def _step(self, x, v, i, consts):
        rate_mem, rate_syn, v_leak, v_th, v_reset = consts
        i_new = i + x  # Norse's lif_feed_forward_step, in its order
        v_decayed = v + rate_mem * ((v_leak - v) + i_new)
        i_decayed = i_new + rate_syn * i_new
        z = self._fire(v_decayed - v_th)
        v_new = (1 - z) * v_decayed + z * v_reset
        return z, v_decayed, v_new, i_decayed

    @classmethod
    def from_spec(cls, p: dict) -> NorseLIF:
        return cls(**cls._from_spec_args(p))


class NorseLIFBox(_Spiking):
    """Norse's box LIF (``LIFBoxCell``, no current) over x_seq [T, B, ...] → spikes.

    ``reset``: "value" (Norse's ``reset_value``, the default) or "subtract" (``reset_subtract``).
    """

    PARAMS = ("tau_mem_inv", "v_leak", "v_threshold", "v_reset")
    RESETS = ("value", "subtract")

    def __init__(
        self,
        tau_mem_inv: float | torch.Tensor = 100.0,
        v_leak: float | torch.Tensor = 0.0,
        v_threshold: float | torch.Tensor = 1.0,
        v_reset: float | torch.Tensor = 0.0,
        reset: str = "value",
        dt: float = 0.001,
        surrogate: Surrogate | None = None,
        record_v: bool = False,
    ) -> None:
        if reset not in self.RESETS:
            raise ValueError(f"reset must be one of {list(self.RESETS)}, got {reset!r}")
        super().__init__(dt, record_v, surrogate, tau_mem_inv=tau_mem_inv, v_leak=v_leak,
                         v_threshold=v_threshold, v_reset=v_reset)
        self.reset = reset

    def _consts(self, x0):
        return (self._rates(x0)[0], _channels(self.v_leak.to(x0.dtype), x0),
                _channels(self.v_threshold.to(x0.dtype), x0),
                _channels(self.v_reset.to(x0.dtype), x0))

    def _step(self, x, v, i, consts):
        rate_mem, v_leak, v_th, v_reset = consts
        v_decayed = v + rate_mem * (x + v_leak - v)  # Norse's lif_box_feed_forward_step
        z = self._fire(v_decayed - v_th)
        if self.reset == "value":
            v_new = (1 - z) * v_decayed + z * v_reset
        else:
            v_new = (1 - z) * v_decayed + z * (v_decayed - v_th)
        return z, v_decayed, v_new, None

    def to_spec(self) -> dict:
        return super().to_spec() | {"reset": self.reset}

    @classmethod
    def from_spec(cls, p: dict) -> NorseLIFBox:
        return cls(reset=p["reset"], **cls._from_spec_args(p))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reset={self.reset!r}"


class NorseLI(_NorseNeuron):
    """Norse's leaky integrator (``LICell`` / ``LI``; ``box=True``: ``LIBoxCell``), the
    non-spiking read-out: x_seq [T, B, ...] → membranes [T, B, ...]. Norse's ``LILinearCell`` is
    a bias-free Linear followed by this. Not a spiking neuron (``measurement`` does not count it);
    channel surgery slices its per-channel buffers like a neuron's.
    """

    PARAMS = ("tau_syn_inv", "tau_mem_inv", "v_leak")

    def __init__(
        self,
        tau_syn_inv: float | torch.Tensor = 200.0,
        tau_mem_inv: float | torch.Tensor = 100.0,
        v_leak: float | torch.Tensor = 0.0,
        dt: float = 0.001,
        box: bool = False,
        record_v: bool = False,
    ) -> None:
        super().__init__(dt, record_v, tau_syn_inv=tau_syn_inv, tau_mem_inv=tau_mem_inv,
                         v_leak=v_leak)
        self.box = bool(box)

    def _start(self, x0):
        v, i = super()._start(x0)
        return v, (None if self.box else i)

    def _consts(self, x0):
        return (*self._rates(x0), _channels(self.v_leak.to(x0.dtype), x0))

    def _step(self, x, v, i, consts):
        rate_mem, rate_syn, v_leak = consts
        if self.box:  # Norse's li_box_feed_forward_step
            v_new = v + rate_mem * ((v_leak - v) + x)
            return v_new, v_new, v_new, None
        i_jump = i + x  # Norse's li_feed_forward_step
        v_new = v + rate_mem * ((v_leak - v) + i_jump)
        i_decayed = i_jump + rate_syn * i_jump
        return v_new, v_new, v_new, i_decayed

    def to_spec(self) -> dict:
        return super().to_spec() | {"box": self.box}

    @classmethod
    def from_spec(cls, p: dict) -> NorseLI:
        return cls(box=p["box"], **cls._from_spec_args(p))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, box={self.box}"


SPIKING = (NorseLIF, NorseLIFBox)  # counted as neurons (measurement)
NORSE_NEURONS = (NorseLIF, NorseLIFBox, NorseLI)  # stateful, sliced by channel surgery
