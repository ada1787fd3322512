"""``measure(model, data)``: one Metrics record for any model, compressed or not.

Accuracy and spikes from the test set, operations from the exact counter (``count``) over every
test batch (with ``model.exit_policy``: the early-exit accuracy and the steps each sample really
runs, ``measure.early_exit``), energy from a named profile (L0 compute, L1 memory-aware) beside
the ANN twin's, bytes of the real artifact on disk (``os.path.getsize`` of the saved files), and
CPU latency (of the full-T forward).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from spikecompress.export import read_spec, save, size_bytes
from spikecompress.measurement.accuracy import evaluate
from spikecompress.measurement.counters import Counts
from spikecompress.measurement.early_exit import exit_measure
from spikecompress.measurement.energy import ann_energy_pj, energy_pj, get_profile
from spikecompress.measurement.latency import latency_ms
from spikecompress.measurement.reach import SYNAPTIC
from spikecompress.measurement.sparsity import connectivity, neuron_sparsity, weight_sparsity
from spikecompress.measurement.totals import count_loader
from spikecompress.models.time_stages import average_time_steps, layer_steps
from spikecompress.snn.neuron import NEURONS


@dataclass
class Metrics:
    """Everything ``measure`` reports; per-sample figures are averages over the test set.

    ``time_steps``: the T the model is run for; ``avg_time_steps``: the steps a sample really
    costs on average (T for a plain SNN; fewer with an early-exit policy or shrinking time stages).
    ``spikes_per_neuron``: spikes per neuron per sample (all neuron layers; ``spikes_per_sample``
    over the neurons of one sample); ``silent_neurons``: the share of those neurons that never
    fire on the whole test set (pruned neurons included); 0 for both without neurons. Per layer:
    the same two figures in ``layers`` (None for conv / linear rows).
    """

    accuracy: float
    samples: int
    time_steps: int
    avg_time_steps: float
    params: int
    params_nonzero: int
    weight_bits: int
    size_bytes: int
    spikes_per_sample: float
    spikes_per_neuron: float
    silent_neurons: float
    sops_per_sample: float
    macs_per_sample: float
    dense_macs_per_sample: float
    sparsity: dict
    energy_pj_per_sample: dict
    ann_energy_pj_per_sample: dict
    latency_ms: dict
    profile: str
    layers: dict
    size_breakdown: dict
    neurobench: dict
    membrane_bits: int | None = None  # an integer membrane's widest bits (None: float membrane)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_neurobench(self) -> dict:
        """The figures under NeuroBench 2.3's names (per sample, summed over T)."""
        return dict(self.neurobench)


def layer_steps_run(model: nn.Module, t: dict, T: int) -> dict[str, float]:
    """The steps each counted layer of the SNN ran per sample: the average exit step (exit
    policy; its own network is not part of the SNN), its stage's T (time stages,
    ``models.time_stages``), else T."""
    if getattr(model, "exit_policy", None) is not None:
        return {name: t["time_steps"] for name in t["layers"]
                if not name.startswith("exit_policy.")}
    steps = layer_steps(model, T, types=(*SYNAPTIC, *NEURONS.values()))
    return {name: steps.get(name, T) for name in t["layers"]}


def _energies(t: dict, steps: dict, profile, membrane_bits: int | None) -> tuple[dict, dict]:
    """Per-sample SNN and ANN-twin energies at L0 and L1 with the same profile; the twin is one
    pass: each layer's dense MACs, neuron updates and inputs divided by the ``steps`` it ran."""
    def one_pass(key: str) -> float:
        return sum(t["layers"][name][key] / n_steps for name, n_steps in steps.items())

    snn, ann = {}, {}
    n = t["samples"]
    for level in ("L0", "L1"):
        snn[level] = energy_pj(t, profile, level, membrane_bits=membrane_bits)["total_pj"] / n
        ann[level] = ann_energy_pj(
            one_pass("dense_macs"), one_pass("neuron_updates"), profile, level,
            params=t["weights"], input_elements=one_pass("input_elements"), samples=n,
        )["total_pj"] / n
    return snn, ann


def _layer_table(t: dict, profile) -> dict:
    """Per layer, per sample: params, non-zero, firing rate, spikes per neuron, share of silent
    neurons, SOPs, MACs, share of L0 energy."""
    n = t["samples"]
    total = energy_pj(t, profile, "L0")["total_pj"] or 1.0
    table = {}
    for name, r in t["layers"].items():
        e = energy_pj(r, profile, "L0")["total_pj"]
        rate = (
            r["spikes"] / r["neuron_updates"]
            if r["kind"] == "neuron" and r["neuron_updates"]
            else None
        )
        neurons = r.get("neurons") if r["kind"] == "neuron" else None
        table[name] = {
            "kind": r["kind"],
            "params": r["params"],
            "params_nonzero": r["params_nonzero"],
            "firing_rate": rate,
            "spikes_per_neuron": r["spikes"] / (n * neurons) if neurons else None,
            "silent_neurons": r["silent"] / neurons if neurons else None,
            "sops": r["sops"] / n if r["kind"] == "synaptic" else None,
            "macs": r["macs"] / n if r["kind"] == "synaptic" else None,
            "energy_share": e / total,
        }
    return table


