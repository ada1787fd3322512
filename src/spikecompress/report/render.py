"""Markdown and self-contained HTML reports comparing runs' Metrics records."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from spikecompress.atomic import atomic_writer
from spikecompress.report import plots

COLUMNS = [  # (header, key or function of the metrics dict, format)
    ("accuracy", lambda m: 100 * m["accuracy"], "{:.2f}%"),
    ("params", "params", "{:,}"),
    ("non-zero", "params_nonzero", "{:,}"),
    ("bytes on disk", "size_bytes", "{:,}"),
    ("T", "time_steps", "{}"),
    ("avg steps", lambda m: m.get("avg_time_steps", m["time_steps"]), "{:.2f}"),
    ("spikes/sample", "spikes_per_sample", "{:,.0f}"),
    ("SOPs/sample", "sops_per_sample", "{:,.0f}"),
    ("MACs/sample", "macs_per_sample", "{:,.0f}"),
    ("L0 energy nJ", lambda m: m["energy_pj_per_sample"]["L0"] / 1e3, "{:,.2f}"),
    ("L1 energy nJ", lambda m: m["energy_pj_per_sample"]["L1"] / 1e3, "{:,.2f}"),
    ("ANN/SNN L0", lambda m: _ratio(m, "L0"), "{:.2f}×"),
    ("latency ms (b=1)", lambda m: m["latency_ms"]["batch_1"], "{:.3f}"),
]


def _ratio(m: dict, level: str) -> float:
    snn = m["energy_pj_per_sample"][level]
    return m["ann_energy_pj_per_sample"][level] / snn if snn else float("inf")


def table_rows(runs: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows, one per run."""
    rows = []
    for name, m in runs.items():
        cells = [name]
        for _, key, fmt in COLUMNS:
            value = key(m) if callable(key) else m[key]
            cells.append(fmt.format(value))
        rows.append(cells)
    return ["run"] + [h for h, _, _ in COLUMNS], rows


def write_report(runs: dict[str, dict], out_dir: str | Path) -> tuple[Path, Path]:
    """Write report.md (PNG plots beside it) and report.html (plots inlined) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = [
        (
            "Accuracy vs SOPs",
            plots.accuracy_vs(
                runs, "sops_per_sample", "SOPs per sample", out / "accuracy_vs_sops.png"
            ),
        ),
        (
            "Accuracy vs bytes on disk",
            plots.accuracy_vs(runs, "size_bytes", "bytes on disk", out / "accuracy_vs_bytes.png"),
        ),
        ("Size breakdown", plots.size_bars(runs, out / "size_breakdown.png")),
    ]
    for i, (name, m) in enumerate(runs.items()):
        figures.append((f"Per layer: {name}", plots.layer_bars(name, m, out / f"layers_{i}.png")))
    header, rows = table_rows(runs)
    md = [
        "# spikecompress report",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    for title, png in figures:
        md += ["", f"## {title}", "", f"![{title}]({png.name})"]
    md_path, html_path = out / "report.md", out / "report.html"
    with atomic_writer(md_path) as f:
        f.write(("\n".join(md) + "\n").encode())
    with atomic_writer(html_path) as f:
        f.write(_html(header, rows, figures).encode())
    return md_path, html_path


def _html(header: list[str], rows: list[list[str]], figures: list[tuple[str, Path]]) -> str:
    esc = html.escape
    th = "".join(f"<th>{esc(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    imgs = "".join(
        f"<h2>{esc(t)}</h2><img alt='{esc(t)}' src='data:image/png;base64,"
        f"{base64.b64encode(p.read_bytes()).decode()}'>"
        for t, p in figures
    )
    style = (
        "body{font-family:sans-serif}td,th{padding:2px 8px;text-align:right;border:1px solid #ccc}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>spikecompress report</title>"
        f"<style>{style}</style></head><body><h1>spikecompress report</h1>"
        f"<table><tr>{th}</tr>{trs}</table>{imgs}</body></html>\n"
    )
