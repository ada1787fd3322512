"""Exit-aware evaluation and counting for a model carrying ``model.exit_policy`` (SEENN, Li et al.,
NeurIPS 2023): what ``measure()`` reports for it.

* Accuracy: the early-exit predictions (argmax of Σ_{k≤t} out[k] at each sample's exit step t).
* Average exit step (AET, §12.4): Σ_t t · count_t / N, the mean of per-sample steps.
* Operations follow the steps actually run, per sample. The network is causal (every layer is
  stateless per step or a neuron whose state only carries forward), so the run of x_seq[:t] is
  exactly the first t steps of the full run: each test batch is run once over the full T to get
  the exits, then its samples are grouped by exit step t and every group x_seq[:t, idx] is counted
  with the exact counter (``count``). Summed over the groups, ``dense_macs``, ``neuron_updates``
  and the input elements span Σ_b t_b steps, so dividing by the average steps (``time_steps`` of
  the totals is set to the AET) gives the ANN twin one pass per sample.
* A policy network (SEENN-II) runs once on every sample before the SNN: its MACs are counted
  exactly (``count`` of its layers on its input features) and added to the SNN's MACs and layer
  table (rows ``exit_policy.net.*``); our choices: they are not part of ``dense_macs`` (the ANN
  twin has no policy) and its own memory traffic (one read of its weights and features per
  sample) is not charged at L1. Its weights are taken out of the SNN's per-step weight count.
"""

from __future__ import annotations

import torch
from torch import nn

from spikecompress.measurement.counters import Counts
from spikecompress.measurement.totals import count_loader
from spikecompress.models.exit_policy import exit_steps, predictions_at  # noqa: F401 (re-export)
from spikecompress.snn.layers import reset_state


def average_exit_step(steps: torch.Tensor) -> float:
    """AET: the mean of per-sample exit steps (each sample weighs one); 0 for no samples."""
    steps = torch.as_tensor(steps).reshape(-1)
    return float(steps.double().mean()) if steps.numel() else 0.0


def exit_policy_of(model: nn.Module) -> nn.Module:
    """``model.exit_policy``, or a ValueError saying how to install one."""
    policy = getattr(model, "exit_policy", None)
    if policy is None:
        raise ValueError("the model has no exit_policy: attach SEENN (compress.temporal.seenn) or "
                         "call models.exit_policy.install_exit_policy_(model, config)")
    return policy


@torch.no_grad()
def early_exit_predict(model: nn.Module, x_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(preds [B], steps [B]) of ``model`` with its exit policy on x_seq [T, B, ...].

    The model runs once over the full T in eval mode (state reset before and after); by causality
    its first t steps are what a run stopped at t computes, so preds are those of the early exit.
    """
    policy = exit_policy_of(model)
    was_training = model.training
    model.eval()
    try:
        reset_state(model)
        out_seq = model(x_seq)  # [T, B, K]
        steps, preds = policy(x_seq, out_seq)
    finally:
        reset_state(model)
        model.train(was_training)
    return preds, steps


def _groups(model: nn.Module, loader, seen: dict):
    """(x_seq[:t, idx], y[idx]) per batch and exit step t; fills ``seen`` with the correct
    predictions, the steps and the policy network's input features."""
    policy = exit_policy_of(model)
    for x_seq, y in loader:
        preds, steps = early_exit_predict(model, x_seq)
        y = torch.as_tensor(y).to(preds.device)
        seen["correct"] += int((preds == y).sum())
        seen["steps"].append(steps.cpu())
        seen["T"] = int(x_seq.shape[0])
        if hasattr(policy, "features"):
            with torch.no_grad():
                seen["features"].append(policy.features(x_seq))
        steps = steps.to(x_seq.device)
        for t in sorted(set(steps.tolist())):
            idx = (steps == t).nonzero()[:, 0]
            yield x_seq[:t, idx], y[idx]  # [t, b_t, ...]: the steps these samples really run


def _add_policy_counts(t: dict, policy: nn.Module, features: list[torch.Tensor]) -> None:
    """Count the policy network on its features [B, F] (as [1, B, F]) and fold it into ``t``."""
    p, last = count_loader(policy.net, ((f[None], None) for f in features))
    t["macs"] += p["macs"]
    t["sops"] += p["sops"]
    t["policy_macs"] = p["macs"]
    t["weights"] -= last.weights  # the SNN's per-step weight reads (L1) and its twin's weights
    t["params_nonzero"] -= last.weights - last.weights_zero
    for name, row in p["layers"].items():
        t["layers"][f"exit_policy.net.{name}"] = row


def exit_measure(
    model: nn.Module, loader, static_input_once: bool = False
) -> tuple[float, dict, Counts]:
    """(early-exit accuracy, totals, last group's Counts) over ``loader``: totals as
    ``totals.count_loader`` gives them, counted on the steps each sample runs, with
    ``time_steps`` = the average exit step, ``full_time_steps`` = T and ``policy_macs``."""
    policy = exit_policy_of(model)
    seen: dict = {"correct": 0, "steps": [], "features": [], "T": 0}
    t, last = count_loader(model, _groups(model, loader, seen), static_input_once)
    steps = torch.cat(seen["steps"])
    t["policy_macs"] = 0
    if hasattr(policy, "net"):
        _add_policy_counts(t, policy, seen["features"])
    t.update(time_steps=average_exit_step(steps), full_time_steps=seen["T"])
    return seen["correct"] / steps.numel(), t, last
