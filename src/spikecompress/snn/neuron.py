"""Spiking neurons over ``x_seq`` [T, B, ...]: IF, LIF and PLIF (survey eqs. 2–5).

Parameters are named as in SpikingJelly (``tau``, ``v_threshold``, ``v_reset``, ``decay_input``).
``tau`` and ``v_threshold`` may be scalars or per-channel tensors [C] (channel = dim 2 of x_seq);
they live in buffers (LIF, IF) or parameters (PLIF) so surgery can slice them and quantization can
see them. The membrane potential is explicit state in the attribute ``v`` (never a buffer): a
forward continues from it when its shape matches the input, and ``reset_state(model)`` clears it.
With ``record_v=True`` a forward also keeps ``v_seq`` (membrane after reset, [T, B, ...]) and
``h_seq`` (charge before firing), detached, for statistics; off, it costs nothing.

Neuron pruning: ``set_spike_mask_(neuron, mask)`` gives a neuron a {0, 1} buffer ``spike_mask`` of
one sample's shape ([C, ...]); the output spikes are multiplied by it at every time step and for
every sample (the membrane runs as usual; a pruned neuron simply never emits). The buffer is in
``state_dict`` once set.

Leak override: a neuron may carry a ``leak`` tensor (scalar or [C]; None by default, then absent
from ``state_dict``): the decay ``k`` of the charge is then ``leak`` instead of the value from τ
(1 for IF), the input gain unchanged: ``H[t] = leak · V[t-1] + a · X[t]`` (soft reset), the
learnable leak of Chowdhury, Rathi & Roy's temporal pruning (ECCV 2022).
``add_optional_state_(model, state)`` re-creates ``spike_mask`` and ``leak`` before loading.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from spikecompress.snn import dynamics, semantics
from spikecompress.snn.dynamics import Reset
from spikecompress.snn.layers import check_x_seq
from spikecompress.snn.quantized import LAYER_BUFFERS, NEURON_BUFFERS, run_quantized
from spikecompress.snn.surrogate import ATan, Surrogate


def _as_tensor(value: float | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.get_default_dtype()).detach().clone()
    if t.dim() > 1:
        raise ValueError(
            f"{name} must be a scalar or a per-channel vector [C], got shape {tuple(t.shape)}"
        )
    return t


def _per_channel(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a scalar or [C] parameter so it broadcasts against one step x [B, C, ...]."""
    if p.dim() == 0:
        return p.to(x.dtype)
    if x.dim() < 2 or x.shape[1] != p.shape[0]:
        raise ValueError(
            f"per-channel parameter has {p.shape[0]} channels, input step has shape "
            f"{tuple(x.shape)}"
        )
    return p.to(x.dtype).view(-1, *([1] * (x.dim() - 2)))  # [C] -> [C, 1, ...]


def _run(module: nn.Module, x_seq: torch.Tensor, k, a) -> torch.Tensor:
    """Multi-step forward shared by the neurons: [T, B, ...] → spikes [T, B, ...]."""
    check_x_seq(x_seq, "[T, B, ...]", min_dim=2)
    x0 = x_seq[0]
    k = k if module.leak is None else module.leak
    foreign = module.semantics != "native"
    if getattr(module, "membrane_bits", None) is not None:  # integer membrane: snn.quantized
        if foreign:
            raise ValueError(f"{type(module).__name__} with semantics {module.semantics!r}: an "
                             f"integer membrane runs only our own update (semantics 'native')")
        return _masked(module, run_quantized(module, x_seq, k, a, module.v_threshold), x0)
    if foreign:  # another framework's update, step by step (snn.semantics)
        s_seq, module.v = semantics.run(module, x_seq)
        module.v = module.v.detach()
        return _masked(module, s_seq, x0)
    v_th = _per_channel(module.v_threshold, x0)
    k, a = _per_channel(k, x0), _per_channel(a, x0)
    v0 = module.v
    if v0 is None or v0.shape != x0.shape:
        v0 = x0.new_full((), module.reset.v_c).expand_as(x0)  # no [B, ...] allocation
    s_seq, v_last, h_seq = dynamics.multistep(
        x_seq, v0, k, a, v_th, module.reset, module.surrogate, need_h=module.record_v
    )
    module.v = v_last.detach()
    if module.record_v:
        module.h_seq = h_seq.detach()
        module.v_seq = dynamics.after_reset(module.h_seq, s_seq.detach(), v_th, module.reset)
    return _masked(module, s_seq, x0)


