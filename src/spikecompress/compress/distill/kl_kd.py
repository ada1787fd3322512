"""Distillation with the KL divergence of softened outputs (ANN→SNN or SNN→SNN).

Sugahara Takuya, Renyuan Zhang & Yasuhiko Nakashima, "Training Low-Latency Spiking Neural
Network through Knowledge Distillation", IEEE COOL CHIPS 2021 (doi 10.1109/COOLCHIPS52128.2021.
9410323): a large ANN teaches a small ANN (Hinton's KL at temperature tau), the small ANN is
converted to an SNN (threshold balancing, soft reset) and the SNN is fine-tuned at a small T with
cross-entropy plus the KL to the teacher's logits. The whole chain is the recipe
``kl_kd_chain``; this method is the distillation step of stages 2 and 4:

    L = (1 − alpha) · CE(z_s, y) + alpha · tau² · KL(softmax(z_t / tau) ‖ softmax(z_s / tau))

with z the time-averaged read-out (per-step logits, mean over T) of student and teacher. Which
network teaches stage 4 (the large or the small ANN) the abstract does not say: ``teacher``
names it. Paper: VGG-16, CIFAR-100, 74.42 % at 5 time steps.

Recipe: ``{name: kl_kd, teacher: "stage:teacher"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from spikecompress.compress.distill.base import Distillation
from spikecompress.compress.method import Context


@dataclass
class KLDistillation(Distillation):
    """Hinton's softened-output KL to a frozen teacher (see the module docstring).
    Distributed: a loss term against a frozen teacher: nothing of its own to agree."""

    NAME: ClassVar[str] = "kl_kd"
    PAPER: ClassVar[str] = "Takuya, Zhang & Nakashima, COOL CHIPS 2021"

    def loss(self, model: nn.Module, x_seq: torch.Tensor, out_seq: torch.Tensor,
             ctx: Context) -> torch.Tensor:
        return self._response(x_seq, out_seq, ctx)[0]
