"""Rich tables of a Metrics record: totals, then one row per layer."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from spikecompress.report.render import table_rows


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def print_metrics(m: dict, title: str, console: Console | None = None) -> None:
    """Print the totals and the per-layer table of a ``Metrics.to_dict()`` record."""
    console = console or Console(width=max(Console().width, 110))
    totals = Table(title=title, show_header=False)
    e, ann = m["energy_pj_per_sample"], m["ann_energy_pj_per_sample"]
    steps = f"T={m['time_steps']}"
    avg = m.get("avg_time_steps", m["time_steps"])
    if avg != m["time_steps"]:
        steps += f", {avg:.2f} steps per sample on average"
    rows = [
        ("accuracy", f"{100 * m['accuracy']:.2f}% on {m['samples']} samples, {steps}"),
        ("params (non-zero)", f"{m['params']:,} ({m['params_nonzero']:,})"),
        ("bytes on disk", f"{m['size_bytes']:,} (widest weight {m['weight_bits']} bits)"),
        ("spikes / sample", f"{m['spikes_per_sample']:,.1f}"),
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
    for k, v in rows:
        totals.add_row(k, v)
    console.print(totals)
    layers = Table(title="per layer (per sample)")
    for col in ("layer", "params", "non-zero", "firing rate", "SOPs", "MACs", "energy share"):
        layers.add_column(col, justify="left" if col == "layer" else "right", no_wrap=True)
    for name, r in m["layers"].items():
        layers.add_row(
            name,
            _fmt(r["params"], ","),
            _fmt(r["params_nonzero"], ","),
            _fmt(r["firing_rate"], ".4f"),
            _fmt(r["sops"], ",.0f"),
            _fmt(r["macs"], ",.0f"),
            _fmt(r["energy_share"], ".1%"),
        )
    console.print(layers)


def print_comparison(runs: dict[str, dict], title: str, console: Console | None = None) -> None:
    """One row per run (e.g. per recipe stage): the report's columns, as a rich table."""

    console = console or Console(width=max(Console().width, 160))
    header, rows = table_rows(runs)
    table = Table(title=title)
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
