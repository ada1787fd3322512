"""spikecompress: compression for deep spiking neural networks, measured honestly."""

from spikecompress.snn import IF, LIF, PLIF, reset_state

__version__ = "0.1.0"

__all__ = ["IF", "LIF", "PLIF", "__version__", "reset_state"]
