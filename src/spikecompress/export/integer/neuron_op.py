"""``IntNeuronOp``: the integer SNN's spiking layer, ``snn.integer.IntNeuron.step`` from u = 0 at
t = 0, spikes times the optional ``spike_mask`` (int8 {0, 1} of one sample's shape)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spikecompress.export.integer.ops import Shape, _present
from spikecompress.snn.integer import IntNeuron


@dataclass(repr=False, eq=False)
class IntNeuronOp:
    """A spiking layer: ``neuron.step`` (``snn.integer.IntNeuron``) per time step from u = 0,
    its spikes (0/1, int64) times ``spike_mask`` (int8 {0, 1} of one sample's shape, or None).
    ``membrane_scale`` (float32 [] or [C]): metadata, the membrane's unit."""

    name: str
    neuron: IntNeuron
    spike_mask: torch.Tensor | None
    membrane_scale: torch.Tensor

    kind = "neuron"

    def out_shape(self, shape: Shape) -> Shape:
        for key in ("leak", "gain", "threshold"):
            p = getattr(self.neuron, key)
            if p.dim() > 1 or (p.dim() == 1 and (len(shape) < 1 or p.shape[0] != shape[0])):
                raise ValueError(f"{self.name}: {key} of shape {list(p.shape)} does not fit "
                                 f"samples of shape {list(shape)} (a scalar or one per channel)")
        if self.spike_mask is not None and tuple(self.spike_mask.shape) != tuple(shape):
            raise ValueError(f"{self.name}: spike_mask of shape {list(self.spike_mask.shape)} "
                             f"does not fit samples of shape {list(shape)}")
        return tuple(shape)

    def run(self, x_seq: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x_seq)
        u = torch.zeros_like(x_seq[0])
        for t in range(x_seq.shape[0]):
            out[t], u, _ = self.neuron.step(u, x_seq[t])
        if self.spike_mask is not None:
            out *= self.spike_mask.to(torch.int64)
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        n = self.neuron
        return _present(leak=n.leak, gain=n.gain, threshold=n.threshold,
                        spike_mask=self.spike_mask, membrane_scale=self.membrane_scale)

    def spec(self) -> dict:
        n = self.neuron
        return {"shift": n.shift, "membrane_bits": n.bits, "soft": n.soft}

    @classmethod
    def build(cls, name: str, spec: dict, t: dict[str, torch.Tensor]) -> IntNeuronOp:
        neuron = IntNeuron(t["leak"], t["gain"], int(spec["shift"]), t["threshold"],
                           int(spec["membrane_bits"]), bool(spec["soft"]))
        return cls(name, neuron, t.get("spike_mask"), t["membrane_scale"])