def _artifact_stats(path: Path) -> tuple[int, int, dict]:
    """(bytes on disk, widest conv/linear weight in bits, bytes per layer) of a saved artifact."""
    spec = read_spec(path)
    per_layer: dict[str, int] = {}
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        for piece in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            t = f.get_tensor(piece)
            layer = piece.split("::")[0].rsplit(".", 1)[0]
            per_layer[layer] = per_layer.get(layer, 0) + t.numel() * t.element_size()
    bits = 0
    for key, entry in spec["tensors"].items():
        if key.endswith(".weight") and len(entry["shape"]) >= 2:
            dtype_bits = torch.finfo(getattr(torch, entry["dtype"])).bits
            bits = max(bits, entry.get("bits") or dtype_bits)
    return size_bytes(path), bits, per_layer


def _accuracy_and_counts(model: nn.Module, loader, static_input_once: bool):
    """(accuracy, count totals, last Counts, T): with ``model.exit_policy`` the early-exit
    accuracy and the counts of the steps each sample runs (``totals["time_steps"]`` is then the
    average exit step; T the full one)."""
    if getattr(model, "exit_policy", None) is not None:
        acc, t, last = exit_measure(model, loader, static_input_once)
        return acc, t, last, t["full_time_steps"]
    acc = evaluate(model, loader)["accuracy"]
    t, last = count_loader(model, loader, static_input_once)
    return acc, t, last, t["time_steps"]


def _average_steps(model: nn.Module, t: dict, T: int) -> float:
    """Steps a sample costs: the average exit step, or the stage-weighted T of time stages."""
    if getattr(model, "exit_policy", None) is not None:
        return float(t["time_steps"])
    return float(average_time_steps(model, T))


def _sized(model: nn.Module, artifact: str | Path | None, T: int) -> tuple[int, int, dict]:
    """``_artifact_stats`` of the given artifact, or of the model saved to a temporary folder."""
    if artifact is not None:
        return _artifact_stats(Path(artifact))
    with tempfile.TemporaryDirectory() as tmp:
        return _artifact_stats(save(model, Path(tmp) / "artifact", meta={"T": T}))


def _neurobench(t: dict, last: Counts) -> dict:
    """The figures under NeuroBench 2.3's names, per sample over the whole test set."""
    n = t["samples"]
    return {
        **last.to_neurobench(),
        "Effective_ACs": t["sops"] / n,
        "Effective_MACs": t["macs"] / n,
        "Dense": t["dense_macs"] / n,
        "ActivationSparsity": 1 - t["spikes"] / max(t["neuron_updates"], 1),
    }


def measure(
    model: nn.Module,
    data,
    profile: str | None = None,
    artifact: str | Path | None = None,
    membrane_bits: int | None = None,
    static_input_once: bool = False,
    latency_repeats: int = 20,
) -> Metrics:
    """Measure ``model`` on ``data.test`` (a ``spikecompress.data.Data``) into one ``Metrics``.

    ``artifact``: this model's saved artifact folder, whose files are sized (default: the model is
    saved to a temporary folder and that is sized);
    ``membrane_bits``: the membrane width for L1 (default: the model's integer membrane, else the
    profile's op width); ``profile``: an energy preset (default: "45nm-int8" for a model on the
    integer grid, whose weights, accumulators and membranes are integers, else "45nm" fp32).
    """
    int_bits = [int(m.membrane_bits) for m in model.modules()
                if getattr(m, "membrane_bits", None) is not None]
    integer = max(int_bits) if int_bits else None
    membrane_bits = integer if membrane_bits is None else membrane_bits
    prof = get_profile(profile or ("45nm-int8" if integer else "45nm"))
    acc, t, last, T = _accuracy_and_counts(model, data.test, static_input_once)
    disk, weight_bits, breakdown = _sized(model, artifact, T)
    steps = layer_steps_run(model, t, T)
    snn, ann = _energies(t, steps, prof, membrane_bits)
    x_seq = next(iter(data.test))[0]
    n = t["samples"]
    return Metrics(
        accuracy=acc,
        samples=n,
        time_steps=T,
        avg_time_steps=_average_steps(model, t, T),
        params=last.params,
        params_nonzero=sum(int((p != 0).sum()) for p in model.parameters()),
        weight_bits=weight_bits,
        size_bytes=disk,
        spikes_per_sample=t["spikes"] / n,
        spikes_per_neuron=t["spikes"] / (n * t["neurons"]) if t["neurons"] else 0.0,
        silent_neurons=t["silent"] / t["neurons"] if t["neurons"] else 0.0,
        sops_per_sample=t["sops"] / n,
        macs_per_sample=t["macs"] / n,
        dense_macs_per_sample=t["dense_macs"] / n,
        sparsity={
            "weights": weight_sparsity(model),
            "neurons": neuron_sparsity(model, x_seq),
            "connectivity": connectivity(model, x_seq),
        },
        energy_pj_per_sample=snn,
        ann_energy_pj_per_sample=ann,
        latency_ms=latency_ms(model, x_seq, repeats=latency_repeats),
        profile=prof.name,
        layers=_layer_table(t, prof),
        size_breakdown=breakdown,
        neurobench=_neurobench(t, last),
        membrane_bits=integer,
    )