def _masked(module: nn.Module, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Spikes s [..., B, C, ...] times the neuron's spike_mask [C, ...] (when it has one)."""
    mask = module.spike_mask
    if mask is None:
        return s
    if tuple(mask.shape) != tuple(x.shape[1:]):
        raise ValueError(
            f"spike_mask has shape {tuple(mask.shape)}, one sample of the input has shape "
            f"{tuple(x.shape[1:])}"
        )
    return s * mask.to(s.dtype)


def set_spike_mask_(neuron: nn.Module, mask: torch.Tensor | None) -> None:
    """Give ``neuron`` a {0, 1} ``spike_mask`` of one sample's shape (None removes it)."""
    if mask is not None:
        mask = (mask.detach() != 0).to(neuron.v_threshold.dtype).to(neuron.v_threshold.device)
    neuron.spike_mask = mask


OPTIONAL_BUFFERS = ("spike_mask", "leak", *NEURON_BUFFERS, *LAYER_BUFFERS)


def add_optional_state_(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Create the optional buffers that ``state`` holds (``spike_mask``, ``leak`` and the
    quantization buffers of ``snn.quantized``) so that ``load_state_dict`` fits."""
    modules = dict(model.named_modules())
    for key, value in state.items():
        owner, _, leaf = key.rpartition(".")
        module = modules.get(owner)
        if leaf in OPTIONAL_BUFFERS and module is not None and getattr(module, leaf, None) is None:
            module.register_buffer(leaf, torch.ones_like(value))


def _single(module: nn.Module, x: torch.Tensor, k, a) -> torch.Tensor:
    """Single-step forward shared by the neurons: [B, ...] → spikes [B, ...]."""
    if getattr(module, "membrane_bits", None) is not None:
        raise ValueError(f"{type(module).__name__}: single_step does not run an integer membrane; "
                         f"call the neuron on x_seq [T, B, ...] (or use sc.to_integer)")
    if module.semantics != "native":
        s, module.v = semantics.single(module, x)
        return _masked(module, s, x)
    v_th = _per_channel(module.v_threshold, x)
    k = k if module.leak is None else module.leak
    k, a = _per_channel(k, x), _per_channel(a, x)
    v = module.v
    if v is None or v.shape != x.shape:
        v = torch.full_like(x, module.reset.v_c)
    s, module.v, _ = dynamics.step(x, v, k, a, v_th, module.reset, module.surrogate)
    return _masked(module, s, x)


def _common_init(module, v_threshold, v_reset, surrogate, detach_reset, record_v,
                 semantics_) -> None:
    module.register_buffer("v_threshold", _as_tensor(v_threshold, "v_threshold"))
    module.reset = Reset(
        v_reset=None if v_reset is None else float(v_reset), detach=bool(detach_reset)
    )
    module.semantics = semantics.check_semantics(module, semantics_)
    module.surrogate = surrogate if surrogate is not None else ATan()
    module.record_v = record_v
    module.register_buffer("spike_mask", None)
    module.register_buffer("leak", None)
    module.v = None
    module.v_seq = module.h_seq = None


class LIF(nn.Module):
    """Leaky integrate-and-fire neuron, multi-step (survey eqs. 2–5).

    ``H[t] = V[t-1] + (X[t] − (V[t-1] − V_reset)) / τ`` (decay_input) or
    ``H[t] = V[t-1] − (V[t-1] − V_reset) / τ + X[t]``; ``S[t] = Θ(H[t] − V_th)``;
    ``V[t] = H[t](1 − S[t]) + V_reset S[t]`` (hard) or ``V[t] = H[t] − V_th S[t]`` (soft,
    ``v_reset=None``, with 0 for V_reset in the charge); ``V[-1] = V_reset``.
    Input and output: [T, B, ...] (spikes in {0, 1}, the input's dtype).
    """

    def __init__(
        self,
        tau: float | torch.Tensor = 2.0,
        v_threshold: float | torch.Tensor = 1.0,
        v_reset: float | None = 0.0,
        decay_input: bool = True,
        surrogate: Surrogate | None = None,
        detach_reset: bool = False,
        record_v: bool = False,
        semantics: str = "native",
    ) -> None:
        super().__init__()
        tau_t = _as_tensor(tau, "tau")
        if bool((tau_t <= 1).any()):
            raise ValueError(f"tau must be > 1 (a decay 1 − 1/τ in (0, 1)), got {tau}")
        self.register_buffer("tau", tau_t)
        self.decay_input = decay_input
        _common_init(self, v_threshold, v_reset, surrogate, detach_reset, record_v,
                     semantics)

    def _decay_gain(self):
        k = 1 - 1 / self.tau
        return k, (1 / self.tau) if self.decay_input else torch.ones_like(self.tau)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return _run(self, x_seq, *self._decay_gain())

    def single_step(self, x: torch.Tensor) -> torch.Tensor:
        """One step x [B, ...] → spikes [B, ...] in plain autograd (streaming; state in ``v``)."""
        return _single(self, x, *self._decay_gain())

    def extra_repr(self) -> str:
        return _repr(self, f"tau={_fmt(self.tau)}, decay_input={self.decay_input}, ")


class IF(nn.Module):
    """Integrate-and-fire neuron (no leak): ``H[t] = V[t-1] + X[t]``, then fire and reset as LIF."""

    def __init__(
        self,
        v_threshold: float | torch.Tensor = 1.0,
        v_reset: float | None = 0.0,
        surrogate: Surrogate | None = None,
        detach_reset: bool = False,
        record_v: bool = False,
        semantics: str = "native",
    ) -> None:
        super().__init__()
        _common_init(self, v_threshold, v_reset, surrogate, detach_reset, record_v,
                     semantics)

    def _decay_gain(self):
        one = torch.ones((), device=self.v_threshold.device)
        return one, one

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return _run(self, x_seq, *self._decay_gain())

    def single_step(self, x: torch.Tensor) -> torch.Tensor:
        """One step x [B, ...] → spikes [B, ...] in plain autograd (streaming; state in ``v``)."""
        return _single(self, x, *self._decay_gain())

    def extra_repr(self) -> str:
        return _repr(self, "")


class PLIF(nn.Module):
    """Parametric LIF (Fang et al., ICCV 2021): LIF with a learnable decay ``1/τ = sigmoid(w)``.

    ``w`` is initialised to ``−log(τ₀ − 1)`` so that τ starts at ``init_tau``; it is a scalar or,
    with ``channels``, one value per channel. Charge, fire and reset as ``LIF``.
    """

    def __init__(
        self,
        init_tau: float = 2.0,
        v_threshold: float | torch.Tensor = 1.0,
        v_reset: float | None = 0.0,
        decay_input: bool = True,
        surrogate: Surrogate | None = None,
        detach_reset: bool = False,
        channels: int | None = None,
        record_v: bool = False,
        semantics: str = "native",
    ) -> None:
        super().__init__()
        if init_tau <= 1:
            raise ValueError(f"init_tau must be > 1, got {init_tau}")
        w = torch.full((channels,) if channels else (), -math.log(init_tau - 1))
        self.w = nn.Parameter(w)
        self.decay_input = decay_input
        _common_init(self, v_threshold, v_reset, surrogate, detach_reset, record_v,
                     semantics)

    @property
    def tau(self) -> torch.Tensor:
        """Current time constant ``1 / sigmoid(w)`` (detached)."""
        return 1 / torch.sigmoid(self.w.detach())

    def _decay_gain(self):
        inv_tau = torch.sigmoid(self.w)
        return 1 - inv_tau, inv_tau if self.decay_input else torch.ones_like(inv_tau)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return _run(self, x_seq, *self._decay_gain())

    def single_step(self, x: torch.Tensor) -> torch.Tensor:
        """One step x [B, ...] → spikes [B, ...] in plain autograd (streaming; state in ``v``)."""
        return _single(self, x, *self._decay_gain())

    def extra_repr(self) -> str:
        return _repr(self, f"tau={_fmt(self.tau)}, decay_input={self.decay_input}, ")


NEURONS = {"lif": LIF, "if": IF, "plif": PLIF}


def _fmt(t: torch.Tensor) -> str:
    return f"{t.item():.4g}" if t.dim() == 0 else f"[{t.numel()} channels]"


def _repr(m: nn.Module, head: str) -> str:
    return (
        f"{head}v_threshold={_fmt(m.v_threshold)}, v_reset={m.reset.v_reset}, "
        f"surrogate={m.surrogate}, detach_reset={m.reset.detach}"
        + ("" if m.semantics == "native" else f", semantics={m.semantics!r}")
    )
