"""Classification losses on per-step logits ``out_seq`` [T, B, classes]."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def task_loss(out_seq: torch.Tensor, y: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """Classification loss on per-step logits out_seq [T, B, classes] and labels y [B].

    ``ce``: ``CE(mean_t out[t], y)``; ``tet``: ``mean_t CE(out[t], y)`` (Deng et al., ICLR 2022),
    which trains every prefix of T to classify.
    """
    if kind == "ce":
        return F.cross_entropy(out_seq.float().mean(0), y)
    T = out_seq.shape[0]
    return F.cross_entropy(out_seq.float().flatten(0, 1), y.repeat(T))  # [T*B, classes] vs [T*B]
