"""Training settings as a validated dataclass (the recipe's stage maps onto it one to one)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")
LOSSES = ("ce", "tet")
# A learning rate or weight decay above this only diverges: Adam moves every weight by about lr
# per step, SGD by lr times the gradient; beyond 3.4e38 torch cannot even hold it as a float.
MAX_RATE = 1e3
MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's seed range


def check_rate(name: str, value: object, zero_ok: bool) -> float:
    """``value`` as a float in (0, MAX_RATE] (``[0, MAX_RATE]`` with ``zero_ok``), else a one-line
    ValueError naming ``name`` and saying why the bound."""
    ok = _is_number(value) and math.isfinite(value) and value <= MAX_RATE and (
        value >= 0 if zero_ok else value > 0
    )
    if not ok:
        low = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{name} must be {low} and <= {MAX_RATE:g} (a finite number: a larger "
                         f"one only makes training diverge), got {value!r}")
    return float(value)


def check_momentum(value: object) -> float:
    if not (_is_number(value) and 0 <= value < 1):
        raise ValueError(f"momentum must be in [0, 1), got {value!r}")
    return float(value)


def check_count(name: str, value: object, low: int, high: int | None = None) -> None:
    """An int (not a bool) in ``[low, high]``, else a one-line ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
        high is not None and value > high
    ):
        span = f" and <= {high}" if high is not None else ""
        raise ValueError(f"{name} must be >= {low}{span} (an integer), got {value!r}")


def check_device(value: object) -> str:
    """'cpu', 'cuda' or 'cuda:N' that torch parses (whether CUDA is here is the Trainer's check)."""
    bad = ValueError(f"device must be 'cpu' or 'cuda[:N]', got {value!r}")
    if not isinstance(value, str) or not (value in ("cpu", "cuda") or value.startswith("cuda:")):
        raise bad
    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        raise bad from None
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class TrainConfig:
    """How to train: BPTT with Adam/SGD, a cosine or constant LR, CE on mean logits or TET.

    ``loss="ce"``: cross-entropy of the time-averaged logits ``CE(mean_t out[t], y)``;
    ``loss="tet"``: the TET loss of Deng et al. 2022, ``mean_t CE(out[t], y)``, which trains every
    prefix of T to classify. ``checkpoint_every``: steps between mid-epoch checkpoints (0: only at
    the end of each epoch). ``sync_batchnorm``: in a distributed run, BatchNorm normalises with
    the statistics of the global batch (all ranks' shards) instead of each rank's own.
    """

    epochs: int = 10
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "cosine"
    loss: str = "ce"
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    checkpoint_every: int = 0
    sync_batchnorm: bool = False

    def __post_init__(self) -> None:
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("loss", self.loss, LOSSES)
        check_count("epochs", self.epochs, 0)
        self.lr = check_rate("lr", self.lr, zero_ok=False)
        self.weight_decay = check_rate("weight_decay", self.weight_decay, zero_ok=True)
        self.momentum = check_momentum(self.momentum)
        check_count("seed", self.seed, 0, MAX_SEED)
        check_count("checkpoint_every", self.checkpoint_every, 0)
        for name in ("amp", "sync_batchnorm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        check_device(self.device)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        if not isinstance(d, dict):
            raise ValueError(f"training settings must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(map(str, set(d) - known))
        if unknown:
            raise ValueError(f"unknown training setting {unknown[0]!r}; known: {sorted(known)}")
        return cls(**d)


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")
