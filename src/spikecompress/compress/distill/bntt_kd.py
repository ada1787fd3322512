"""Distillation into a student with Batch Normalization Through Time.

T. D. Tran, K. T. Le & A. L. T. Nguyen (author list [R]), "Training Low-Latency Deep Spiking
Neural Networks with Knowledge Distillation and Batch Normalization Through Time", CINE 2022: an
ANN teacher trains a low-latency SNN student whose BatchNorms are BNTT layers (Kim & Panda,
Frontiers 2021: one BN per time step, γ only; ``snn.BNTT``, the builders' ``norm: bntt``), with
Hinton's loss

    L = (1 − alpha) · CE + alpha · tau² · KL(softmax(z_t / tau) ‖ softmax(z_s / tau)).

No code was released; the loss is §3.0's and the teacher the recipe's choice (an ANN, as in the
paper, or any model). The student must be built with BNTT (``model: {norm: bntt}``; the runner
fills ``steps`` from the stage's T): a student without a BNTT layer is refused by name, since
the method would then be ``kl_kd``. BNTT alone, without a teacher, is the model option.

Recipe: ``{name: bntt_kd, teacher: "stage:ann"}`` in a stage whose model has ``norm: bntt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from spikecompress.compress.distill.base import Distillation
from spikecompress.compress.method import Context
from spikecompress.snn import BNTT


@dataclass
class BNTTDistillation(Distillation):
    """Hinton KD into a BNTT student (see the module docstring).
    Distributed: a loss term against a frozen teacher: nothing of its own to agree."""

    NAME: ClassVar[str] = "bntt_kd"
    PAPER: ClassVar[str] = "Tran et al., CINE 2022"
    MODEL_OPTIONS: ClassVar[dict] = {"norm": "bntt"}  # what the student must be built with

    def attach(self, model: nn.Module, ctx: Context) -> None:
        if not any(isinstance(m, BNTT) for m in model.modules()):
            raise ValueError(f"model: {type(model).__name__} has no BNTT layer; build the "
                             f"student with norm: bntt (bntt_kd trains a BNTT student)")
        super().attach(model, ctx)

    def loss(self, model: nn.Module, x_seq: torch.Tensor, out_seq: torch.Tensor,
             ctx: Context) -> torch.Tensor:
        return self._response(x_seq, out_seq, ctx)[0]
