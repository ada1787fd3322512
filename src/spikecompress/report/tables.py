"""Rich tables of Metrics records: totals, one row per layer, one row per run.

Every table fits the console: on a narrower terminal the columns of least priority are left out
(the caption names them; report.md and report.html keep every column). Output that is not a
terminal (a pipe, a log) is printed at a wide width unless ``$COLUMNS`` says otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from spikecompress.report.render import table_rows

# columns of print_comparison, most important first (the first ones are kept when narrow)
COMPARISON_PRIORITY = (
    "run", "accuracy", "bytes on disk", "non-zero", "SOPs/sample", "L0 energy nJ", "avg steps",
    "T", "ANN/SNN L0", "params", "spikes/sample", "latency ms (b=1)", "MACs/sample",
    "L1 energy nJ", "spikes/neuron", "silent neurons",
)
LAYER_COLUMNS = ("layer", "params", "non-zero", "firing rate", "spikes/neuron", "silent", "SOPs",
                 "MACs", "energy share")
LAYER_PRIORITY = ("layer", "non-zero", "firing rate", "SOPs", "energy share", "params", "MACs",
                  "spikes/neuron", "silent")


def console_for(min_width: int) -> Console:
    """A stdout console: a terminal's own width (or ``$COLUMNS``); else at least ``min_width``."""
    console = Console()
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return Console(width=max(console.width, min_width))


def fitted_table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[str]], priority: Sequence[str],
    console: Console,
) -> Table:
    """A table of ``header`` and ``rows`` (first column left-aligned) that fits ``console``:
    columns are left out by ``priority`` (last first) until it does; the caption names them."""
    drop_order = [h for h in reversed(priority) if h in header[1:]]
    drop_order = [h for h in reversed(header[1:]) if h not in priority] + drop_order
    keep = list(header)
    while True:
        table = _table(title, header, rows, keep)
        dropped = [h for h in header if h not in keep]
        if dropped:
            table.caption = f"left out to fit {console.width} columns: {', '.join(dropped)}"
        if _natural_width(table, console) <= console.width or len(keep) <= 2:
            return table
        keep.remove(next(h for h in drop_order if h in keep))


def _natural_width(table: Table, console: Console) -> int:
    """The width ``table`` takes without wrapping or squeezing a cell (rich's own measure is
    capped at the console's width)."""
    return Measurement.get(console, console.options.update_width(10_000), table).maximum


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], keep) -> Table:
    table = Table(title=title)
    index = [i for i, h in enumerate(header) if h in keep]
    for i in index:
        table.add_column(header[i], justify="left" if i == 0 else "right", no_wrap=i != 0)
    for row in rows:
        table.add_row(*(row[i] for i in index))
    return table


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _totals(m: dict) -> list[tuple[str, str]]:
    e, ann = m["energy_pj_per_sample"], m["ann_energy_pj_per_sample"]
    steps = f"T={m['time_steps']}"
    avg = m.get("avg_time_steps", m["time_steps"])
    if avg != m["time_steps"]:
        steps += f", {avg:.2f} steps per sample on average"
    return [
        ("accuracy", f"{100 * m['accuracy']:.2f}% on {m['samples']} samples, {steps}"),
        ("params (non-zero)", f"{m['params']:,} ({m['params_nonzero']:,})"),
        ("bytes on disk", f"{m['size_bytes']:,} (widest weight {m['weight_bits']} bits)"),
        ("spikes / sample", _spikes(m)),
        (
            "SOPs / MACs / dense MACs per sample",
            f"{m['sops_per_sample']:,.0f} / {m['macs_per_sample']:,.0f} / "
            f"{m['dense_macs_per_sample']:,.0f}",
        ),
        (
            f"energy per sample ({m['profile']})",
            f"L0 {e['L0'] / 1e3:,.2f} nJ, L1 {e['L1'] / 1e3:,.2f} nJ",
        ),
        (
            "ANN twin energy per sample",
            f"L0 {ann['L0'] / 1e3:,.2f} nJ ({ann['L0'] / max(e['L0'], 1e-12):.2f}×), "
            f"L1 {ann['L1'] / 1e3:,.2f} nJ ({ann['L1'] / max(e['L1'], 1e-12):.2f}×)",
        ),
        (
            "latency per sample",
            ", ".join(f"{k.replace('_', ' ')}: {v:.3f} ms" for k, v in m["latency_ms"].items()),
        ),
    ]


def _spikes(m: dict) -> str:
    """Spikes per sample, and per neuron with the share of silent neurons where recorded (a
    record written before they were measured has neither)."""
    text = f"{m['spikes_per_sample']:,.1f}"
    if m.get("spikes_per_neuron") is not None and m.get("silent_neurons") is not None:
        text += (f" ({m['spikes_per_neuron']:.3f} per neuron; {m['silent_neurons']:.1%} of "
                 f"neurons silent on the test set)")
    return text


def print_metrics(m: dict, title: str, console: Console | None = None) -> None:
    """Print the totals and the per-layer table of a ``Metrics.to_dict()`` record."""
    console = console or console_for(110)
    totals = Table(title=title, show_header=False)  # its values wrap when narrow
    for k, v in _totals(m):
        totals.add_row(k, v)
    console.print(totals)
    rows = [
        [
            name,
            _fmt(r["params"], ","),
            _fmt(r["params_nonzero"], ","),
            _fmt(r["firing_rate"], ".4f"),
            _fmt(r.get("spikes_per_neuron"), ".3f"),
            _fmt(r.get("silent_neurons"), ".1%"),
            _fmt(r["sops"], ",.0f"),
            _fmt(r["macs"], ",.0f"),
            _fmt(r["energy_share"], ".1%"),
        ]
        for name, r in m["layers"].items()
    ]
    title = "per layer (per sample)"
    console.print(fitted_table(title, LAYER_COLUMNS, rows, LAYER_PRIORITY, console))


def print_comparison(runs: dict[str, dict], title: str, console: Console | None = None) -> None:
    """One row per run (e.g. per recipe stage): the report's columns, as a rich table."""
    console = console or console_for(200)
    header, rows = table_rows(runs)
    console.print(fitted_table(title, header, rows, COMPARISON_PRIORITY, console))


def print_firing_rates(metrics: dict, title: str, console: Console | None = None) -> None:
    """The per-layer firing rates and the totals of an ``evaluate`` record (train, eval)."""
    console = console or console_for(80)
    rows = [[name, f"{layer['firing_rate']:.4f}"] for name, layer in metrics["layers"].items()]
    console.print(fitted_table(title, ("layer", "firing rate"), rows, (), console))
    console.print(
        f"accuracy {metrics['accuracy']:.4f}   spikes/sample {metrics['spikes_per_sample']:.0f}   "
        f"firing rate {metrics['firing_rate']:.4f}"
    )
