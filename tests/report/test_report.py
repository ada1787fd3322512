"""The report as a user meets it: honest axes, a reference line, sizes that add up to the table,
per-layer plots on one scale, the energy profile and recipe stated, group-readable files."""

import os
import stat

import pytest

from spikecompress.atomic import atomic_writer
from spikecompress.report import plots, write_report

LAYERS = ["features.0.conv", "features.1.lif", "classifier"]


def _metrics(accuracy: float, size: int, scale: float, breakdown: dict) -> dict:
    """A measure() record with only what the report reads (no model, no data: fast)."""
    layers = {
        "features.0.conv": {"firing_rate": None, "sops": 1e5 * scale, "macs": 2e4},
        "features.1.lif": {"firing_rate": 0.2 * scale, "sops": None, "macs": None},
        "classifier": {"firing_rate": None, "sops": 3e4 * scale, "macs": 0.0},
    }
    return {
        "accuracy": accuracy, "samples": 360, "time_steps": 4, "avg_time_steps": 4.0,
        "params": 1000, "params_nonzero": int(1000 * scale), "size_bytes": size,
        "spikes_per_sample": 500.0 * scale, "sops_per_sample": 1.3e5 * scale,
        "macs_per_sample": 2e4, "energy_pj_per_sample": {"L0": 1e4 * scale, "L1": 3e4 * scale},
        "ann_energy_pj_per_sample": {"L0": 5e4, "L1": 9e4}, "latency_ms": {"batch_1": 0.5},
        "profile": "45nm", "layers": layers, "size_breakdown": breakdown,
    }


@pytest.fixture
def runs():
    """A dense run and a compressed one 1.4 pp below it, with different per-layer activity."""
    dense = _metrics(0.997, 40_000, 1.0, {"features.0.conv": 30_000, "classifier": 8_000})
    small = _metrics(0.983, 6_000, 0.4, {"features.0.conv": 3_900, "classifier": 1_000})
    return {"dense": dense, "compress": small}


def _close(fig):
    plots._plt().close(fig)


def test_a_small_accuracy_drop_keeps_a_full_scale_axis(runs):
    fig = plots.accuracy_figure(runs, "size_bytes", "bytes on disk")
    ax = fig.axes[0]
    assert ax.get_ylim() == (0.0, 100.0)  # 1.4 pp is 1.4 % of the height, never all of it
    lo, hi = ax.get_xlim()
    assert hi / lo >= 4 * 40_000 / 6_000 * 0.99  # the log x axis is padded too, never zoomed in
    _close(fig)


def test_the_first_run_is_a_reference_line(runs):
    for fig in (plots.accuracy_figure(runs, "sops_per_sample", "SOPs"), plots.size_figure(runs)):
        refs = [ln for ln in fig.axes[0].get_lines() if "dense (reference)" in ln.get_label()]
        assert refs, [ln.get_label() for ln in fig.axes[0].get_lines()]
        _close(fig)
    fig = plots.accuracy_figure(runs, "sops_per_sample", "SOPs")
    (ref,) = [ln for ln in fig.axes[0].get_lines() if "reference" in ln.get_label()]
    assert list(ref.get_ydata()) == pytest.approx([99.7, 99.7])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("compress" in t and "-1.40 pp" in t for t in texts), texts
    _close(fig)


def test_the_size_breakdown_adds_up_to_the_tables_bytes_with_the_legend_outside(runs):
    fig = plots.size_figure(runs)
    ax = fig.axes[0]
    totals = [0.0] * len(runs)
    for container in ax.containers:
        for i, bar in enumerate(container):
            totals[i] += bar.get_height()
    assert totals == [m["size_bytes"] for m in runs.values()]
    labels = [c.get_label() for c in ax.containers]
    assert labels == ["features.0.conv", "classifier", "spec.json / other"]
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # right of the axes: never over the bars
    _close(fig)


def test_per_layer_plots_of_all_runs_share_their_scale(runs):
    figs = plots.layer_figures(runs)
    assert len(figs) == 2
    for k in range(2):  # firing rates, operations
        limits = {fig.axes[k].get_ylim() for fig in figs}
        assert len(limits) == 1, limits
        (low, high), *_ = limits
        assert low == 0 and high >= max(
            (v["firing_rate"] if k == 0 else (v["sops"] or 0) + (v["macs"] or 0)) or 0
            for m in runs.values() for v in m["layers"].values()
        )
    for fig in figs:
        _close(fig)


def test_the_html_states_the_profile_and_the_recipe(runs, tmp_path):
    recipe = "version: 1\nmodel: {name: conv_net}\nstages:\n  - name: dense\n"
    md, html = write_report(runs, tmp_path / "rep", recipes={"dense": recipe, "compress": recipe})
    page = html.read_text()
    assert "45nm" in page and "energy profile" in page
    assert "model: {name: conv_net}" in page and page.count("model: {name: conv_net}") == 1
    text = md.read_text()
    assert "45nm" in text and "model: {name: conv_net}" in text
    assert page.count("data:image/png;base64,") == 5  # 2 accuracy plots, sizes, 1 per run


def test_a_report_without_recipes_says_so(runs, tmp_path):
    _, html = write_report(runs, tmp_path / "rep")
    assert "not recorded" in html.read_text()


def test_written_files_are_readable_by_the_group(runs, tmp_path):
    old = os.umask(0o022)
    try:
        write_report(runs, tmp_path / "rep")
        files = sorted((tmp_path / "rep").iterdir())
        assert {f.suffix for f in files} == {".md", ".html", ".png"}
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
        os.umask(0o077)
        with atomic_writer(tmp_path / "private") as f:
            f.write(b"x")
        assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600  # umask respected
    finally:
        os.umask(old)
