"""Training settings as a validated dataclass (the recipe's stage maps onto it one to one)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")
LOSSES = ("ce", "tet")


@dataclass
class TrainConfig:
    """How to train: BPTT with Adam/SGD, a cosine or constant LR, CE on mean logits or TET.

    ``loss="ce"``: cross-entropy of the time-averaged logits ``CE(mean_t out[t], y)``;
    ``loss="tet"``: the TET loss of Deng et al. 2022, ``mean_t CE(out[t], y)``, which trains every
    prefix of T to classify. ``checkpoint_every``: steps between mid-epoch checkpoints (0: only at
    the end of each epoch).
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

    def __post_init__(self) -> None:
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("loss", self.loss, LOSSES)
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training setting {unknown[0]!r}; known: {sorted(known)}")
        return cls(**d)


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")
