"""SSNN — Shrinking SNN: stages at shrinking numbers of time steps, temporal transformers between
them, early classifiers used only in training (Ding, Zuo, Jing, He, Xiao — AAAI 2024, arXiv
2401.01912; spec pruning.md §4.2 and §12.6).

From the paper (abstract and figure caption; no code was released): the SNN is split into n stages
with decreasing T; a temporal transformer converts each stage's output to the next stage's T; an
early classifier after every stage but the last adds its loss to the final loss during training
and is removed for inference. CIFAR10-DVS 73.63 % at 5 average time steps; DVS-Gesture 90.74 %.

Our choices (the paper's details are unknown [R]):

* the stages and the transformer: ``spikecompress.models.time_stages`` (group mean, learnable
  softmax weights per group, or group max; its docstring). After a "mean" / "learnable" TT the
  next synaptic layer sees group means of spikes, which the counter counts as MACs, not SOPs; a
  "max" TT keeps spikes. Measured (digits, conv_net 16-32-64, 4 → 2 → 1 steps, 4 epochs from a
  dense T = 4 model): L0 energy 2.4× the dense model's with "mean", 0.65× with "max".
* default split (``split=[]``): the feature blocks (the children of ``model.features`` that hold a
  conv / linear layer; a child Sequential of such blocks, a ResNet stage, is expanded into its
  residual blocks) are cut into ``len(steps) + 1`` consecutive groups as even as possible, the
  first groups one block longer; the classifier joins the last stage. With exactly
  ``len(steps)`` blocks the cut follows every block and the classifier is the last stage alone
  (so the one-block MLP gets two stages); fewer blocks is a one-line ValueError.
* early classifier of stage k: global average pool over the spatial dims of each step, then a
  Linear to the classes: per-step logits [T_k, B, K] (the paper's design is unknown [R]); its
  parameters are initialised from a generator seeded with ``seed`` (U(±1/√C), torch's Linear
  default), so attach neither depends on nor consumes the global RNG. The heads live in
  ``model.ssnn_heads`` (trained by an optimizer built after attach, saved in checkpoints).
* early loss: ``early_weight`` · L(head_k(stage_k output), y) summed over the early heads, L = CE of
  the time-mean logits (``"ce"``) or TET (``"tet"``, mean over steps of the per-step CE), the
  trainer's ``task_loss``; the paper's weights are unknown [R], default 1.0 for every head. The
  labels come from ``ctx.y`` (``Session.loss(x_seq, out_seq, y)``); without them ``loss`` raises.
  The stage outputs are kept by the TTs during grad-enabled forwards after attach and consumed
  (cleared) by ``loss``.
* finalize removes the heads (the inference output does not depend on them) and keeps the time
  stages in the plain model: ``model.spec["time_stages"]`` reinstalls them on ``from_spec``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from spikecompress.compress.method import Context, model_device, zero_loss
from spikecompress.models.time_stages import (
    SYNAPTIC,
    check_config,
    install_time_stages_,
)
from spikecompress.snn.layers import reset_state
from spikecompress.snn.losses import task_loss

EARLY_LOSSES = ("ce", "tet")
HEADS = "ssnn_heads"  # the attribute of the model that holds the early classifiers


class EarlyHead(nn.Module):
    """An early classifier: mean over the spatial dims of each step, then a Linear to the classes
    (x_seq [T, B, C, ...] → per-step logits [T, B, K])."""

    def __init__(self, channels: int, classes: int, generator: torch.Generator,
                 device: torch.device) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, classes, device="meta").to_empty(device=device)
        bound = 1 / math.sqrt(channels)
        with torch.no_grad():
            for p in (self.fc.weight, self.fc.bias):
                p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if x_seq.dim() > 3:
            x_seq = x_seq.flatten(3).mean(3)  # [T, B, C, *spatial] -> [T, B, C]
        return self.fc(x_seq)


def _has_synaptic(module: nn.Module) -> bool:
    return any(isinstance(m, SYNAPTIC) for m in module.modules())


def feature_blocks(model: nn.Module) -> list[str]:
    """Qualified names of the feature blocks (see the module docstring), in forward order."""
    blocks = []
    for name, child in model.features.named_children():
        if not _has_synaptic(child):
            continue
        kids = list(child.named_children())
        if (isinstance(child, nn.Sequential) and kids
                and all(_has_synaptic(k) and not isinstance(k, SYNAPTIC) for _, k in kids)):
            blocks += [f"features.{name}.{k}" for k, _ in kids]
        else:
            blocks.append(f"features.{name}")
    return blocks


def auto_split(model: nn.Module, stages: int) -> list[str]:
    """The ``stages - 1`` cut names of the default split (see the module docstring)."""
    if not isinstance(getattr(model, "features", None), nn.Module):
        raise ValueError("ssnn: the default split needs a model with .features; give split")
    blocks = feature_blocks(model)
    n = len(blocks)
    if n < stages - 1:
        raise ValueError(f"ssnn: {stages} stages need at least {stages - 1} feature blocks, the "
                         f"model has {n}; give fewer steps or an explicit split")
    if n == stages - 1:
        return blocks
    q, r = divmod(n, stages)
    ends = [sum(q + (g < r) for g in range(k + 1)) for k in range(stages - 1)]  # group ends
    return [blocks[e - 1] for e in ends]


@torch.no_grad()
def _probe(model: nn.Module, T: int) -> tuple[list[torch.Tensor], int]:
    """Run one all-zero sample (eval mode, every module's mode restored) and return the stage
    outputs at the cuts and the number of classes."""
    modes = [(m, m.training) for m in model.modules()]
    tts = list(model.time_stages.tts)
    seen: list[torch.Tensor] = []
    handles = [tt.register_forward_pre_hook(lambda _, i: seen.append(i[0])) for tt in tts]
    try:
        model.eval()
        x = torch.zeros(T, 1, *model.in_shape, device=model_device(model))  # [T, 1, ...]
        classes = model(x).shape[-1]
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
        reset_state(model)
    return seen, classes


@dataclass
class SSNN:
    """Shrinking SNN: stage 1 at the input's T, stage k + 2 at ``steps[k]``; temporal
    transformers (``transformer``: "mean", "learnable" or "max") at the cuts after ``split``
    ([] = automatic); early classifiers after every stage but the last, trained with
    ``early_weight`` · ``early_loss`` ("ce" or "tet"); ``T`` the stage-1 T (required by
    "learnable"); ``seed`` for the heads' initialisation.
    Distributed: the early heads (seeded) and a learnable transformer are model parameters that get
    a gradient at every step, which DDP averages: they agree by themselves."""

    NAME: ClassVar[str] = "ssnn"
    PAPER: ClassVar[str] = "Ding, Zuo, Jing, He, Xiao, AAAI 2024 (arXiv 2401.01912)"
    KIND: ClassVar[str] = "time"

    steps: list[int] = field(default_factory=lambda: [1])
    split: list[str] = field(default_factory=list)
    transformer: str = "mean"
    early_weight: float = 1.0
    early_loss: str = "ce"
    T: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.split, list) or (self.split and len(self.split) != len(self.steps)):
            raise ValueError(f"ssnn: split must be [] or one module name per step, got "
                             f"{self.split!r}")
        try:  # the stage config, with placeholder names when the split is automatic
            check_config({"split": self.split or ["?"] * len(self.steps), "steps": self.steps,
                          "transformer": self.transformer, "T": self.T})
        except ValueError as e:
            raise ValueError(f"ssnn: {e}".replace("time_stages.", "")) from None
        w = self.early_weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w < math.inf:
            raise ValueError(f"ssnn: early_weight must be a number >= 0, got {w!r}")
        self.early_weight = float(w)
        if self.early_loss not in EARLY_LOSSES:
            raise ValueError(f"ssnn: early_loss must be one of {list(EARLY_LOSSES)}, got "
                             f"{self.early_loss!r}")
        if type(self.seed) is not int:
            raise ValueError(f"ssnn: seed must be an int, got {self.seed!r}")

    def attach(self, model: nn.Module, ctx: Context) -> None:
        split = list(self.split) or auto_split(model, len(self.steps) + 1)
        config = {"split": split, "steps": list(self.steps), "transformer": self.transformer,
                  "T": self.T}
        stages = install_time_stages_(model, config)
        outs, classes = _probe(model, self.steps[0] if self.T is None else self.T)
        g = torch.Generator().manual_seed(self.seed)
        dev = model_device(model)
        heads = [EarlyHead(o.shape[2], classes, g, dev) for o in outs]
        setattr(model, HEADS, nn.ModuleList(heads).train(model.training))
        stages.set_capture(True)

    def loss(self, model: nn.Module, x_seq: torch.Tensor, out_seq: torch.Tensor,
             ctx: Context) -> torch.Tensor:
        outs = model.time_stages.take_outputs()
        if any(o is None for o in outs):  # no grad-enabled forward since the last call
            return zero_loss(out_seq)
        if ctx.y is None:
            raise ValueError("ssnn: the early classifiers need the batch labels; call "
                             "session.loss(x_seq, out_seq, y)")
        total = zero_loss(out_seq)
        for head, o in zip(getattr(model, HEADS), outs, strict=True):
            total = total + self.early_weight * task_loss(head(o), ctx.y, self.early_loss)
        return total

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        model.time_stages.set_capture(False)
        if hasattr(model, HEADS):
            delattr(model, HEADS)
        return model
