"""Response- and feature-based ANN→SNN distillation (KDSNN).

Q. Xu, Y. Li, J. Shen, J. K. Liu, H. Tang & G. Pan, "Constructing Deep Spiking Neural Networks
from Artificial Neural Networks with Knowledge Distillation", CVPR 2023 (arXiv 2304.05627). The
SNN student learns from the ANN teacher's output (response) and from its intermediate features:
for each paired layer the student's firing-rate map, through a trainable adapter, should match
the teacher's activation map:

    r_s    = (1/T) Σ_t S_ls[t]                           student firing rates [B, C_s, ...]
    L_feat = Σ_pairs ‖ φ(r_s) − f_t ‖² / numel            φ: 1×1 conv (Linear for vectors)
    L      = (1 − alpha) · CE + alpha · L_kd + beta · L_feat

No code was released; this form is the spec's reading of the paper [R]. Choices of ours: the
adapter is a 1×1 convolution with bias (no BN), the identity when the widths agree, followed by
an adaptive average pooling when the spatial sizes differ; the teacher stays frozen (the
paper's "joint training" may also update the ANN, the abstract does not say). The adapters are
optimizer groups of the method, checkpointed with it, and never part of the model: the artifact
holds the student alone.

``features``: pairs ``[student layer, teacher layer]``; null pairs every spiking layer of the
student's ``features`` trunk with the teacher's layer of the same name (our builders name them
alike across widths and for the ANN twin). Recipe: ``{name: kdsnn, teacher: "stage:ann"}``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from spikecompress.compress.distill.base import Distillation, check_positive
from spikecompress.compress.method import Context
from spikecompress.snn.layers import reset_state
from spikecompress.snn.neuron import NEURONS

SPIKING = tuple(NEURONS.values())


@dataclass
class KDSNN(Distillation):
    """Response KD plus adapted feature KD (see the module docstring).
    Distributed: the loss terms follow the weights; the adapters, initialised from the global RNG
    (which differs between the ranks in a later stage), are broadcast from rank 0 at attach and
    their gradients averaged by the loop (``param_groups``)."""

    NAME: ClassVar[str] = "kdsnn"
    PAPER: ClassVar[str] = "Xu et al., CVPR 2023 (arXiv 2304.05627)"

    beta: float = 1.0
    features: list | None = None
    adapters_: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta = 0.0 if self.beta == 0 else check_positive("beta", self.beta)
        if self.features is not None:
            if not isinstance(self.features, list) or not self.features:
                raise ValueError(f"features must be a non-empty list of [student layer, teacher "
                                 f"layer] pairs or null, got {self.features!r}")
            for i, pair in enumerate(self.features):
                if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                        and all(isinstance(n, str) and n for n in pair)):
                    raise ValueError(f"features.{i} must be [student layer, teacher layer], got "
                                     f"{pair!r}")
            self.features = [list(p) for p in self.features]

    def attach(self, model: nn.Module, ctx: Context) -> None:
        super().attach(model, ctx)
        ctx.comm.broadcast_(*self.adapters_)

    def _prepare(self, model: nn.Module, teacher: nn.Module) -> tuple[str, ...]:
        self.pairs_ = self._pairs(model, teacher)
        shapes_s = _shapes(model, [s for s, _ in self.pairs_])
        shapes_t = _shapes(teacher, [t for _, t in self.pairs_])
        self._adapters = nn.ModuleList(
            _adapter(shapes_s[s], shapes_t[t]) for s, t in self.pairs_)
        self._sizes = [shapes_t[t][1:] for _, t in self.pairs_]  # spatial sizes
        self.adapters_ = list(self._adapters.parameters())
        modules = dict(model.named_modules())
        self._rates: dict[str, torch.Tensor] = {}
        self._hooks = [modules[s].register_forward_hook(self._recorder(s)) for s, _ in self.pairs_]
        return tuple(dict.fromkeys(t for _, t in self.pairs_))

    def _pairs(self, model: nn.Module, teacher: nn.Module) -> list[list[str]]:
        student, taught = dict(model.named_modules()), dict(teacher.named_modules())
        if self.features is None:
            pairs = [[n, n] for n, m in student.items()
                     if n.startswith("features.") and isinstance(m, SPIKING) and n in taught]
            if not pairs:
                raise ValueError("features: no spiking layer of the student's features has a "
                                 "layer of the same name in the teacher; pair them explicitly")
            return pairs
        for i, (s, t) in enumerate(self.features):
            if s not in student:
                raise ValueError(f"features.{i}: the student has no layer {s!r}")
            if t not in taught:
                raise ValueError(f"features.{i}: the teacher has no layer {t!r}")
        return self.features

    def _recorder(self, name: str):
        def hook(module, inputs, output):
            self._rates[name] = output.float().mean(0)  # [T, B, C, ...] -> rates [B, C, ...]
        return hook

    def param_groups(self, model: nn.Module, ctx: Context) -> list[dict]:
        return [{"params": self.adapters_, "lr_scale": 1.0}]

    def loss(self, model: nn.Module, x_seq: torch.Tensor, out_seq: torch.Tensor,
             ctx: Context) -> torch.Tensor:
        total, feats = self._response(x_seq, out_seq, ctx)
        if self.beta == 0:
            return total
        self._adapters.to(out_seq.device)
        for (s, t), adapter, size in zip(self.pairs_, self._adapters, self._sizes, strict=True):
            mapped = adapter(self._rates[s])
            if tuple(mapped.shape[2:]) != tuple(size):  # spatial sizes differ
                mapped = _pool(mapped, size)
            total = total + self.beta * F.mse_loss(mapped, feats[t].mean(0))
        return total

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        for h in getattr(self, "_hooks", []):
            h.remove()
        self._hooks = []
        return super().finalize(model, ctx)


def _shapes(model: nn.Module, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Per-sample output shape [C, ...] of each named layer, from one zero input on a copy."""
    in_shape = getattr(model, "in_shape", None)
    if in_shape is None:
        raise ValueError(f"features: {type(model).__name__} declares no in_shape to find its "
                         f"layers' shapes")
    twin = copy.deepcopy(model).eval()
    modules, shapes = dict(twin.named_modules()), {}
    hooks = [modules[n].register_forward_hook(
        lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[2:]))) for n in names]
    with torch.no_grad():
        twin(torch.zeros(1, 1, *in_shape))
    for h in hooks:
        h.remove()
    reset_state(twin)
    return shapes


def _adapter(student: tuple[int, ...], teacher: tuple[int, ...]) -> nn.Module:
    """φ: student rates [B, C_s, ...] → [B, C_t, ...]; the identity when the widths agree."""
    c_s, c_t, dims = student[0], teacher[0], len(student) - 1
    if dims != len(teacher) - 1 or dims > 2:
        raise ValueError(f"features: cannot map a student layer of shape {list(student)} onto a "
                         f"teacher layer of shape {list(teacher)}")
    layer = nn.Linear(c_s, c_t) if dims == 0 else (nn.Conv1d if dims == 1 else nn.Conv2d)(
        c_s, c_t, 1)
    if c_s == c_t:
        with torch.no_grad():
            layer.weight.copy_(torch.eye(c_s).view(c_s, c_s, *([1] * dims)))
            layer.bias.zero_()
    return layer


def _pool(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Adaptive average pooling of [B, C, ...] to the spatial ``size``."""
    return (F.adaptive_avg_pool1d if len(size) == 1 else F.adaptive_avg_pool2d)(x, size)
