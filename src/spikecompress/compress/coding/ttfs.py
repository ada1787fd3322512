"""Time-to-first-spike conversion (Rueckauer & Liu, ISCAS 2018): an ANN twin → a TTFS network.

Every neuron of the converted network spikes at most once per sample (the snn_toolbox ``INI_ttfs``
simulator, the reference: a refractory period as long as the simulation); a spike means "this
neuron is active from now on": it injects a constant current into its targets at every later step,
so a target's membrane is a sum of ramps ``Σ_j w_ij (t − t_j)``, and the target spikes when
V >= V_th. An early spike is a large activation: in the paper's code the activation is the
instantaneous rate ``1 / t_first``. The dynamics, the input and the read-out are ``snn.ttfs``; the
structure, the normalisation and what is refused are ``models.ttfs``.

The stage calibrates only: ``train_step`` replaces the loop's step with one eval-mode forward of the
ANN twin on the first step of the batch (the static input, or its onset: ``data.encoding: direct``
or ``ttfs``; another encoding is refused with one line naming ``data.encoding``), which leaves
the weights and BN's running statistics as they are, while hooks keep a uniform random subsample
of at most ``samples`` positive activations of every ReLU over the stage's training batches (its
evaluations on the test set never count). Finalize sets each ReLU's activation scale λ to the
``percentile`` of its positive activations (1.0 for a ReLU that was never positive) and returns
``models.ttfs.to_ttfs`` of the ANN twin: BN folded, weights ``W · λ_{k−1} / λ_k``, biases
``b / λ_k`` as constant currents, thresholds 1 (concurrent) or W + 1/2 (layered).

``schedule``: "concurrent" (the paper's: all layers at once over the stage's T steps; the first
layer is exact, ``1 / t_first = relu(z) / λ`` within one step, deeper layers approximate: T is
a knob, a short T cuts off the late, over-weighted inputs) or "layered" (one window of
``window`` steps per neuron layer and a linear code, exact up to rounding to a step: the phases of
Stanojevic et al., Nat. Commun. 2024, as we reconstruct them; ``window`` null: the stage's T
// (neuron layers + 1), the last window being the read-out's). Read-out: the membrane of the last
layer at the end (``snn.ttfs.TTFSReadout``), whose mean over T is the logits.

Use it in a stage at the T the TTFS network will run at, one epoch (any learning rate: nothing is
trained), on the ANN twin (``model: {spiking: false}``, max pooling or none: average pooling is
refused); recipes/ttfs.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from spikecompress.collectives import Collectives
from spikecompress.compress.coding.calibration import (
    ann_twin_spec,
    check_knobs,
    generator,
    percentiles,
    positive,
)
from spikecompress.compress.method import Context
from spikecompress.models.ttfs import plan, to_ttfs
from spikecompress.snn.losses import task_loss
from spikecompress.snn.ttfs import ttfs_input

SCHEDULES = ("concurrent", "layered")


@dataclass
class TTFSConversion:
    """Convert the ANN twin to a TTFS network at the end of the stage: ``schedule``
    "concurrent" (Rueckauer & Liu) or "layered" (``window`` steps per layer; null: the stage's T
    // (layers + 1)); activation scales at the ``percentile`` of each ReLU's positive activations,
    from at most ``samples`` kept per ReLU (``seed``: their subsampling). Distributed: every rank
    draws its keys from its own stream (batch · world size + rank) and ``train_step`` keeps the
    smallest keys of every rank's batch (gathered, in rank order), the same sample on every
    rank."""

    NAME: ClassVar[str] = "ttfs"
    PAPER: ClassVar[str] = ("Rueckauer & Liu, ISCAS 2018 (snn_toolbox INI_ttfs); layered: "
                            "Stanojevic et al., Nat. Commun. 2024")
    KIND: ClassVar[str] = "channels"
    REFUSES: ClassVar[tuple[str, ...]] = ("resnet", "sew_resnet")  # residual additions

    schedule: str = "concurrent"
    window: int | None = None
    percentile: float = 99.9
    samples: int = 100_000
    seed: int = 0
    # ReLU name → kept positive activations and their random keys (the smallest keys are kept: a
    # uniform subsample of everything seen); batches_: calibration batches seen; steps_: their T
    values_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    keys_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    batches_: int = field(default=0, init=False, repr=False, compare=False)
    steps_: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.window is not None:
            if isinstance(self.window, bool) or not isinstance(self.window, int) or (
                    self.window < 1):
                raise ValueError(f"window must be an integer >= 1 or null, got {self.window!r}")
            if self.schedule != "layered":
                raise ValueError("window is the layered schedule's; with schedule concurrent "
                                 "leave it null")
        check_knobs(self.percentile, self.samples, self.seed)

    def attach(self, model: nn.Module, ctx: Context) -> None:
        spec = ann_twin_spec(model, self.NAME)
        if spec.get("ttfs") is not None:
            raise ValueError("ttfs: the model is a TTFS network already")
        plan(model)  # one line naming the first module that cannot be converted

    def train_step(
        self, model: nn.Module, x_seq: torch.Tensor, y: torch.Tensor, ctx: Context
    ) -> tuple[float, torch.Tensor]:
        """Calibrate on one batch (nothing is trained): the ANN twin in eval mode on the batch's
        first step; returns (its loss, its logits [1, B, classes])."""
        try:
            x0 = ttfs_input(x_seq)[:1]
        except ValueError as e:
            raise ValueError(f"ttfs calibrates on a static input or its onset: {e}") from None
        self.steps_ = int(x_seq.shape[0])
        relus = plan(model).neurons
        modules = dict(model.named_modules())
        batch: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        handles = [modules[n].register_forward_hook(self._record(batch, n, i, ctx.comm))
                   for i, n in enumerate(relus)]
        was_training = model.training
        try:
            model.eval()  # BN on its running statistics, which stay as they are
            with torch.no_grad():
                out = model(x0)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        self._keep(relus, ctx.comm.gather_object(batch))
        self.batches_ += 1
        return task_loss(out, y, ctx.task_loss).item(), out

    def _record(self, batch: dict, name: str, index: int, comm: Collectives):
        """A forward hook putting ReLU ``name``'s positive activations and their random keys in
        ``batch`` (in a distributed run only its ``samples`` smallest keys: no other can be
        kept, and the batch then travels to every rank)."""

        def hook(module, inputs, output) -> None:
            # a generator per batch, rank and ReLU, seeded by what came before: a resumed stage
            # draws the same keys
            stream = self.batches_ * comm.world_size + comm.rank
            pos = positive(output)
            keys = torch.rand(pos.numel(), generator=generator(self.seed, index, stream))
            if comm.distributed and pos.numel() > self.samples:
                pos, keys = _smallest(pos, keys, self.samples)
            batch[name] = (pos, keys)

        return hook

    def _keep(self, relus: list[str], batches: list[dict]) -> None:
        """Keep, per ReLU, the ``samples`` activations of smallest key among those kept so far
        and the new ``batches`` (one per rank, in rank order): a uniform subsample of everything
        seen."""
        for name in relus:
            new = [b[name] for b in batches if name in b]
            if not new:
                continue
            kept = [(self.values_[name], self.keys_[name])] if name in self.values_ else []
            pos = torch.cat([p for p, _ in kept + new])
            keys = torch.cat([k for _, k in kept + new])
            if pos.numel() > self.samples:
                pos, keys = _smallest(pos, keys, self.samples)
            self.values_[name], self.keys_[name] = pos, keys

    def thresholds(self) -> dict[str, float]:
        """ReLU name → its activation scale λ: the ``percentile`` of its positive activations
        seen so far (1.0 if none was positive)."""
        return percentiles(self.values_, self.percentile)

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        relus = plan(model).neurons
        if self.batches_ == 0:
            raise ValueError("ttfs saw no training batch: give its stage at least one epoch "
                             "(it calibrates only; the learning rate does not matter)")
        window = 0
        if self.schedule == "layered":
            window = self.window or self.steps_ // (len(relus) + 1)
            need = (len(relus) + 1) * max(window, 1)
            if self.steps_ < need:
                raise ValueError(f"ttfs: schedule layered needs T >= {need} (a window of "
                                 f"{max(window, 1)} steps per neuron layer and one for the "
                                 f"read-out), the stage ran at T={self.steps_}; raise the "
                                 f"stage's T")
        seen = self.thresholds()
        return to_ttfs(model, {n: seen.get(n, 1.0) for n in relus}, window)


def _smallest(pos: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` entries of ``pos`` with the smallest ``keys``, and those keys."""
    keep = torch.topk(keys, k, largest=False).indices
    return pos[keep], keys[keep]
