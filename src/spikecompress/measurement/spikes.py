"""Spike counts and firing rates per neuron layer, through forward hooks (no global state)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from spikecompress.snn.foreign import refuse_foreign
from spikecompress.snn.neuron import NEURONS
from spikecompress.snn.norse_neurons import SPIKING as NORSE_SPIKING
from spikecompress.snn.tsc import TSCNeuron
from spikecompress.snn.ttfs import TTFSNeuron

_NEURON_TYPES = (*NEURONS.values(), TSCNeuron, TTFSNeuron, *NORSE_SPIKING)


def is_neuron(module: nn.Module) -> bool:
    """True for our spiking neurons (adapters for other frameworks extend this later)."""
    return isinstance(module, _NEURON_TYPES)


@dataclass
class LayerSpikes:
    """Totals over every forward seen: spikes, neuron-steps ([T, B, ...] elements), samples."""

    spikes: int = 0
    neuron_steps: int = 0
    samples: int = 0

    @property
    def firing_rate(self) -> float:
        """Spikes per neuron per time step."""
        return self.spikes / self.neuron_steps if self.neuron_steps else 0.0


@dataclass
class SpikeMonitor:
    """Context manager counting the spikes of every neuron layer of ``model``.

    Shapes: each neuron's output is [T, B, ...]; a sample is one index of B.
    """

    model: nn.Module
    layers: dict[str, LayerSpikes] = field(default_factory=dict)

    def __enter__(self) -> SpikeMonitor:
        refuse_foreign(self.model, "SpikeMonitor")
        self._handles = []
        for name, m in self.model.named_modules():
            if is_neuron(m):
                self.layers[name] = LayerSpikes()
                self._handles.append(m.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()

    def _hook(self, name: str):
        def hook(module, inputs, out_seq: torch.Tensor) -> None:
            rec = self.layers[name]
            # events, not their sum: a spike scaled by a soft gate (mask search) is still one
            rec.spikes += int(torch.count_nonzero(out_seq.detach()))
            rec.neuron_steps += out_seq.numel()
            rec.samples += out_seq.shape[1]

        return hook

    @property
    def spikes(self) -> int:
        return sum(r.spikes for r in self.layers.values())

    @property
    def firing_rate(self) -> float:
        """All spikes over all neuron-steps of all layers."""
        steps = sum(r.neuron_steps for r in self.layers.values())
        return self.spikes / steps if steps else 0.0

    def spikes_per_sample(self) -> float:
        """Spikes of the whole network per input sample (over all T steps)."""
        samples = max((r.samples for r in self.layers.values()), default=0)
        return self.spikes / samples if samples else 0.0
