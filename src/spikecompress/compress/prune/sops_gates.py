"""The relaxed masks of SOPs-aware pruning (Shi et al., ICLR 2024): gates σ(β α) over weights
(a parametrization) and over a neuron's spikes, hard ``α > 0`` masks in fine-tuning, and the
exponential β annealing of the search."""

from __future__ import annotations

import math

import torch
from torch import nn


def beta_at(step: int, search_steps: int, beta: list[float]) -> float:
    """β(t) = β₀ · (β_T/β₀)^(min(t, S)/S): exponential from β₀ at t = 0 to β_T at t = S."""
    b0, b_end = beta
    frac = min(max(step, 0), search_steps) / search_steps
    return b0 * math.exp(math.log(b_end / b0) * frac)


class _Gate(nn.Module):
    """Logits α (a parameter, 0 at start), temperature β and the phase (buffers, so they travel
    with ``model.state_dict``), and the geometry constant ``cost`` (e_w or e_n)."""

    def __init__(self, shape: tuple[int, ...], cost: float, beta: float, device) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(shape, device=device))
        self.register_buffer("beta", torch.tensor(float(beta), device=device))
        self.register_buffer("hard", torch.tensor(False, device=device))
        self.cost = float(cost)

    def soft(self) -> torch.Tensor:
        """σ(β α), the relaxed mask."""
        return torch.sigmoid(self.beta * self.alpha)

    def set_phase(self, beta: float, hard: bool) -> None:
        self.beta.fill_(beta)
        self.hard.fill_(hard)
        if hard:
            self.alpha.grad = None  # frozen: optimizers skip a parameter without gradient


class WeightGate(_Gate):
    """Parametrization W ↦ W · σ(β α) (search) or ``where(α > 0, W, 0)`` (fine-tune)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if bool(self.hard):
            return torch.where(self.alpha > 0, w, torch.zeros((), dtype=w.dtype, device=w.device))
        return w * self.soft().to(w.dtype)


class NeuronGate(_Gate):
    """Spikes [T, B, *shape] ↦ spikes · σ(β α) (search) or spikes · 1[α > 0] (fine-tune)."""

    def forward(self, s_seq: torch.Tensor) -> torch.Tensor:
        mask = (self.alpha > 0) if bool(self.hard) else self.soft()
        return s_seq * mask.to(s_seq.dtype)


def _positive(gates: list[_Gate]) -> float:
    """Fraction of the gates' logits that are > 0 (0 without gates)."""
    total = sum(g.alpha.numel() for g in gates)
    return sum(int((g.alpha > 0).sum()) for g in gates) / total if total else 0.0
