"""Measurement: exact operation counts, energy, latency, bytes on disk, one Metrics record."""

from spikecompress.measure.counters import Counts, LayerCounts, count
from spikecompress.measure.energy import (
    PROFILES,
    EnergyProfile,
    ann_energy_pj,
    energy_pj,
    get_profile,
)
from spikecompress.measure.latency import latency_ms
from spikecompress.measure.spikes import SpikeMonitor, is_neuron

__all__ = [
    "PROFILES", "Counts", "EnergyProfile", "LayerCounts", "SpikeMonitor", "ann_energy_pj", "count",
    "energy_pj", "get_profile", "is_neuron", "latency_ms",
]
