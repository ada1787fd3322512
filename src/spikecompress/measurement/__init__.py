"""Measurement: accuracy, exact operation counts, energy, latency, bytes on disk, one record.

``spikecompress.measure(model, data)`` (re-exported at the package root) is
``spikecompress.measurement.metrics.measure``.
"""

from spikecompress.measurement.accuracy import evaluate
from spikecompress.measurement.counters import Counts, LayerCounts, count
from spikecompress.measurement.energy import (
    PROFILES,
    EnergyProfile,
    ann_energy_pj,
    energy_pj,
    get_profile,
)
from spikecompress.measurement.latency import latency_ms
from spikecompress.measurement.metrics import Metrics, measure
from spikecompress.measurement.sparsity import connectivity, neuron_sparsity, weight_sparsity
from spikecompress.measurement.spikes import SpikeMonitor, is_neuron

__all__ = [
    "PROFILES", "Counts", "EnergyProfile", "LayerCounts", "Metrics", "SpikeMonitor",
    "ann_energy_pj", "connectivity", "count", "energy_pj", "evaluate", "get_profile", "is_neuron",
    "latency_ms", "measure", "neuron_sparsity", "weight_sparsity",
]
