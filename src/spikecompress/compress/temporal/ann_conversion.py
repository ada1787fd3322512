"""ANN → SNN conversion at percentile thresholds: the hybrid initialisation of temporal pruning.

Chowdhury et al. initialise their SNNs from a trained ANN (specs/pruning.md §12.2): every ReLU
becomes an integrate-and-fire neuron with soft reset whose threshold is a high percentile of that
layer's activations (IIR-SNN: the 90th on one batch for T = 5; the IJCNN 2021 spatio-temporal
paper: the 99.9th for T = 100), the weights are copied, and the SNN is then trained with
surrogate gradients (here: the ``temporal_pruning`` stages). The idea is Rueckauer et al.'s
(2017) robust normalisation: a neuron whose threshold is the activation that ReLU rarely exceeds
fires at a rate ≈ ReLU(x) / V_th.

Our choices (the code's exact statistic was not readable): the percentile is taken over the
*positive* outputs of each ReLU (the zeros of silent units would drag it down), from a uniform
random subsample of at most ``samples`` values per layer collected over the stage's batches; BN
is kept as it is (the SNN has the same BN layers as its ANN twin) instead of being folded into
the weights. Use it in a stage of 1 epoch at a negligible learning rate on the ANN twin
(``model: {spiking: false}``), like the ``pca_width`` analysis stage; finalize returns the
spiking model (``spiking: true``, ``neuron``) with the ANN's weights and those thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from spikecompress.compress.method import Context
from spikecompress.models import from_spec

NEURON_CHOICES = ("if", "lif")


@dataclass
class ANNConversion:
    """Convert the ANN twin to an SNN with thresholds at the ``percentile`` of each layer's
    positive activations. ``neuron``: "if" (the papers) or "lif" (τ ``tau``), soft reset
    (``soft_reset``, the papers) or hard reset to 0; ``samples``: activations kept per layer;
    ``seed``: the subsampling."""

    NAME: ClassVar[str] = "ann_conversion"
    PAPER: ClassVar[str] = "Rueckauer et al. 2017; hybrid init of Chowdhury et al. (IJCNN 2021)"
    KIND: ClassVar[str] = "channels"

    percentile: float = 99.9
    neuron: str = "if"
    tau: float = 2.0
    soft_reset: bool = True
    samples: int = 100_000
    seed: int = 0
    values_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    hooks_: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.neuron not in NEURON_CHOICES:
            raise ValueError(f"neuron must be one of {list(NEURON_CHOICES)}, got {self.neuron!r}")
        if not self.tau > 1:
            raise ValueError(f"tau must be > 1, got {self.tau}")
        if not isinstance(self.soft_reset, bool):
            raise ValueError(f"soft_reset must be true or false, got {self.soft_reset!r}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")

    def attach(self, model: nn.Module, ctx: Context) -> None:
        spec = getattr(model, "spec", None)
        if not isinstance(spec, dict) or spec.get("spiking", True):
            raise ValueError("ann_conversion needs the ANN twin: a model built with spiking: false")
        relus = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
        if not relus:
            raise ValueError("ann_conversion: the model has no ReLU to convert")
        gen = torch.Generator().manual_seed(self.seed)
        self.hooks_ = [m.register_forward_hook(self._collector(n, gen)) for n, m in relus]

    def _collector(self, name: str, gen: torch.Generator):
        def hook(module, inputs, output) -> None:
            pos = output.detach().flatten()
            pos = pos[pos > 0].float().cpu()  # [N] positive activations of this batch
            if pos.numel() > self.samples:
                pos = pos[torch.randperm(pos.numel(), generator=gen)[: self.samples]]
            old = self.values_.get(name)
            kept = pos if old is None else torch.cat([old, pos])
            if kept.numel() > self.samples:  # keep a uniform subsample of everything seen
                kept = kept[torch.randperm(kept.numel(), generator=gen)[: self.samples]]
            self.values_[name] = kept

        return hook

    def thresholds(self) -> dict[str, float]:
        """ReLU name → the ``percentile`` of its positive activations seen so far."""
        return {
            name: float(torch.quantile(v.double(), self.percentile / 100)) if v.numel() else 1.0
            for name, v in self.values_.items()
        }

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:

        for h in self.hooks_:
            h.remove()
        missing = [n for n, m in model.named_modules()
                   if isinstance(m, nn.ReLU) and n not in self.values_]
        if missing:
            raise ValueError(f"ann_conversion saw no activations of {missing[:3]}: give its stage "
                             "at least one epoch (a negligible lr keeps the ANN as it is)")
        params = {"v_reset": None if self.soft_reset else 0.0}
        if self.neuron == "lif":
            params.update(tau=self.tau, decay_input=False)
        snn = from_spec({**model.spec, "spiking": True, "neuron": self.neuron,
                         "neuron_params": params})
        result = snn.load_state_dict(model.state_dict(), strict=False)
        if result.unexpected_keys:
            raise ValueError(f"ann_conversion: ANN tensors {result.unexpected_keys[:3]} have no "
                             "place in the SNN")
        modules = dict(snn.named_modules())
        with torch.no_grad():
            for name, v_th in self.thresholds().items():
                modules[name].v_threshold.fill_(v_th)
        return snn.to(next(model.parameters()).device)
