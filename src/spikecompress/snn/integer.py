"""Integer neuron arithmetic: the one definition the fake-quant neurons and the integer SNN share.

A quantized layer (``snn.layers``, buffer ``input_scale`` set) computes ``X = grid · acc`` with an
integer accumulator ``acc`` (integer weight codes times integer input codes plus integer bias
codes; ``grid = weight_scale · input_scale``, a scalar or one value per output channel). The
neuron after it keeps an integer membrane ``u`` in units of its ``membrane_scale`` s_u and runs,
per time step, with integers only:

    h = floor((K · u + G · acc) / 2^N)          charge: leak K/2^N, input gain G/2^N
    s = [h >= θ]                                 fire (ties fire, as the float neurons)
    u = h − θ·s  (soft)  |  u = h·(1 − s) (hard reset to 0)
    u = clamp(u, −qmax_u, qmax_u),  qmax_u = 2^(b_u − 1) − 1

``K = k·2^N`` and ``G = a·(grid / s_u)·2^N`` (rounded to integers when not exact) come from the
float neuron's decay k and input gain a (LIF: k = 1 − 1/τ, a = 1/τ or 1; IF: k = a = 1), and
``θ = ceil(V_th / s_u)`` (so ``h ≥ θ`` ⟺ ``h·s_u ≥ V_th``). When ``grid == s_u`` (MINT's shared
scale) and τ = 2 this is ``h = (u + acc) >> 1``: shifts and adds, no multiplier. N is the
smallest shift in 0..MAX_SHIFT that makes K and G exact, else MAX_SHIFT with rounding; the
integer program is then *defined* by the rounded K, G, and the fake-quant model runs the same.

The functions are dtype-generic: on int64 tensors (the integer SNN) and on float64 tensors that
hold integers (the fake-quant neuron), they give identical values as long as every intermediate
stays below 2^53 in magnitude (``check_range`` bounds it). Per-channel tensors ([C]) broadcast
over one step [B, C, ...] via ``channel_view``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MAX_SHIFT = 16
MAX_BITS = 16


def qmax(bits: int) -> int:
    """Largest code of a symmetric narrow b-bit grid: 2^(b−1) − 1 (1 for b = 1: {−1, 0, 1})."""
    return max(2 ** (bits - 1) - 1, 1)


def channel_view(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar or [C] tensor viewed to broadcast against one step x [B, C, ...]."""
    return p if p.dim() == 0 else p.view(-1, *([1] * (x.dim() - 2)))


@dataclass
class IntNeuron:
    """The integer parameters of one spiking layer (see the module docstring).

    ``leak``, ``gain``, ``threshold``: int64, scalar or [C]; ``shift`` N; ``bits`` b_u;
    ``soft``: soft reset (subtract θ) or hard reset to 0.
    """

    leak: torch.Tensor
    gain: torch.Tensor
    shift: int
    threshold: torch.Tensor
    bits: int
    soft: bool

    def step(
        self, u: torch.Tensor, acc: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step: u, acc [B, C, ...] (int64, or float64 holding integers) → (s, u', h).

        ``s`` has u's dtype (0/1)."""
        K, G = channel_view(self.leak, u).to(u.dtype), channel_view(self.gain, u).to(u.dtype)
        th = channel_view(self.threshold, u).to(u.dtype)
        h = torch.div(K * u + G * acc, 2**self.shift, rounding_mode="floor")
        s = (h >= th).to(u.dtype)
        u_next = h - th * s if self.soft else h * (1 - s)
        m = qmax(self.bits)
        return s, u_next.clamp(-m, m), h


def _exact_shift(values: list[float]) -> int | None:
    """The smallest N <= MAX_SHIFT with every value · 2^N an integer, or None."""
    for n in range(MAX_SHIFT + 1):
        if all(float(v * 2**n).is_integer() for v in values):
            return n
    return None


def int_neuron(
    k: torch.Tensor,
    a: torch.Tensor,
    v_threshold: torch.Tensor,
    grid: torch.Tensor,
    membrane_scale: torch.Tensor,
    bits: int,
    soft: bool,
) -> IntNeuron:
    """The integer parameters of a neuron with decay ``k``, input gain ``a`` and threshold
    ``v_threshold`` (each scalar or [C]) fed by a layer of output ``grid`` whose membrane is
    kept in units of ``membrane_scale`` with ``bits`` bits. Computed in float64."""
    k, a = k.detach().double(), a.detach().double()
    ratio = grid.detach().double() / membrane_scale.detach().double()
    gain = a * ratio
    values = [*k.flatten().tolist(), *gain.flatten().tolist()]
    shift = _exact_shift(values)
    shift = MAX_SHIFT if shift is None else shift
    K = torch.round(k * 2**shift).to(torch.int64)
    G = torch.round(gain * 2**shift).to(torch.int64)
    theta = torch.ceil(v_threshold.detach().double() / membrane_scale.detach().double())
    return IntNeuron(K, G, shift, theta.to(torch.int64), bits, soft)


def check_range(acc_bound: float, neuron: IntNeuron, where: str) -> None:
    """Refuse (one line naming ``where``) a layer whose charge ``K·u + G·acc`` could leave the
    range where float64 and int64 agree exactly (2^53)."""
    m = qmax(neuron.bits)
    worst = (float(neuron.leak.abs().max()) * m + float(neuron.gain.abs().max()) * acc_bound)
    if not math.isfinite(worst) or worst >= 2.0**53:
        raise ValueError(f"{where}: the integer charge can reach {worst:.3g} (>= 2^53); use fewer "
                         f"weight or membrane bits or a coarser scale")
