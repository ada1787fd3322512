"""Training: the BPTT Trainer, its configuration, checkpoints and seeding.

Evaluation (accuracy, spikes) is ``spikecompress.measurement.evaluate``.
"""

from spikecompress.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from spikecompress.train.config import TrainConfig
from spikecompress.train.seeding import seed_everything, set_threads
from spikecompress.train.trainer import Trainer

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "Trainer",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
    "set_threads",
]
