"""Spike-based SNN→SNN distillation with the sliding-window loss.

R. K. Kushawaha, S. Kumar, B. Banerjee & R. Velmurugan, "Distilling Spikes: Knowledge
Distillation in Spiking Neural Networks", ICPR 2020 (arXiv 2005.00288). A large SNN teaches a
small one through its spike activation tensors: beside the loss on whole-sequence counts, a
sliding-window loss compares the counts in every window of ``window`` steps (stride ``stride``),
so the student must match *when* the teacher is active, not only how much:

    L_sw = (1/K) Σ_k D(count(o_s[k·st : k·st + w]) / w, count(o_t[k·st : k·st + w]) / w)
    L    = (1 − alpha) · CE + alpha · L_sw

K = floor((T − w) / st) + 1. With w = T this is the full-window loss. D is ``distance``: "kl"
(tau² · KL of the temperature-softmaxed counts, default) or "mse" (of the rates). No code was
released; this form is the spec's reading of the paper [R].

The tensor o is the student's and teacher's read-out per step (our read-out layer is a
non-spiking integrator: its per-step value plays the role of the output spike count), or, with
``layer``, the spikes of that named spiking layer (the same name and shape in both networks; a
smaller student distils its read-out). Teacher and student run the same T (the windows must
line up). Multi-stage distillation (teacher → teaching assistant → student) is a recipe of two
stages, each naming the previous one as teacher (``recipes/spike_kd.yaml``).

Recipe: ``{name: spike_kd, teacher: "stage:teacher", window: 2}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from spikecompress.compress.distill.base import Distillation
from spikecompress.compress.distill.losses import DISTANCES, window_loss
from spikecompress.compress.method import Context


@dataclass
class SpikeDistillation(Distillation):
    """Sliding-window spike-count loss to a frozen SNN teacher (see the module docstring).
    Distributed: a loss term against a frozen teacher: nothing of its own to agree."""

    NAME: ClassVar[str] = "spike_kd"
    PAPER: ClassVar[str] = "Kushawaha et al., ICPR 2020 (arXiv 2005.00288)"

    window: int = 2
    stride: int = 1
    distance: str = "kl"
    layer: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("window", "stride"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {list(DISTANCES)}, got {self.distance!r}")
        if self.layer is not None and (not isinstance(self.layer, str) or not self.layer):
            raise ValueError(f"layer must be a layer name or null, got {self.layer!r}")

    def _prepare(self, model: nn.Module, teacher: nn.Module) -> tuple[str, ...]:
        if self.layer is None:
            return ()
        modules = dict(model.named_modules())
        if self.layer not in modules:
            raise ValueError(f"layer: the student has no layer {self.layer!r}")
        self._hook = modules[self.layer].register_forward_hook(self._record)
        return (self.layer,)

    def _record(self, module, inputs, output) -> None:
        self._student_spikes = output  # [T, B, ...]: its graph reaches the student's weights

    def loss(self, model: nn.Module, x_seq: torch.Tensor, out_seq: torch.Tensor,
             ctx: Context) -> torch.Tensor:
        t_seq, feats = self._teacher_outputs(x_seq, out_seq)
        o_s, o_t = out_seq, t_seq
        if self.layer is not None:
            o_s, o_t = self._student_spikes.flatten(2), feats[self.layer].flatten(2)  # [T, B, F]
            if o_s.shape != o_t.shape:
                raise ValueError(f"layer: {self.layer!r} gives {list(o_s.shape)} in the student "
                                 f"and {list(o_t.shape)} in the teacher")
        if o_t.shape[0] != o_s.shape[0]:
            raise ValueError(f"teacher_T: the teacher ran {o_t.shape[0]} steps, the student "
                             f"{o_s.shape[0]}; the windows need the same T")
        if self.window > o_s.shape[0]:
            raise ValueError(f"window: {self.window} is longer than T = {o_s.shape[0]}")
        l_sw = window_loss(o_s, o_t, self.window, self.stride, self.distance, self.tau)
        return self._mix(l_sw, out_seq, ctx)

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        if getattr(self, "_hook", None) is not None:
            self._hook.remove()
            self._hook = None
        return super().finalize(model, ctx)
