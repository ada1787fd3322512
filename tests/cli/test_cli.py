import json
import subprocess
import sys

import pytest
import torch

from spikecompress.cli import main


def test_train_writes_checkpoint_and_metrics_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "conv_net", "--widths", "8,16", "--data", "digits"]
    args += ["--epochs", "3", "--T", "4", "--out", str(out), "--quiet", "--lr", "5e-3"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.1 < metrics["accuracy"] <= 1 and metrics["spikes_per_sample"] > 0
    assert (out / "artifact" / "spec.json").exists() and (out / "checkpoint.json").exists()
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    assert f"accuracy {metrics['accuracy']:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--model", "nope", "--out", "x"], "unknown model name 'nope'"),
        (["train", "--data", "nope", "--out", "x"], "data.name"),
        (["train", "--T", "0", "--out", "x"], "data.T"),
        (["train", "--widths", "a,b", "--out", "x"], "comma-separated integers"),
        (["train", "--optimizer", "adamw", "--out", "x"], "optimizer"),
        (["train"], "--out"),
        (["eval", "does/not/exist"], "does/not/exist holds neither checkpoint.json"),
        (["frobnicate"], "invalid choice"),
        pytest.param(
            ["train", "--device", "cuda", "--out", "x"],
            "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only torch"),
        ),
        pytest.param(
            ["run", "magnitude", "--device", "cuda", "--set", "data.limit=64", "--quiet"],
            "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only torch"),
        ),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("spikecompress: error:") and message in err


def test_list_shows_every_table(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("conv1d_net", "sew_resnet", "event_digits", "mnist1d", "plif", "latency", "atan"):
        assert name in out


def test_console_script_entry_point_runs():
    res = subprocess.run(
        [sys.executable, "-m", "spikecompress", "--version"], capture_output=True, text=True
    )
    assert res.returncode == 0 and res.stdout.startswith("spikecompress ")
