"""Session: runs a list of Methods around any training loop (torchao's prepare → train → convert).

    session = attach(model, [MagnitudePruning(sparsity=0.8), UniformQuantization(weight_bits=4)])
    for x_seq, y in loader:                                 # the user's loop and optimizer
        out = model(x_seq)
        loss = F.cross_entropy(out.mean(0), y) + session.loss(x_seq, out)
        opt.zero_grad(); loss.backward(); opt.step()
        session.after_step(progress=step / total_steps)
        reset_state(model)
    model = session.finalize()                              # a plain nn.Module again
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch import nn

from spikecompress.compress.method import KINDS, Context, hook, method_name
from spikecompress.compress.parametrize import bake_, is_plain

# at most one method of these kinds at once: two would fight over the same weights
_EXCLUSIVE = ("quant", "time")


class Session:
    """Attach ``methods`` to ``model`` and drive their hooks; see the module docstring."""

    def __init__(self, model: nn.Module, methods: Sequence[object], stage: str = "") -> None:
        _check(methods)
        self.model, self.methods = model, list(methods)
        self.ctx = Context(stage=stage)
        self.finalized = False
        for m in self.methods:
            if (fn := hook(m, "attach")) is not None:
                fn(model, self.ctx)

    def loss(self, x_seq: torch.Tensor, out_seq: torch.Tensor) -> torch.Tensor:
        """Sum of the methods' loss terms for this step (a zero tensor when none has one)."""
        total = out_seq.new_zeros(())
        for m in self.methods:
            if (fn := hook(m, "loss")) is not None:
                total = total + fn(self.model, x_seq, out_seq, self.ctx)
        return total

    def after_step(self, progress: float, epoch: int | None = None) -> None:
        """Advance: set ``ctx.progress`` (in [0, 1]) and the step count, then run the hooks."""
        if not 0 <= progress <= 1 + 1e-9:
            raise ValueError(f"progress must be in [0, 1], got {progress}")
        self.ctx.progress, self.ctx.step = min(progress, 1.0), self.ctx.step + 1
        if epoch is not None:
            self.ctx.epoch = epoch
        for m in self.methods:
            if (fn := hook(m, "after_step")) is not None:
                fn(self.model, self.ctx)

    def finalize(self) -> nn.Module:
        """Finalize every method in the fixed order channels → masks → quant → time → loss, bake
        the remaining parametrizations, and return a plain ``nn.Module`` (no hooks left)."""
        if self.finalized:
            raise RuntimeError("this session is already finalized")
        model = self.model
        for m in sorted(self.methods, key=lambda m: KINDS.index(m.KIND)):
            if (fn := hook(m, "finalize")) is not None:
                model = fn(model, self.ctx)
        model = bake_(model)
        if not is_plain(model):
            raise RuntimeError("finalize left forward hooks on the model: a method forgot them")
        self.model, self.finalized = model, True
        return model


def attach(model: nn.Module, methods: Sequence[object], stage: str = "") -> Session:
    """Start a compression session on ``model`` (see ``Session``)."""
    return Session(model, methods, stage)


def _check(methods: Sequence[object]) -> None:
    """Reject invalid combinations with a message naming the methods involved."""
    for m in methods:
        kind = getattr(type(m), "KIND", None)
        if kind not in KINDS:
            raise ValueError(f"{method_name(m)}: KIND must be one of {list(KINDS)}, got {kind!r}")
    names = Counter(method_name(m) for m in methods)
    twice = [n for n, c in names.items() if c > 1]
    if twice:
        raise ValueError(f"method {twice[0]!r} is attached twice; give it one configuration")
    for kind in _EXCLUSIVE:
        same = [method_name(m) for m in methods if m.KIND == kind]
        if len(same) > 1:
            raise ValueError(f"{' and '.join(same)} both change the {kind} of the model; "
                             f"attach one {kind} method per stage")
