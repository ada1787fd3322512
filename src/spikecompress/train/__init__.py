"""Training: the BPTT Trainer, its configuration, checkpoints, seeding and evaluation."""

from spikecompress.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from spikecompress.train.config import TrainConfig
from spikecompress.train.loop import evaluate, task_loss
from spikecompress.train.seeding import seed_everything, set_threads
from spikecompress.train.trainer import Trainer

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "Trainer",
    "evaluate",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
    "set_threads",
    "task_loss",
]
