"""Distillation losses: Hinton's softened KL, the spike-count window losses, the feature MSE.

    soft_kl(z_s, z_t, tau) = tau² · KL(softmax(z_t / tau) ‖ softmax(z_s / tau))   (batch mean)

The tau² keeps the gradient's size independent of tau (Hinton, Vinyals & Dean 2015).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DISTANCES = ("mse", "kl")


def soft_kl(z_s: torch.Tensor, z_t: torch.Tensor, tau: float) -> torch.Tensor:
    """tau² · KL(p_t ‖ p_s) with p = softmax(z / tau), summed over classes, mean over the batch;
    z [B, K]."""
    log_p_s = F.log_softmax(z_s.float() / tau, dim=-1)
    log_p_t = F.log_softmax(z_t.float() / tau, dim=-1)
    return tau * tau * (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()


def rate_distance(r_s: torch.Tensor, r_t: torch.Tensor, distance: str, tau: float) -> torch.Tensor:
    """D(student rates, teacher rates) over [B, C]: the mean squared error, or ``soft_kl`` of
    the rates as logits."""
    if distance == "mse":
        return F.mse_loss(r_s.float(), r_t.float())
    return soft_kl(r_s, r_t, tau)


def windows(T: int, window: int, stride: int) -> list[tuple[int, int]]:
    """The (start, end) of the K = floor((T − w) / stride) + 1 windows of length w."""
    if not 1 <= window <= T:
        raise ValueError(f"window must be in 1..T = {T}, got {window}")
    return [(k, k + window) for k in range(0, T - window + 1, stride)]


def window_loss(o_s: torch.Tensor, o_t: torch.Tensor, window: int, stride: int, distance: str,
                tau: float) -> torch.Tensor:
    """Kushawaha et al.'s sliding-window spike loss on output tensors o [T, B, C]:
    (1/K) Σ_k D(count(o_s[k·st : k·st + w]) / w, count(o_t[...]) / w). With w = T it is the
    full-window loss D(count / T) on the whole sequence."""
    spans = windows(o_s.shape[0], window, stride)
    total = o_s.new_zeros((), dtype=torch.float32)
    for a, b in spans:
        total = total + rate_distance(o_s[a:b].mean(0), o_t[a:b].mean(0), distance, tau)
    return total / len(spans)
