"""The spike-rate penalty (activity regularisation) and the recorder that feeds it.

    recorder = SpikeRecorder(model)          # forward hooks on every neuron (``is_neuron``)
    out_seq = model(x_seq)                   # spikes of this forward are kept, with their graph
    loss = task + spike_rate_penalty(recorder.take(), weight=λ_act)
    recorder.remove()                        # before finalize: the model must be hook-free

Normalisation (``per``), for spikes s_l of neuron layer l, shape [T, B, ...] (all calls of that
layer in one forward together):

    "neuron_step" (default):  P = λ_act · Σ_l  Σ s_l / numel(s_l)
                              mean spikes per neuron per time step (batch-averaged), in [0, 1]
                              per layer; every layer weighs the same whatever its width.
    "sample":                 P = λ_act · Σ_l  Σ s_l / B
                              spikes per sample over all T steps: the total spike count that
                              synaptic operations scale with; wide layers weigh more.

Deng et al. (TNNLS 2021) add "λ_act · the average number of spikes" to the loss; their exact
normalisation is not verified here [R], so the default is the per-neuron-per-step rate (a
dimensionless number that does not change with T, B or width) and ``"sample"`` the count.
Gradients reach the weights through the neurons' surrogate derivative of s = Θ(h − V_th).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from spikecompress.measurement.spikes import is_neuron

NORMALISATIONS = ("neuron_step", "sample")


def spike_rate_penalty(
    spikes: Mapping[str, Sequence[torch.Tensor]],
    weight: float = 1.0,
    per: str = "neuron_step",
) -> torch.Tensor:
    """``weight · Σ_l r_l`` over the neuron layers of ``spikes`` (name → that layer's output spike
    tensors [T, B, ...] from one forward); ``r_l`` as in the module docstring for ``per``.

    A pure function of its inputs (differentiable through the spikes). Raises ValueError when
    ``spikes`` holds no tensor (the forward ran without autograd, or no neuron was hooked).
    """
    if per not in NORMALISATIONS:
        raise ValueError(f"per must be one of {list(NORMALISATIONS)}, got {per!r}")
    layers = [list(seq) for seq in spikes.values() if len(seq)]
    if not layers:
        raise ValueError(
            "no spikes recorded: run a forward with autograd on after attaching the "
            "SpikeRecorder (and give the model spiking neurons)"
        )
    total = layers[0][0].new_zeros((), dtype=torch.float32)
    for seq in layers:
        count = sum(s.float().sum() for s in seq)
        if per == "neuron_step":
            norm = sum(s.numel() for s in seq)
        else:
            norm = seq[0].shape[1] if seq[0].dim() > 1 else 1  # B of [T, B, ...]
        total = total + count / norm
    return weight * total


class SpikeRecorder:
    """Forward hooks that keep the output spikes of every neuron of ``model`` (``is_neuron``) for
    the latest forward of ``model`` run with autograd on (a pre-hook on ``model`` clears them, so
    memory never exceeds one forward's spikes; forwards under ``no_grad`` record nothing).

    ``take()`` returns {neuron name: [spike tensors]} and empties the store; ``remove()`` drops
    every hook. Raises ValueError when the model has no neuron.
    """

    def __init__(self, model: nn.Module) -> None:
        self.spikes: dict[str, list[torch.Tensor]] = {}
        neurons = [(name, m) for name, m in model.named_modules() if is_neuron(m)]
        if not neurons:
            raise ValueError("SpikeRecorder: the model has no spiking neuron to record")
        self._handles = [model.register_forward_pre_hook(self._clear)]
        self._handles += [m.register_forward_hook(self._hook(name)) for name, m in neurons]

    def _clear(self, module: nn.Module, inputs: tuple) -> None:
        self.spikes = {}

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, out_seq: torch.Tensor) -> None:
            if torch.is_grad_enabled():
                self.spikes.setdefault(name, []).append(out_seq)

        return hook

    def take(self) -> dict[str, list[torch.Tensor]]:
        """The recorded spikes (name → list of [T, B, ...] tensors); the store is emptied."""
        out, self.spikes = self.spikes, {}
        return out

    def remove(self) -> None:
        """Remove every hook this recorder registered (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles, self.spikes = [], {}
