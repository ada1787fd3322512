"""What every distillation method shares: the teacher fields, their checks, the loss mixing.

    L = (1 − alpha) · task + alpha · L_kd        (+ a method's own terms)

The loop adds the methods' terms to its task loss (``snn.losses.task_loss`` of kind
``ctx.task_loss``, cross-entropy on the time-averaged read-out unless told), so a distillation
method returns ``alpha · (L_kd − task)``: with alpha = 0 the total is exactly the plain task loss.
Library defaults (no paper fixes them): tau = 4, alpha = 0.9. The student's read-out is its
per-step output layer (a non-spiking integrator: per-step logits), averaged over time.

A distillation method is ``KIND = "loss"``: it attaches before every other method of the stage
(so ``teacher: null`` copies the model as it enters the stage), composes with any pruning,
quantization or time-step method, and changes nothing at finalize.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from spikecompress.compress.distill.losses import soft_kl
from spikecompress.compress.distill.teacher import Teacher, check_source, load_teacher
from spikecompress.compress.method import Context
from spikecompress.snn.losses import task_loss


def check_unit(name: str, value: object) -> float:
    """A finite number in [0, 1] (one line naming the field)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_positive(name: str, value: object) -> float:
    """A finite number > 0 (one line naming the field)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


@dataclass
class Distillation:
    """The teacher and the mixing weight of a distillation method (subclasses add the loss).

    ``teacher``: None (a frozen copy of the model as it enters the stage), an artifact / run /
    stage folder, ``"stage:NAME"`` (an earlier stage of the recipe) or a model (Python).
    ``alpha``: weight of the distillation term against the task loss. ``tau``: softmax
    temperature. ``teacher_T``: the teacher's time steps (None: the student's; 1 for a
    non-spiking teacher on a static input). ``cache``: reuse the teacher's outputs for an input
    batch seen before (keyed by its content)."""

    KIND: ClassVar[str] = "loss"

    teacher: str | None = None
    alpha: float = 0.9
    tau: float = 4.0
    teacher_T: int | None = None
    cache: bool = True
    teacher_: Teacher | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_source(self.teacher)
        self.alpha = check_unit("alpha", self.alpha)
        self.tau = check_positive("tau", self.tau)
        if self.teacher_T is not None and (isinstance(self.teacher_T, bool)
                                           or not isinstance(self.teacher_T, int)
                                           or self.teacher_T < 1):
            raise ValueError(f"teacher_T must be an integer >= 1 or null, got {self.teacher_T!r}")
        if not isinstance(self.cache, bool):
            raise ValueError(f"cache must be true or false, got {self.cache!r}")

    def attach(self, model: nn.Module, ctx: Context) -> None:
        teacher = load_teacher(self.teacher, model)
        self.teacher_ = Teacher(teacher, self.teacher_T, self.cache,
                                self._prepare(model, teacher))

    def _prepare(self, model: nn.Module, teacher: nn.Module) -> tuple[str, ...]:
        """Set up what the method needs from student and teacher (hooks, adapters); returns the
        teacher's layers whose outputs it records (feature distillation)."""
        return ()

    def _mix(self, l_kd: torch.Tensor, out_seq: torch.Tensor, ctx: Context) -> torch.Tensor:
        """alpha · (L_kd − task): the loop's task loss becomes (1 − alpha) · task + alpha · L_kd."""
        if ctx.y is None:
            raise ValueError(f"{type(self).NAME}: distillation re-weights the task loss and needs "
                             f"the labels: call session.loss(x_seq, out_seq, y)")
        if self.alpha == 0:
            return out_seq.new_zeros(())
        return self.alpha * (l_kd - task_loss(out_seq, ctx.y, ctx.task_loss))

    def _teacher_outputs(self, x_seq: torch.Tensor, out_seq: torch.Tensor):
        """(teacher per-step logits [T_t, B, K], its recorded layers) for this batch."""
        if self.teacher_ is None:
            raise RuntimeError(f"{type(self).NAME}: attach the method before computing its loss")
        t_seq, feats = self.teacher_.outputs(x_seq)
        if t_seq.shape[1:] != out_seq.shape[1:]:
            raise ValueError(f"teacher: its outputs {list(t_seq.shape[1:])} do not match the "
                             f"student's {list(out_seq.shape[1:])} (batch, classes)")
        return t_seq, feats

    def _response(self, x_seq: torch.Tensor, out_seq: torch.Tensor, ctx: Context):
        """Hinton's response term, mixed: alpha · (soft_kl(z_s, z_t, tau) − task), z the
        time-averaged read-outs; also returns the teacher's recorded layers."""
        t_seq, feats = self._teacher_outputs(x_seq, out_seq)
        kd = soft_kl(out_seq.float().mean(0), t_seq.mean(0), self.tau)
        return self._mix(kd, out_seq, ctx), feats

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        if self.teacher_ is not None:
            self.teacher_.clear()
        return model
