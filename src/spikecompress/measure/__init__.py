"""Measurement: spikes and firing rates now; SOPs, MACs, energy and bytes on disk build on it."""

from spikecompress.measure.spikes import SpikeMonitor, is_neuron

__all__ = ["SpikeMonitor", "is_neuron"]
