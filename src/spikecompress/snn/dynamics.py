"""The shared leaky integrate-and-fire dynamics behind IF, LIF and PLIF (survey eqs. 2–5).

All three neurons are one affine charge, a threshold and a reset:

    H[t] = k · (V[t-1] − V_c) + V_c + a · X[t]         charge   (k: decay, a: input gain)
    S[t] = Θ(H[t] − V_th)                              fire     (ties fire)
    V[t] = H[t] (1 − S[t]) + V_reset S[t]              hard reset
    V[t] = H[t] − V_th S[t]                            soft reset (v_reset=None)

with ``V_c = V_reset`` for hard reset and 0 for soft reset. LIF: ``k = 1 − 1/τ`` and
``a = 1/τ`` (decay_input) or 1; IF: ``k = a = 1``. ``k``, ``a`` and ``V_th`` are tensors that
broadcast against one step ``x`` of shape [B, ...] (scalars or per-channel [C, 1, ...]).

``multistep`` runs all T steps in one autograd node with a hand-written BPTT backward: only the
charge H[T, B, ...] is saved, which keeps memory and time near a plain activation function. ``step``
is the same update in plain autograd ops, the reference the fused kernel is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spikecompress.snn.surrogate import Surrogate


@dataclass(frozen=True)
class Reset:
    """How a neuron resets: ``v_reset`` (None = soft reset) and whether the reset is detached."""

    v_reset: float | None
    detach: bool

    @property
    def v_c(self) -> float:
        return 0.0 if self.v_reset is None else self.v_reset


def step(
    x: torch.Tensor,
    v: torch.Tensor,
    k: torch.Tensor,
    a: torch.Tensor,
    v_th: torch.Tensor,
    reset: Reset,
    surrogate: Surrogate,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One time step in plain autograd ops. Shapes: x, v [B, ...]. Returns (spike, v_next, h)."""
    h = k * (v - reset.v_c) + reset.v_c + a * x
    s = surrogate(h - v_th)
    s_r = s.detach() if reset.detach else s
    if reset.v_reset is None:
        v_next = h - v_th * s_r
    else:
        v_next = h * (1 - s_r) + reset.v_reset * s_r
    return s, v_next, h


def _reduce_to(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum a broadcast gradient [B, ...] back to the shape of a (scalar or per-channel) parameter."""
    if grad.shape == like.shape:
        return grad
    lead = grad.dim() - like.dim()
    grad = grad.sum(dim=tuple(range(lead))) if lead > 0 else grad
    dims = tuple(i for i, n in enumerate(like.shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(dim=dims, keepdim=True) if dims else grad


def after_reset(h: torch.Tensor, s: torch.Tensor, v_th: torch.Tensor, reset: Reset) -> torch.Tensor:
    """Membrane after the reset, from the charge h and the spikes s (any matching shapes)."""
    if reset.v_reset is None:
        return h - v_th * s
    return torch.where(s.bool(), torch.full_like(h, reset.v_reset), h)


class MultiStepNeuron(torch.autograd.Function):
    """Fused forward over T steps and its exact BPTT backward with the surrogate derivative."""

    @staticmethod
    def forward(ctx, x_seq, v0, k, a, v_th, reset: Reset, surrogate: Surrogate):
        h_seq = torch.empty_like(x_seq)
        s_seq = torch.empty_like(x_seq)
        v = v0
        for t in range(x_seq.shape[0]):
            h = torch.add(k * (v - reset.v_c), a * x_seq[t], out=h_seq[t]).add_(reset.v_c)
            s = s_seq[t].copy_(h >= v_th)
            v = after_reset(h, s, v_th, reset)
        needs_x_for_grad = ctx.needs_input_grad[3]
        ctx.save_for_backward(h_seq, v0, k, a, v_th, x_seq if needs_x_for_grad else None)
        ctx.reset, ctx.surrogate = reset, surrogate
        return s_seq, v, h_seq

    @staticmethod
    def backward(ctx, g_s_seq, g_v_last, g_h_unused):
        h_seq, v0, k, a, v_th, x_seq = ctx.saved_tensors
        reset, sg = ctx.reset, ctx.surrogate
        need_x, need_v0, need_k, need_a, need_th = ctx.needs_input_grad[:5]
        g_x_seq = torch.empty_like(h_seq) if need_x else None
        g_k = g_a = g_th = None
        g_v = g_v_last if g_v_last is not None else torch.zeros_like(h_seq[0])
        for t in range(h_seq.shape[0] - 1, -1, -1):
            h = h_seq[t]
            s = _spikes(h, v_th)
            d = sg.derivative(h - v_th)
            # dV/dH and dV/dS of the reset, then the spike's total gradient
            if reset.v_reset is None:
                g_h = g_v.clone()
                g_s = g_s_seq[t] if reset.detach else g_s_seq[t] - g_v * v_th
            else:
                g_h = g_v * (1 - s)
                g_s = g_s_seq[t] if reset.detach else g_s_seq[t] + g_v * (reset.v_reset - h)
            g_h = g_h.add_(g_s * d)
            if need_th:
                g = -g_s * d - (g_v * s if reset.v_reset is None else 0)
                g_th = g if g_th is None else g_th + g
            if need_x:
                g_x_seq[t] = g_h * a
            if t == 0:
                v_prev = v0
            else:
                v_prev = after_reset(h_seq[t - 1], _spikes(h_seq[t - 1], v_th), v_th, reset)
            if need_k:
                g = g_h * (v_prev - reset.v_c)
                g_k = g if g_k is None else g_k + g
            if need_a:
                g = g_h * x_seq[t]
                g_a = g if g_a is None else g_a + g
            g_v = g_h * k
        return (
            g_x_seq,
            g_v if need_v0 else None,
            _reduce_to(g_k, k) if need_k else None,
            _reduce_to(g_a, a) if need_a else None,
            _reduce_to(g_th, v_th) if need_th else None,
            None,
            None,
        )


def _spikes(h: torch.Tensor, v_th: torch.Tensor) -> torch.Tensor:
    return (h >= v_th).to(h.dtype)


def multistep(
    x_seq: torch.Tensor,
    v0: torch.Tensor,
    k: torch.Tensor,
    a: torch.Tensor,
    v_th: torch.Tensor,
    reset: Reset,
    surrogate: Surrogate,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run T steps. Shapes: x_seq [T, B, ...], v0 [B, ...]. Returns (s_seq, v_last, h_seq)."""
    return MultiStepNeuron.apply(x_seq, v0, k, a, v_th, reset, surrogate)
