"""``evaluate``: accuracy, loss, spikes and firing rates of a model on a loader (one pass)."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from spikecompress.measurement.spikes import SpikeMonitor
from spikecompress.snn.layers import reset_state
from spikecompress.snn.losses import task_loss


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
