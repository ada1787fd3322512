"""Measurement: exact operation counts, energy, latency, bytes on disk, one Metrics record.

The package itself is callable: ``spikecompress.measure(model, data, profile="45nm")`` is
``spikecompress.measure.metrics.measure`` (a module subclass with ``__call__``), so the documented
one-verb API and ``import spikecompress.measure.counters`` both work.
"""

import sys
import types

from spikecompress.measure.counters import Counts, LayerCounts, count
from spikecompress.measure.energy import (
    PROFILES,
    EnergyProfile,
    ann_energy_pj,
    energy_pj,
    get_profile,
)
from spikecompress.measure.latency import latency_ms
from spikecompress.measure.metrics import Metrics, measure
from spikecompress.measure.sparsity import connectivity, neuron_sparsity, weight_sparsity
from spikecompress.measure.spikes import SpikeMonitor, is_neuron

__all__ = [
    "PROFILES", "Counts", "EnergyProfile", "LayerCounts", "SpikeMonitor", "ann_energy_pj", "count",
    "connectivity", "energy_pj", "get_profile", "is_neuron", "latency_ms", "Metrics", "measure",
    "neuron_sparsity", "weight_sparsity",
]


class _CallableModule(types.ModuleType):
    __call__ = staticmethod(measure)


sys.modules[__name__].__class__ = _CallableModule
