"""Plots of Metrics records (matplotlib, imported lazily; the Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_vs(runs: dict[str, dict], key: str, xlabel: str, path: Path) -> Path:
    """Scatter of accuracy against ``key`` (e.g. sops_per_sample, size_bytes) across runs, log x."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, m in runs.items():
        ax.scatter(max(m[key], 1e-9), 100 * m["accuracy"], s=40)
        ax.annotate(
            name,
            (max(m[key], 1e-9), 100 * m["accuracy"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def layer_bars(name: str, metrics: dict, path: Path) -> Path:
    """Per-layer bars for one run: firing rate of neuron layers, SOPs + MACs of synaptic layers."""
    plt = _plt()
    layers = metrics["layers"]
    neurons = [k for k, v in layers.items() if v.get("firing_rate") is not None]
    synapses = [k for k, v in layers.items() if v.get("sops") is not None]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.bar(range(len(neurons)), [layers[k]["firing_rate"] for k in neurons], color="tab:orange")
    a.set_xticks(range(len(neurons)), neurons, rotation=45, ha="right", fontsize=7)
    a.set_ylabel("firing rate (spikes / neuron / step)")
    sops = [layers[k]["sops"] for k in synapses]
    macs = [layers[k]["macs"] for k in synapses]
    b.bar(range(len(synapses)), sops, label="SOPs", color="tab:blue")
    b.bar(range(len(synapses)), macs, bottom=sops, label="MACs", color="tab:red")
    b.set_xticks(range(len(synapses)), synapses, rotation=45, ha="right", fontsize=7)
    b.set_ylabel("operations per sample")
    b.legend(fontsize=8)
    fig.suptitle(name, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def size_bars(runs: dict[str, dict], path: Path) -> Path:
    """Stacked bars per run: bytes on disk of each layer's stored tensors (from the artifact)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    names = sorted({layer for m in runs.values() for layer in m.get("size_breakdown", {})})
    colors = {
        layer: plt.cm.tab20(i % 20) for i, layer in enumerate(names)
    }  # same layer, same color
    for i, m in enumerate(runs.values()):
        bottom = 0
        for layer, nbytes in sorted(m.get("size_breakdown", {}).items()):
            ax.bar(i, nbytes, bottom=bottom, color=colors[layer])
            bottom += nbytes
    for layer in names:
        ax.bar(0, 0, color=colors[layer], label=layer)
    ax.set_xticks(range(len(runs)), list(runs), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("tensor bytes on disk (spec.json excluded)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
