"""Temporal-Switch Coding conversion (Han & Roy, ECCV 2020): ANN twin → TSC network.

The paper (no code released) presents every input value as two spikes, ON then OFF, whose
interval is proportional to it, and encodes ReLU activations by the spike times of a "TSC neuron":
at most two weight reads and two additions per synapse for the whole inference, whatever the
window. The input side here follows the abstract; the hidden neuron's output rule is a
reconstruction (spec quant-kd §4.4, [D]; the paper's Sec. 3 was not readable): after integrating
its window (V = Tw · (W x + b)), the neuron emits ON if V > 0, drains V by θ per step and emits OFF
when V <= 0, an interval ceil(V / θ) cut at the window Tw. The model: ``snn.tsc``; the
structure and the conversion: ``models.tsc``.

How it runs. Like ``ann_conversion``: a stage of one epoch at a negligible learning rate on the
ANN twin (``model: {spiking: false}``, with ``pool: max``: average pooling is refused, max pooling
is exact under TSC) collects each ReLU's positive activations from the training-mode forwards (the
stage's evaluations on the test set do not count; eval-mode forwards count only when no
training-mode forward came); finalize folds BN (eval statistics), sets each neuron's threshold θ to
the ``percentile`` of its ReLU's positive activations (the activation a full window stands for),
multiplies the weights reading a neuron by its θ and returns the TSC network. The window is the
data's: Tw = T − 1, so the stage (and every later evaluation) runs at T = Tw + 1 with a static
input in [0, 1] (``data.encoding: direct``; the network encodes it) or TSC events
(``data.encoding: tsc``); both give the same events and outputs. The converted network has no
surrogate gradient: it is for inference.

Refused at attach, one line naming the module (``models.tsc.plan``): a spiking model, average
pooling, residual blocks, BN that does not fold (BNTT, not right after a layer), anything that is
not a chain of conv / linear → BN → ReLU → max pool / flatten ending in a read-out layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from spikecompress.compress.coding.calibration import (
    ann_twin_spec,
    check_knobs,
    collector,
    merge_pending_,
    percentiles,
)
from spikecompress.compress.method import Context
from spikecompress.models.tsc import plan, to_tsc


@dataclass
class TSCConversion:
    """Convert the ANN twin to a TSC network with each neuron's threshold at the ``percentile``
    of its ReLU's positive activations; ``samples``: activations kept per ReLU; ``seed``: the
    subsampling. Distributed: each rank's batches wait until ``reduce_``, which keeps every
    rank's in one order on every rank (``calibration.merge_pending_``)."""

    NAME: ClassVar[str] = "tsc"
    PAPER: ClassVar[str] = "Han & Roy, ECCV 2020 (Temporal-Switch Coding)"
    KIND: ClassVar[str] = "time"  # converts last, after the stage's other methods are baked
    REFUSES: ClassVar[tuple[str, ...]] = ("resnet", "sew_resnet")

    percentile: float = 99.9
    samples: int = 100_000
    seed: int = 0
    # ReLU name → kept positive activations of training-mode forwards; evals_: of eval-mode ones;
    # batches_: "<name>" / "eval:<name>" → batches kept so far (seeds the next subsample)
    values_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    evals_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    batches_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    hooks_: list = field(default_factory=list, init=False, repr=False, compare=False)
    _pending: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_knobs(self.percentile, self.samples, self.seed)

    def attach(self, model: nn.Module, ctx: Context) -> None:
        ann_twin_spec(model, self.NAME)
        names = plan(model).neurons
        relus = [(n, model.get_submodule(n)) for n in names]
        self.hooks_ = [m.register_forward_hook(collector(self, n, i, ctx))
                       for i, (n, m) in enumerate(relus)]

    def reduce_(self, model: nn.Module, ctx: Context) -> None:
        """Keep every rank's batches since the last step, in one order on every rank."""
        merge_pending_(self, ctx.comm)

    def activations(self) -> dict[str, torch.Tensor]:
        """ReLU name → the positive activations kept (training-mode forwards when there were
        any, else eval-mode ones)."""
        return {**self.evals_, **self.values_}

    def thresholds(self) -> dict[str, float]:
        """ReLU name → its neuron's θ: the ``percentile`` of its positive activations (1.0 when
        none was positive)."""
        return percentiles(self.activations(), self.percentile)

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        for h in self.hooks_:
            h.remove()
        self.hooks_ = []
        missing = [n for n in plan(model).neurons if n not in self.activations()]
        if missing:
            raise ValueError(f"tsc saw no activations of {missing[:3]}: give its stage at least "
                             "one epoch (a negligible lr keeps the ANN as it is)")
        return to_tsc(model, self.thresholds())
