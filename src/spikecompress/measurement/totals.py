"""``count_loader``: the exact counts of ``count`` summed over every batch of a loader."""

from __future__ import annotations

from torch import nn

from spikecompress.measurement.counters import Counts, count, merge_fired

_SUMMED = ("sops", "macs", "dense_macs", "spikes", "neuron_updates", "samples")
_LAYER_SUMMED = ("sops", "macs", "dense_macs", "spikes", "neuron_updates", "input_elements")


def count_loader(model: nn.Module, loader, static_input_once: bool = False) -> tuple[dict, Counts]:
    """Exact counts summed over every batch of ``loader``: (totals dict, last batch's Counts).

    A neuron layer's row also has ``neurons`` (per sample) and ``silent``: its neurons that fired
    in no batch (over every step and sample of the loader); totals ``neurons`` and ``silent`` sum
    them over the neuron layers."""
    totals: dict = {k: 0 for k in _SUMMED}
    layers: dict[str, dict] = {}
    last, cache = None, {}  # connection maps are reused across the batches
    fired: dict[str, dict] = {}  # neuron layer -> {sample shape: fired at least once}
    for x_seq, _ in loader:
        last = count(model, x_seq, static_input_once=static_input_once, cache=cache)
        for k in _SUMMED:
            totals[k] += getattr(last, k)
        for name, rec in last.layers.items():
            row = layers.setdefault(
                name,
                {
                    "kind": rec.kind,
                    "params": rec.params,
                    "params_nonzero": rec.params_nonzero,
                    "input_kind": rec.input_kind,
                    **{k: 0 for k in _LAYER_SUMMED},
                },
            )
            for k in _LAYER_SUMMED:
                row[k] += getattr(rec, k)
            if rec.kind == "neuron":
                row["neurons"], row["silent"] = merge_fired(fired.setdefault(name, {}), rec.fired)
    if last is None:
        raise ValueError("measure needs a non-empty test loader")
    synaptic = [r for r in layers.values() if r["kind"] == "synaptic"]
    spiking = [r for r in synaptic if r["input_kind"] != "real"]
    totals.update(
        time_steps=last.time_steps,
        params_nonzero=last.weights - last.weights_zero,
        weights=last.weights,
        spike_input_elements=sum(r["input_elements"] for r in spiking),
        real_input_elements=sum(r["input_elements"] for r in synaptic) - sum(
            r["input_elements"] for r in spiking
        ),
        layers=layers,
        neurons=sum(r.get("neurons", 0) for r in layers.values()),
        silent=sum(r.get("silent", 0) for r in layers.values()),
    )
    return totals, last
