"""Bad command lines: exit 2 with one line ``spikecompress: error: ...`` naming the field or file,
no traceback, and no work started (the --out checks come before any data is loaded)."""

import json
from pathlib import Path

import numpy as np
import pytest

from spikecompress.cli import main
from spikecompress.export import save
from spikecompress.models import build
from spikecompress.run import inspect_commands, stages, train_command

TINY = """\
version: 1
model: {name: conv_net, widths: [4, 8]}
data: {name: digits, T: 2, batch_size: 64, limit: 64}
stages:
  - {name: dense, epochs: 1, optimizer: {name: adam, lr: 1.0e-2}}
"""
LINUX = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (no file can be "
                           "created there, even by root)")
TRAIN = ["train", "--epochs", "1", "--limit", "64", "--widths", "4,8", "--quiet"]


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Paths the cases refer to: {a_file}, {recipe}, {artifact} (a conv1d_net for mnist1d), a
    report folder holding bad metrics files; and no data may be loaded."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "notes.txt").write_text("x")
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 8), np.float32))  # no 'y'
    save(build("conv1d_net", in_channels=1, input_size=40, classes=10, widths=[4, 4]),
         tmp_path / "art1d", meta={"T": 2})
    records = {"no_acc": {"params": 1}, "listed": [1, 2], "bad_acc": {"accuracy": "x"}}
    for name, record in records.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(record))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("{not json")
    return tmp_path


def _no_data(monkeypatch):
    def refuse(*args):
        raise AssertionError("data loaded before the command line was checked")

    for module in (train_command, inspect_commands, stages):
        monkeypatch.setattr(module, "load_data", refuse)


