"""Session: runs a list of Methods around any training loop (torchao's prepare → train → convert).

    session = attach(model, [MagnitudePruning(sparsity=0.8), UniformQuantization(weight_bits=4)])
    for x_seq, y in loader:                                 # the user's loop and optimizer
        out = model(x_seq)
        loss = F.cross_entropy(out.mean(0), y) + session.loss(x_seq, out, y)
        opt.zero_grad(); loss.backward(); opt.step()
        session.after_step(progress=step / total_steps)
        reset_state(model)
    model = session.finalize()                              # a plain nn.Module again

Under ``torchrun`` the same loop runs on every rank with the model wrapped in DDP; the Session
calls each method's ``reduce_`` hook before its ``after_step`` and before ``finalize`` so the
statistics a method acts on agree across ranks (``spikecompress.collectives``). ``verify=True`` also
checks after every step and after finalize that they do (``compress.agreement``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch import nn

from spikecompress.compress.agreement import check_agreement
from spikecompress.compress.method import (
    KINDS,
    Context,
    check_hooks,
    hook,
    method_name,
    runtime_state,
)
from spikecompress.compress.parametrize import bake_, is_plain

# at most one method of these kinds at once: two would fight over the same weights
_EXCLUSIVE = ("quant", "time")


class Session:
    """Attach ``methods`` to ``model`` and drive their hooks; see the module docstring."""

    def __init__(
        self, model: nn.Module, methods: Sequence[object], stage: str = "", verify: bool = False
    ) -> None:
        _check(methods)
        model = unwrap(model)
        _check_finite(model)
        self.model, self.methods, self.verify = model, list(methods), verify
        self.ctx = Context(stage=stage)
        self.finalized = False
        # "loss" methods first: they see the model as it enters the stage (e.g. a teacher copy)
        for m in sorted(self.methods, key=lambda m: m.KIND != "loss"):
            if (fn := hook(m, "attach")) is not None:
                fn(model, self.ctx)

    def bind(
        self,
        optimizer,
        lr_at=None,
        total_steps: int | None = None,
        steps_per_epoch: int | None = None,
        task_loss: str = "ce",
    ) -> None:
        """Tell the methods about the training loop: its optimizer, ``lr_at(step)`` (the learning
        rate the optimizer uses at each step; default: the first group's current lr, constant),
        the number of steps of the stage and of one epoch, and the kind of task loss the loop
        adds the methods' terms to (``snn.losses.task_loss``; distillation re-weights it).
        Methods that need them (Grad R, LATS, ADMM) ask for this call by name when missing."""
        if lr_at is None:
            lr = float(optimizer.param_groups[0]["lr"])
            lr_at = lambda step: lr  # noqa: E731
        ctx = self.ctx
        ctx.optimizer, ctx.lr_at, ctx.total_steps = optimizer, lr_at, total_steps
        ctx.steps_per_epoch, ctx.task_loss = steps_per_epoch, task_loss

    def param_groups(self) -> list[dict]:
        """The optimizer groups the methods ask for (e.g. a mask learning rate), each a dict
        with ``params`` and an ``lr_scale`` relative to the loop's learning rate."""
        groups = []
        for m in self.methods:
            if (fn := hook(m, "param_groups")) is not None:
                groups.extend(fn(self.model, self.ctx))
        return groups

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The methods' runtime state (fields ending in ``_``) as (tensors, JSON scalars), keyed
        ``"<index>.<field>"``; lists and dicts of tensors are flattened into the tensor keys."""
        tensors, scalars = {}, {}
        for i, m in enumerate(self.methods):
            for name, value in runtime_state(m).items():
                key = f"{i}.{name}"
                if isinstance(value, torch.Tensor):
                    tensors[key] = value.detach()
                elif _tensor_list(value):
                    tensors.update({f"{key}.{j}": t.detach() for j, t in enumerate(value)})
                    scalars[key] = {"list": len(value)}
                elif _tensor_dict(value):
                    tensors.update({f"{key}.{k}": t.detach() for k, t in value.items()})
                    scalars[key] = {"dict": list(value)}
                elif value is None or isinstance(value, (bool, int, float, str)):
                    scalars[key] = value
        return tensors, scalars

    def load_state_dict(self, tensors: dict[str, torch.Tensor], scalars: dict) -> None:
        """Restore what ``state_dict`` returned (tensors are copied to each field's device). A
        field holding Parameters (alone or in a list) is restored in place, so the optimizer that
        holds them keeps training the same objects."""
        for i, m in enumerate(self.methods):
            for name, value in runtime_state(m).items():
                key = f"{i}.{name}"
                if isinstance(value, torch.Tensor) and key in tensors:
                    setattr(m, name, _restored(value, tensors[key]))
                elif isinstance(scalars.get(key), dict) and "list" in scalars[key]:
                    saved = [tensors[f"{key}.{j}"] for j in range(scalars[key]["list"])]
                    if isinstance(value, list) and len(value) == len(saved):
                        saved = [_restored(v, t) if isinstance(v, torch.Tensor) else t
                                 for v, t in zip(value, saved, strict=True)]
                    setattr(m, name, saved)
                elif isinstance(scalars.get(key), dict) and "dict" in scalars[key]:
                    setattr(m, name, {k: tensors[f"{key}.{k}"] for k in scalars[key]["dict"]})
                elif key in scalars and not isinstance(scalars[key], dict):
                    setattr(m, name, scalars[key])

    def loss(
        self, x_seq: torch.Tensor, out_seq: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sum of the methods' loss terms for this step (a zero tensor when none has one).

        ``y``: the batch's labels [B], handed to the methods as ``ctx.y`` (for losses on labels:
        early classifiers, exit-policy rewards); None when the loop has no labels."""
        self.ctx.y = y
        total = out_seq.new_zeros(())
        for m in self.methods:
            if (fn := hook(m, "loss")) is not None:
                total = total + fn(self.model, x_seq, out_seq, self.ctx)
        return total

    @property
    def has_train_step(self) -> bool:
        """Whether a method trains the model itself (``train_step``): the loop then calls
        ``train_step`` in place of its own forward, backward and optimizer step."""
        return any(hook(m, "train_step") is not None for m in self.methods)

    def train_step(self, x_seq: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        """One training step by the method that defines ``train_step`` (in place of the loop's
        forward / backward / optimizer step): (loss as a float, out_seq [T, B, classes]). The
        loop still calls ``after_step`` and ``reset_state`` afterwards."""
        self.ctx.y = y
        for m in self.methods:
            if (fn := hook(m, "train_step")) is not None:
                return fn(self.model, x_seq, y, self.ctx)
        raise RuntimeError("no attached method defines train_step (see Session.has_train_step)")

    def after_step(self, progress: float, epoch: int | None = None) -> None:
        """Advance: set ``ctx.progress`` (in [0, 1]) and the step count, then run the hooks."""
        if not 0 <= progress <= 1 + 1e-9:
            raise ValueError(f"progress must be in [0, 1], got {progress}")
        self.ctx.progress, self.ctx.step = min(progress, 1.0), self.ctx.step + 1
        if epoch is not None:
            self.ctx.epoch = epoch
        for m in self.methods:
            if (fn := hook(m, "reduce_")) is not None:
                fn(self.model, self.ctx)
            if (fn := hook(m, "after_step")) is not None:
                fn(self.model, self.ctx)
        if self.verify:
            check_agreement(self.model, self, self.ctx.comm, f"after step {self.ctx.step}")

    def reduce_(self) -> None:
        """Run every method's ``reduce_`` hook (their statistics agree across ranks after it)."""
        for m in self.methods:
            if (fn := hook(m, "reduce_")) is not None:
                fn(self.model, self.ctx)

    def finalize(self) -> nn.Module:
        """Finalize every method in the fixed order channels → masks → quant → time → loss, bake
        the remaining parametrizations, and return a plain ``nn.Module`` (no hooks left)."""
        if self.finalized:
            raise RuntimeError("this session is already finalized")
        self.reduce_()
        model = self.model
        for m in sorted(self.methods, key=lambda m: KINDS.index(m.KIND)):
            if (fn := hook(m, "finalize")) is not None:
                model = fn(model, self.ctx)
        model = bake_(model)
        if not is_plain(model):
            raise RuntimeError("finalize left forward hooks on the model: a method forgot them")
        self.model, self.finalized = model, True
        if self.verify:
            check_agreement(model, None, self.ctx.comm, "after finalize")
        return model


def attach(
    model: nn.Module, methods: Sequence[object], stage: str = "", verify: bool = False
) -> Session:
    """Start a compression session on ``model`` (see ``Session``); a DDP-wrapped model is
    unwrapped, so methods select layers by their plain names (no ``module.`` prefix)."""
    return Session(model, methods, stage, verify)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a ``DistributedDataParallel`` wrapper (else ``model``)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def _restored(current: torch.Tensor, saved: torch.Tensor) -> torch.Tensor:
    """``saved`` on ``current``'s device; copied into ``current`` when that is a Parameter of the
    same shape (its identity is what an optimizer holds)."""
    if isinstance(current, nn.Parameter) and current.shape == saved.shape:
        with torch.no_grad():
            current.copy_(saved)
        return current
    return saved.to(current.device)


def _tensor_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, torch.Tensor) for t in value)


def _tensor_dict(value: object) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in value.items())


