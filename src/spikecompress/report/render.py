"""Markdown and self-contained HTML reports comparing runs' Metrics records."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
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
    ("spikes/neuron", lambda m: m.get("spikes_per_neuron"), "{:.3f}"),  # None: an older record
    ("silent neurons", lambda m: m.get("silent_neurons"), "{:.1%}"),
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
            cells.append("–" if value is None else fmt.format(value))
        rows.append(cells)
    return ["run"] + [h for h, _, _ in COLUMNS], rows


def write_report(
    runs: dict[str, dict], out_dir: str | Path, recipes: Mapping[str, str] | None = None
) -> tuple[Path, Path]:
    """Write report.md (PNG plots beside it) and report.html (plots inlined) into ``out_dir``.

    ``runs``: run name → Metrics record, the first one the reference (the dense model, the first
    stage). ``recipes``: run name → the recipe that produced it, as YAML text (e.g. the run's
    recipe.effective.yaml) or a name; runs sharing one recipe show it once. Each run's energy
    profile comes from its record. Every file is written atomically with a normal file's mode
    (0o666 less the umask)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = [
        ("Accuracy vs SOPs", plots.accuracy_vs(
            runs, "sops_per_sample", "SOPs per sample", out / "accuracy_vs_sops.png")),
        ("Accuracy vs bytes on disk", plots.accuracy_vs(
            runs, "size_bytes", "bytes on disk", out / "accuracy_vs_bytes.png")),
        ("Size breakdown", plots.size_bars(runs, out / "size_breakdown.png")),
    ]
    pngs = plots.layer_bars(runs, [out / f"layers_{i}.png" for i in range(len(runs))])
    figures += [(f"Per layer: {name}", png) for name, png in zip(runs, pngs, strict=True)]
    header, rows = table_rows(runs)
    provenance = run_provenance(runs, recipes)
    md_path, html_path = out / "report.md", out / "report.html"
    with atomic_writer(md_path) as f:
        f.write(_markdown(header, rows, provenance, figures).encode())
    with atomic_writer(html_path) as f:
        f.write(_html(header, rows, provenance, figures).encode())
    return md_path, html_path


NOT_RECORDED = "not recorded"
NOTE = (
    "Accuracy axes run 0-100 %, so a drop looks as big as it is; the first run "
    "({ref}) is the reference (dashed line). Size bars add up to the bytes on disk of the table "
    "(tensors + spec.json). Per-layer plots share one scale."
)


def run_provenance(
    runs: dict[str, dict], recipes: Mapping[str, str] | None = None
) -> tuple[list[tuple[str, str, str]], list[tuple[list[str], str]]]:
    """([(run, energy profile, recipe label)], [(runs, recipe text)]): short recipes (a name)
    are the label; a multi-line recipe is labelled "recipe N" and listed once for its runs."""
    recipes = recipes or {}
    texts: dict[str, list[str]] = {}
    labels = {}
    for name in runs:
        text = (recipes.get(name) or "").strip()
        if "\n" in text:
            texts.setdefault(text, []).append(name)
            labels[name] = f"recipe {list(texts).index(text) + 1}"
        else:
            labels[name] = text or NOT_RECORDED
    table = [(name, str(m.get("profile") or NOT_RECORDED), labels[name])
             for name, m in runs.items()]
    return table, [(names, text) for text, names in texts.items()]


def _profile_note(table: list[tuple[str, str, str]]) -> str:
    profiles = sorted({p for _, p, _ in table})
    if len(profiles) == 1:
        return f"Energy profile: {profiles[0]} (every run)."
    return f"Energy profiles differ ({', '.join(profiles)}): energies are not comparable."


def _markdown(header, rows, provenance, figures) -> str:
    table, texts = provenance
    md = ["# spikecompress report", "", "| " + " | ".join(header) + " |",
          "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", _profile_note(table), "", NOTE.format(ref=table[0][0]), "", "## Runs", "",
           "| run | energy profile | recipe |", "|---|---|---|"]
    md += [f"| {name} | {profile} | {recipe} |" for name, profile, recipe in table]
    for i, (names, text) in enumerate(texts, 1):
        md += ["", f"### recipe {i} ({', '.join(names)})", "", "```yaml", text, "```"]
    for title, png in figures:
        md += ["", f"## {title}", "", f"![{title}]({png.name})"]
    return "\n".join(md) + "\n"


def _html(header, rows, provenance, figures) -> str:
    esc = html.escape
    table, texts = provenance
    th = "".join(f"<th>{esc(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    runs = "".join(f"<tr><td>{esc(n)}</td><td>{esc(p)}</td><td>{esc(r)}</td></tr>"
                   for n, p, r in table)
    recipes = "".join(f"<h3>recipe {i} ({esc(', '.join(names))})</h3><pre>{esc(text)}</pre>"
                      for i, (names, text) in enumerate(texts, 1))
    imgs = "".join(
        f"<h2>{esc(t)}</h2><img alt='{esc(t)}' src='data:image/png;base64,"
        f"{base64.b64encode(p.read_bytes()).decode()}'>"
        for t, p in figures
    )
    style = (
        "body{font-family:sans-serif}td,th{padding:2px 8px;text-align:right;border:1px solid #ccc}"
        "pre{background:#f6f6f6;padding:6px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>spikecompress report</title>"
        f"<style>{style}</style></head><body><h1>spikecompress report</h1>"
        f"<table><tr>{th}</tr>{trs}</table><p>{esc(_profile_note(table))}</p>"
        f"<p>{esc(NOTE.format(ref=table[0][0]))}</p><h2>Runs</h2><table><tr><th>run</th>"
        f"<th>energy profile</th><th>recipe</th></tr>{runs}</table>{recipes}{imgs}</body></html>\n"
    )
