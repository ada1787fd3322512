"""Plots of Metrics records (matplotlib, imported lazily; the Agg backend, no display needed).

The scales are chosen so that no plot makes a change look bigger than it is:

* accuracy axes always run from 0 to 100 %: a 1.4 pp drop is 1.4 % of the plot's height, the
  same in every report. Each run's label gives its change against the reference in pp, so a small
  drop stays readable as a number.
* the first run (the dense model, the first stage of a recipe) is the reference: a dashed line
  (and a dotted one at its x) in the accuracy plots, a dashed line at its size in the size plot,
  black ticks at its per-layer values in the per-layer plots.
* log x axes (SOPs, bytes) are padded by a factor 2 on either side, so they span a factor 4 at
  least and never zoom into a few per cent of change.
* bytes and per-layer axes start at 0; the per-layer plots of all runs share their y-limits.
* the size bars add up to the table's ``size_bytes`` (the artifact's files on disk): the per-layer
  tensor bytes of ``size_breakdown`` plus a "spec.json / other" part (spec.json and the tensor
  file's header).

``*_figure`` functions build and return matplotlib figures (for tests, or to restyle); the
others save them as PNGs (atomically, like every file the package writes) and return the path.
"""

from __future__ import annotations

from pathlib import Path

from spikecompress.atomic import atomic_writer

