"""The Method protocol: one compression technique = one dataclass of hyper-parameters + hooks.

A method's dataclass fields are its hyper-parameters (the class *is* its config, validated in
``__post_init__``); runtime state lives in fields whose names end in ``_``. Every hook is optional
(``Method`` declares their signatures; ``Session`` checks them at attach and refuses a public
callable whose name looks like a misspelt hook):

    attach(model, ctx)                 once, before training (add parametrizations, init state)
    param_groups(model, ctx)           optimizer groups of its own: [{"params", "lr_scale", ...}]
    loss(model, x_seq, out_seq, ctx)   a term added to the task loss at every step
    after_step(model, ctx)             after each optimizer step (schedules run on ctx.progress)
    finalize(model, ctx) -> model      bake the result into a plain module
    train_step(model, x_seq, y, ctx)   replaces the loop's float forward / backward / optimizer
                                       step for a batch (a method that trains the model itself)
    reduce_(model, ctx)                makes the method's statistics agree across the ranks of a
                                       distributed run (``ctx.comm``); called before every
                                       ``after_step`` and before ``finalize``, in one-process runs
                                       too (where every collective is the identity)

Distributed runs: DDP keeps the weights identical on every rank (same initial broadcast, averaged
gradients). Anything a method computes from the weights alone therefore agrees by itself; anything
it measures on data (activity, covariances, spike counts, rewards) or draws at random must be made
to agree in ``reduce_`` (``spikecompress.collectives``). The distributed contract suite
checks every registered method by comparing its state across two processes.

``KIND`` (a class attribute) places the method in the Session's fixed finalize order:
"channels" → "masks" → "quant" → "time"; "loss"-only methods finalize last and change nothing.
"loss" methods also attach first, so they see the model as it enters the stage (distillation's
default teacher is a frozen copy of it).

Checkpointed state: tensors live either in the model (parametrization parameters and buffers, so
``model.state_dict()`` carries them) or in runtime fields: a tensor, a list of tensors or a
str → tensor dict, and JSON scalars (int, float, bool, str, None). ``Session.state_dict`` collects
those fields and the Trainer saves them with every checkpoint, so a killed run resumes exactly.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from spikecompress.collectives import Collectives

KINDS = ("channels", "masks", "quant", "time", "loss")


@dataclass
class Context:
    """Where training is: ``progress`` in [0, 1] over the stage, ``step`` (optimizer steps taken),
    ``epoch``, ``stage``; and, once the loop calls ``Session.bind``, its ``optimizer``, the
    learning rate of every step ``lr_at(step)``, the stage's ``total_steps`` and ``steps_per_epoch``
    (None before) and the loop's ``task_loss`` (the kind of ``snn.losses.task_loss`` it adds the
    methods' terms to: "ce" unless told); ``y``: the labels [B] of the batch being trained on, set
    by ``Session.loss`` (None when the loop passes none); ``comm``: the processes of the run and
    their collectives (one process unless torch.distributed is initialized)."""

    progress: float = 0.0
    step: int = 0
    epoch: int = 0
    stage: str = ""
    optimizer: Any = None
    lr_at: Callable[[int], float] | None = None
    total_steps: int | None = None
    steps_per_epoch: int | None = None
    task_loss: str = "ce"
    y: Any = None
    comm: Collectives = field(default_factory=Collectives)


class Method(Protocol):
    """One compression technique. ``KIND`` is required; every hook is optional — the Session
    calls those a method defines, with exactly these signatures (checked at ``attach``)."""

    KIND: ClassVar[str]

    def attach(self, model: nn.Module, ctx: Context) -> None:
        """Once, before training: add parametrizations, hooks, initial state."""

    def param_groups(self, model: nn.Module, ctx: Context) -> list[dict]:
        """Optimizer groups of the method's own: ``[{"params": [...], "lr_scale": s}]``."""

    def loss(
        self, model: nn.Module, x_seq: torch.Tensor, out_seq: torch.Tensor, ctx: Context
    ) -> torch.Tensor:
        """A term added to the task loss at every step (a 0-dim tensor)."""

    def after_step(self, model: nn.Module, ctx: Context) -> None:
        """After each optimizer step; schedules read ``ctx.progress``."""

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Bake the result into a plain module and return it."""

    def train_step(
        self, model: nn.Module, x_seq: torch.Tensor, y: torch.Tensor, ctx: Context
    ) -> tuple[float, torch.Tensor]:
        """Replaces the loop's float forward / backward / optimizer step for this batch; returns
        (the loss as a Python float for logging, out_seq [T, B, classes] for accuracy)."""

    def reduce_(self, model: nn.Module, ctx: Context) -> None:
        """Make the statistics measured on this rank's data agree across ranks (``ctx.comm``)."""


HOOKS = ("attach", "param_groups", "loss", "after_step", "finalize", "train_step", "reduce_")


def hook(method: object, name: str):
    """The method's hook ``name`` or None when it does not define one."""
    fn = getattr(method, name, None)
    return fn if callable(fn) else None


def check_hooks(method: object) -> None:
    """Refuse, with one line, a hook whose signature differs from ``Method``'s and a public
    callable whose name looks like a misspelt hook (``after_steps``, ``finalise``), which the
    Session would otherwise silently never call."""
    cls = type(method)
    for name in dir(cls):
        if name.startswith("_") or name in HOOKS or not callable(getattr(cls, name, None)):
            continue
        close = difflib.get_close_matches(name, HOOKS, n=1, cutoff=0.8)
        if close:
            raise ValueError(f"{cls.__name__}.{name} looks like a misspelt hook {close[0]!r}: "
                             f"rename it, or make it private with a leading underscore")
    for name in HOOKS:
        fn = hook(method, name)
        if fn is None:
            continue
        want = list(inspect.signature(getattr(Method, name)).parameters)[1:]  # without self
        try:
            inspect.signature(fn).bind(*want)
        except TypeError:
            raise ValueError(f"{cls.__name__}.{name} must take ({', '.join(want)}), got "
                             f"{inspect.signature(fn)}") from None


def zero_loss(out_seq: torch.Tensor) -> torch.Tensor:
    """A zero that keeps device and dtype (for methods whose loss term is switched off)."""
    return out_seq.new_zeros(())


def method_name(method: object) -> str:
    """The registered name of a method instance (its class attribute ``NAME``, else the class)."""
    return getattr(type(method), "NAME", type(method).__name__)


def runtime_state(method: object) -> dict:
    """The method's runtime fields (names ending in ``_``) for checkpoints and inspection: the
    dataclass fields (also those still at a class-level default) and any other such attribute."""
    names = set(vars(method))
    if dataclasses.is_dataclass(method):
        names |= {f.name for f in dataclasses.fields(method)}
    keep = sorted(k for k in names if k.endswith("_") and not k.startswith("_"))
    return {k: getattr(method, k) for k in keep}


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
