"""spikecompress: compression for deep spiking neural networks, measured honestly.

The public API, re-exported explicitly; optional dependencies are imported only where used.
"""

from spikecompress.data import Data, DataConfig, load_data
from spikecompress.export import load, save
from spikecompress.measure import Metrics, count  # `spikecompress.measure(...)` is callable
from spikecompress.models import MODELS, build, from_spec
from spikecompress.snn import IF, LIF, PLIF, encode, reset_state
from spikecompress.train import TrainConfig, Trainer, evaluate

__version__ = "0.1.0"

__all__ = [
    "IF", "LIF", "MODELS", "PLIF", "Data", "DataConfig", "TrainConfig", "Trainer", "__version__",
    "Metrics", "build", "count", "encode", "evaluate", "from_spec", "load", "load_data", "measure",
    "reset_state", "save",
]
