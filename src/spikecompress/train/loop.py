"""The pieces of one BPTT training step (learning-rate schedule, optimizer), used by the Trainer."""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """Cosine decay from base_lr to 0 over total_steps, a pure function of the step."""
    if total_steps <= 0:
        return base_lr
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def make_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float,
    groups: list[dict] = (),
):
    """Adam or SGD (with momentum) over the model's trainable parameters.

    ``groups`` are extra parameter groups (a compression method's own, e.g. mask logits with an
    ``lr_scale``); their parameters leave the default group, which comes first."""
    claimed = {id(p) for g in groups for p in g["params"]}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in claimed]
    extra = [{"lr_scale": 1.0, **g, "lr": lr * g.get("lr_scale", 1.0)} for g in groups]
    all_groups = [{"params": params, "lr_scale": 1.0}, *extra]
    if name == "adam":
        return torch.optim.Adam(all_groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(all_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