ACCURACY_LIMITS = (0.0, 100.0)
OTHER = "spec.json / other"
REF_STYLE = {"color": "0.35", "lw": 1.0, "zorder": 1}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` (atomically) and close it."""
    with atomic_writer(path) as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return Path(path)


def _reference(runs: dict[str, dict]) -> tuple[str, dict]:
    name = next(iter(runs))
    return name, runs[name]


def accuracy_figure(runs: dict[str, dict], key: str, xlabel: str):
    """Accuracy (0-100 %) against ``key`` (e.g. sops_per_sample, size_bytes), log x; the first
    run is the reference line, each other point is labelled with its change in pp."""
    plt = _plt()
    ref_name, ref = _reference(runs)
    ref_acc = 100 * ref["accuracy"]
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    xs = []
    for name, m in runs.items():
        x, y = max(m[key], 1e-9), 100 * m["accuracy"]
        xs.append(x)
        ax.scatter(x, y, s=40, zorder=3, clip_on=False)
        label = name if name == ref_name else f"{name} ({y - ref_acc:+.2f} pp)"
        ax.annotate(label, (x, y), fontsize=8, xytext=(4, -12), textcoords="offset points")
    ax.axhline(ref_acc, ls="--", label=f"{ref_name} (reference): {ref_acc:.2f} %", **REF_STYLE)
    ax.axvline(xs[0], ls=":", **REF_STYLE)
    ax.set_xscale("log")
    ax.set_xlim(min(xs) / 2, max(xs) * 2)
    _log_ticks(ax.xaxis)
    ax.set_ylim(*ACCURACY_LIMITS)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%, full scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return fig


def _log_ticks(axis) -> None:
    """Labels at 1, 2, 5 × 10^k in engineering notation (20 k, 5 M): a short log axis keeps
    readable labels that do not collide."""
    from matplotlib import ticker

    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.EngFormatter())
    axis.set_minor_formatter(ticker.NullFormatter())


def accuracy_vs(runs: dict[str, dict], key: str, xlabel: str, path: Path) -> Path:
    """:func:`accuracy_figure` saved as a PNG at ``path``."""
    return save(accuracy_figure(runs, key, xlabel), path)


def size_parts(runs: dict[str, dict]) -> dict[str, list[int]]:
    """Part name → bytes per run: each layer's tensor bytes (layers in order of first appearance)
    then "spec.json / other", so that every run's parts add up to its ``size_bytes``."""
    layers: dict[str, None] = {}
    for m in runs.values():
        layers.update(dict.fromkeys(m.get("size_breakdown") or {}))
    parts = {
        layer: [(m.get("size_breakdown") or {}).get(layer, 0) for m in runs.values()]
        for layer in layers
    }
    parts[OTHER] = [
        m["size_bytes"] - sum((m.get("size_breakdown") or {}).values()) for m in runs.values()
    ]
    return parts


def size_figure(runs: dict[str, dict]):
    """Stacked bars per run: bytes on disk per layer plus spec.json / other = the table's bytes;
    the legend sits right of the axes, the reference run's size is a dashed line."""
    plt = _plt()
    ref_name, ref = _reference(runs)
    parts = size_parts(runs)
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    bottom = [0] * len(runs)
    for i, (part, heights) in enumerate(parts.items()):
        color = "0.75" if part == OTHER else plt.cm.tab20(i % 20)  # same layer, same color
        ax.bar(range(len(runs)), heights, bottom=bottom, color=color, label=part)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    for i, total in enumerate(bottom):
        ax.annotate(f"{total:,}", (i, total), ha="center", fontsize=7, xytext=(0, 2),
                    textcoords="offset points")
    ax.axhline(ref["size_bytes"], ls="--", label=f"{ref_name} (reference)", **REF_STYLE)
    ax.set_ylim(0, max(bottom + [1]) * 1.1)
    ax.set_xticks(range(len(runs)), list(runs), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("bytes on disk (tensors + spec.json)")
    ax.yaxis.set_major_formatter("{x:,.0f}")  # as the table writes bytes
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=7,
              ncol=1 if len(parts) <= 18 else 2)
    return fig


def size_bars(runs: dict[str, dict], path: Path) -> Path:
    """:func:`size_figure` saved as a PNG at ``path``."""
    return save(size_figure(runs), path)


def _layer_values(metrics: dict) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """(neuron layer → firing rate, synaptic layer → (SOPs, MACs)) of one run."""
    layers = metrics["layers"]
    rates = {k: v["firing_rate"] for k, v in layers.items() if v.get("firing_rate") is not None}
    ops = {k: (v["sops"], v.get("macs") or 0.0) for k, v in layers.items()
           if v.get("sops") is not None}
    return rates, ops


def layer_figures(runs: dict[str, dict]) -> list:
    """One figure per run (firing rate per neuron layer; SOPs + MACs per synaptic layer), all on
    the same y-limits; the reference run's values are black ticks on the others."""
    values = {name: _layer_values(m) for name, m in runs.items()}
    rate_max = max((r for rates, _ in values.values() for r in rates.values()), default=0.0)
    ops_max = max((s + m for _, ops in values.values() for s, m in ops.values()), default=0.0)
    limits = ((0.0, rate_max * 1.1 or 1.0), (0.0, ops_max * 1.1 or 1.0))
    ref_name = next(iter(runs))
    return [
        _layer_figure(name, values[name], None if name == ref_name else values[ref_name],
                      ref_name, limits)
        for name in runs
    ]


def _layer_figure(name: str, values, ref, ref_name: str, limits):
    plt = _plt()
    (rates, ops), (ref_rates, ref_ops) = values, ref or ({}, {})
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    a.bar(range(len(rates)), list(rates.values()), color="tab:orange")
    a.set_xticks(range(len(rates)), list(rates), rotation=45, ha="right", fontsize=7)
    a.set_ylabel("firing rate (spikes / neuron / step)")
    sops, macs = [s for s, _ in ops.values()], [m for _, m in ops.values()]
    b.bar(range(len(ops)), sops, label="SOPs", color="tab:blue")
    b.bar(range(len(ops)), macs, bottom=sops, label="MACs", color="tab:red")
    b.set_xticks(range(len(ops)), list(ops), rotation=45, ha="right", fontsize=7)
    b.set_ylabel("operations per sample")
    b.yaxis.set_major_formatter("{x:,.0f}")
    for ax, own, theirs in ((a, rates, ref_rates), (b, ops, ref_ops)):
        xs = [i for i, k in enumerate(own) if k in theirs]
        ys = [theirs[k] if ax is a else sum(theirs[k]) for k in own if k in theirs]
        if xs:
            ax.scatter(xs, ys, marker="_", s=300, color="k", zorder=3, label=f"{ref_name}")
    for ax, lim in zip((a, b), limits, strict=True):
        ax.set_ylim(*lim)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3,
                      borderaxespad=0.2, frameon=False)
    fig.suptitle(name, fontsize=10)
    return fig


def layer_bars(runs: dict[str, dict], paths: list[Path]) -> list[Path]:
    """:func:`layer_figures` saved as PNGs at ``paths`` (one per run, in order)."""
    return [save(fig, path) for fig, path in zip(layer_figures(runs), paths, strict=True)]
