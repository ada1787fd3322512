"""The pieces of one BPTT training step and one evaluation pass, shared by the Trainer."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn

from spikecompress.measure.spikes import SpikeMonitor
from spikecompress.snn.layers import reset_state
from spikecompress.snn.losses import task_loss


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


def autocast(device: torch.device, amp: bool):
    """fp16 autocast on CUDA when ``amp``; nothing on CPU."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, device: torch.device | str = "cpu", amp: bool = False
) -> dict:
    """Accuracy, mean loss, spikes per sample and firing rates (total and per layer) on a loader.

    Batches are (x_seq [T, B, ...], y [B]); the prediction is the argmax of the mean logits.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    with SpikeMonitor(model) as mon:
        for x_seq, y in loader:
            x_seq, y = x_seq.to(device), y.to(device)
            with autocast(device, amp):
                out_seq = model(x_seq)
            reset_state(model)
            loss_sum += task_loss(out_seq, y).item() * y.shape[0]
            correct += (out_seq.float().mean(0).argmax(1) == y).sum().item()
            total += y.shape[0]
    model.train(was_training)
    return {
        "accuracy": correct / total if total else 0.0,
        "loss": loss_sum / total if total else 0.0,
        "samples": total,
        "spikes_per_sample": mon.spikes_per_sample(),
        "firing_rate": mon.firing_rate,
        "layers": {name: {"firing_rate": r.firing_rate} for name, r in mon.layers.items()},
    }
