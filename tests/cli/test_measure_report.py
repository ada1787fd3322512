import json

import pytest

from spikecompress.cli import main

FIELDS = ["accuracy", "samples", "time_steps", "params", "params_nonzero", "weight_bits",
          "size_bytes", "spikes_per_sample", "sops_per_sample", "macs_per_sample",
          "energy_pj_per_sample", "ann_energy_pj_per_sample", "latency_ms", "layers", "neurobench"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "small"
    args = ["train", "--model", "conv_net", "--widths", "8,16", "--data", "digits", "--T", "2"]
    assert main([*args, "--epochs", "2", "--lr", "5e-3", "--out", str(out), "--quiet"]) == 0
    return out


def test_measure_a_run_then_its_artifact_gives_the_same_record(run, capsys):
    assert main(["measure", str(run)]) == 0
    a = json.loads((run / "metrics.json").read_text())
    assert all(k in a for k in FIELDS)
    assert a["size_bytes"] > 0 and a["time_steps"] == 2 and a["samples"] == 360
    assert "features.1.conv" in capsys.readouterr().out  # the per-layer table is printed
    assert main(["measure", str(run / "artifact"), "--out", str(run / "again.json")]) == 0
    b = json.loads((run / "again.json").read_text())
    for key in ("accuracy", "sops_per_sample", "macs_per_sample", "size_bytes", "params_nonzero"):
        assert a[key] == b[key], key


def test_report_writes_markdown_html_and_plots(run, tmp_path):
    assert main(["measure", str(run)]) == 0
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "| small |" in md and "accuracy_vs_sops.png" in md
    assert html.count("data:image/png;base64,") == 4  # self-contained: plots inlined
    assert (tmp_path / "rep" / "accuracy_vs_sops.png").stat().st_size > 1000


def test_report_needs_measured_runs(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "run `spikecompress measure" in capsys.readouterr().err


def test_measure_unknown_path_is_one_line(tmp_path, capsys):
    assert main(["measure", str(tmp_path)]) == 2
    assert "neither checkpoint.json" in capsys.readouterr().err


def test_measure_of_an_early_exit_artifact_prints_its_average_steps(run, tmp_path, capsys):
    from spikecompress.export import load, read_spec, save
    from spikecompress.models.exit_policy import install_exit_policy_

    model = load(run / "artifact")
    install_exit_policy_(model, {"kind": "confidence", "alpha": 0.0})  # every sample exits at 1
    meta = read_spec(run / "artifact")["meta"]
    save(model, tmp_path / "exit", meta=meta)
    out = tmp_path / "m.json"
    assert main(["measure", str(tmp_path / "exit"), "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["time_steps"] == 2 and m["avg_time_steps"] == 1.0
    assert "T=2, 1.00 steps per sample on average" in capsys.readouterr().out