def _check_finite(model: nn.Module) -> None:
    """Pruning or quantizing NaN / inf weights would bake garbage into the artifact: refuse."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"model: {name} holds NaN or inf; compress a finite model "
                             f"(did training diverge?)")


def _check(methods: Sequence[object]) -> None:
    """Reject invalid combinations with a message naming the methods involved."""
    for m in methods:
        kind = getattr(type(m), "KIND", None)
        if kind not in KINDS:
            raise ValueError(f"{method_name(m)}: KIND must be one of {list(KINDS)}, got {kind!r}")
        check_hooks(m)
    names = Counter(method_name(m) for m in methods)
    twice = [n for n, c in names.items() if c > 1]
    if twice:
        raise ValueError(f"method {twice[0]!r} is attached twice; give it one configuration")
    steppers = [method_name(m) for m in methods if hook(m, "train_step") is not None]
    if len(steppers) > 1:
        raise ValueError(f"{' and '.join(steppers)} both train the model themselves "
                         f"(train_step); attach one of them per stage")
    if steppers and len(methods) > 1:  # its own step would skip the others' losses and groups
        others = [method_name(m) for m in methods if method_name(m) != steppers[0]]
        raise ValueError(f"{steppers[0]} trains the model itself (train_step) and cannot be "
                         f"combined with {', '.join(others)}; attach it alone")
    for kind in _EXCLUSIVE:
        same = [method_name(m) for m in methods if m.KIND == kind]
        if len(same) > 1:
            raise ValueError(f"{' and '.join(same)} both change the {kind} of the model; "
                             f"attach one {kind} method per stage")