CASES = [  # (argv, text the one line must hold, whether the data may be loaded)
    # --out: an existing file, under a file, unwritable (under /proc), a folder for a file
    ([*TRAIN, "--out", "a_file"], "--out a_file: is a file", False),
    ([*TRAIN, "--out", "a_file/run"], "--out a_file/run: a_file is a file", False),
    pytest.param([*TRAIN, "--out", "/proc/spikecompress-test/run"],
                 "--out /proc/spikecompress-test", False, marks=LINUX),
    (["run", "tiny.yaml", "--out", "a_file", "--quiet"], "--out a_file: is a file", False),
    pytest.param(["run", "tiny.yaml", "--out", "/proc/sc/out", "--quiet"], "--out /proc/sc/out",
                 False, marks=LINUX),
    (["demo", "--out", "a_file"], "--out a_file: is a file", False),
    (["report", "no_acc", "--out", "a_file"], "--out a_file: is a file", False),
    (["measure", "art1d", "--out", "no_acc"], "--out no_acc: is a folder", False),
    (["measure", "art1d", "--out", "a_file/m.json"], "--out a_file/m.json: a_file is a file",
     False),
    # data: files, the .npz shortcut, paths that are not datasets
    ([*TRAIN, "--data", "missing.npz", "--out", "o"], "missing.npz", True),
    ([*TRAIN, "--data", "bad.npz", "--out", "o"], "bad.npz: missing array 'y'", True),
    ([*TRAIN, "--data", "notes.txt", "--out", "o"], "--data notes.txt: not a dataset name", False),
    ([*TRAIN, "--data", "a.npz", "--root", "b.npz", "--out", "o"], "--data a.npz is an .npz",
     False),
    ([*TRAIN, "--data", "npz", "--out", "o"], "root", True),
    ([*TRAIN, "--data", "mnist", "--out", "o"], "root", True),
    ([*TRAIN, "--data", "nope", "--out", "o"], "data.name: unknown dataset 'nope'", False),
    # settings
    ([*TRAIN, "--epochs", "-1", "--out", "o"], "epochs must be", False),
    ([*TRAIN, "--lr", "0", "--out", "o"], "lr must be", False),
    ([*TRAIN, "--lr", "nan", "--out", "o"], "lr must be", False),
    ([*TRAIN, "--lr", "1e39", "--out", "o"], "lr must be", False),
    ([*TRAIN, "--device", "cuda:abc", "--out", "o"], "device must be", False),
    ([*TRAIN, "--T", "100000", "--out", "o"], "data.T 100000", False),
    (["run", "tiny.yaml", "--out", "o", "--device", "cuda:abc"], "device must be", False),
    (["run", "tiny.yaml", "--out", "o", "--set", "data.T=100000"], "data.T 100000", False),
    ([*TRAIN, "--batch-size", "0", "--out", "o"], "data.batch_size", False),
    ([*TRAIN, "--limit", "0", "--out", "o"], "data.limit", False),
    ([*TRAIN, "--seed", "-1", "--out", "o"], "data.seed", False),
    ([*TRAIN, "--encoding", "morse", "--out", "o"], "data.encoding", False),
    ([*TRAIN, "--loss", "l2", "--out", "o"], "loss must be one of", False),
    ([*TRAIN, "--device", "tpu", "--out", "o"], "device must be", False),
    ([*TRAIN, "--threads", "0", "--out", "o"], "threads must be >= 1", False),
    ([*TRAIN, "--checkpoint-every", "-2", "--out", "o"], "checkpoint_every", False),
    ([*TRAIN, "--neuron", "hh", "--out", "o"], "neuron must be one of", False),
    ([*TRAIN, "--widths", "4,x", "--out", "o"], "comma-separated integers", False),
    ([*TRAIN, "--epochs", "two", "--out", "o"], "argument --epochs: invalid int", False),
    (["eval", "art1d", "--device", "cuda:abc"], "device must be", False),
    (["measure", "art1d", "--profile", "7nm", "--out", "m.json"], "unknown energy profile '7nm'",
     False),
    (["measure", "art1d", "--data", "digits", "--T", "0", "--out", "m.json"], "data.T", False),
    # folders that hold no model, metrics files a report cannot read
    (["report", "no_acc", "./no_acc", "--out", "r"], "./no_acc is given twice", False),
    (["eval", "a_file"], "a_file holds neither checkpoint.json nor an artifact: it is a file",
     False),
    (["measure", "nowhere"], "nowhere holds neither checkpoint.json", False),
    (["report", "nowhere", "--out", "r"], "nowhere/metrics.json: no such file", False),
    (["report", "no_acc", "--out", "r"], "no_acc/metrics.json: missing key 'accuracy'", False),
    (["report", "bad_acc", "--out", "r"], "bad_acc/metrics.json: 'accuracy' must be a number",
     False),
    (["report", "listed", "--out", "r"], "listed/metrics.json: expected a JSON object", False),
    (["report", "broken", "--out", "r"], "cannot read broken/metrics.json", False),
    # a stage's init: missing, or a model that does not fit the recipe's data
    (["run", "tiny.yaml", "--out", "o", "--quiet", "--set", "stages.0.init=nowhere"],
     "stages.0.init: nowhere holds neither", False),
    (["run", "tiny.yaml", "--out", "o", "--quiet", "--set", "stages.0.init=art1d"],
     "stages.0.init: the conv1d_net model in art1d has input_size 40", True),
]


def _id(case) -> str:
    return " ".join((case.values if hasattr(case, "values") else case)[0])


@pytest.mark.parametrize("argv,message,loads", CASES, ids=[_id(c) for c in CASES])
def test_bad_input_is_one_line_and_exit_2(argv, message, loads, files, monkeypatch, capsys):
    if not loads:
        _no_data(monkeypatch)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("spikecompress: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err


def test_an_unwritable_out_folder_is_refused_before_any_work(files, monkeypatch, capsys):
    """A read-only folder (root ignores chmod, so the probe file is made to fail)."""
    import tempfile

    def read_only(*args, dir=None, prefix=None):
        raise PermissionError(13, "Permission denied")

    (files / "ro").mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    _no_data(monkeypatch)
    assert main([*TRAIN, "--out", "ro/run"]) == 2
    err = capsys.readouterr().err
    assert "--out ro/run: cannot write in ro (Permission denied)" in err and err.count("\n") == 1
