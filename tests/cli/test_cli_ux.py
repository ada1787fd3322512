"""What the CLI does with the folders it writes: measure / eval / report on every folder kind,
measure keeping the training history, resume messages, recipes in ``list``, tables that fit a
narrow terminal, a corrected recipe re-run into the folder of a failed start, and the effective
recipe naming the model an ``init`` really holds."""

import io
import json
import shutil

import pytest
import yaml
from rich.console import Console

from spikecompress.cli import main
from spikecompress.export import save
from spikecompress.models import build
from spikecompress.report.tables import print_comparison, print_metrics
from spikecompress.run import stages
from spikecompress.train import Trainer

TINY = """\
version: 1
model: {name: conv_net, widths: [4, 8]}
data: {name: digits, T: 2, batch_size: 64, limit: 64}
stages:
  - {name: dense, epochs: 1, optimizer: {name: adam, lr: 1.0e-2}}
  - name: prune
    epochs: 1
    methods: [{name: magnitude, sparsity: 0.5}]
"""
TRAIN = ["train", "--epochs", "1", "--limit", "64", "--widths", "4,8", "--T", "2", "--quiet"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A finished `run` (runs/a) and a finished `train` (runs/t) of one epoch on 64 digits."""
    root = tmp_path_factory.mktemp("ux")
    (root / "tiny.yaml").write_text(TINY)
    assert main(["run", str(root / "tiny.yaml"), "--out", str(root / "a"), "--quiet"]) == 0
    assert main([*TRAIN, "--out", str(root / "t")]) == 0
    return root


def test_measure_a_stage_folder_keeps_its_training_record(folders, capsys):
    stage = folders / "a/stages/1-prune"
    before = json.loads((stage / "metrics.json").read_text())
    assert main(["measure", str(stage)]) == 0
    after = json.loads((stage / "metrics.json").read_text())
    assert after["train"] == before["train"] and after["stage"] == "prune"
    assert after["params_nonzero"] == before["params_nonzero"]
    assert f"measuring {stage / 'artifact'}" in capsys.readouterr().err


def test_measure_at_another_T_leaves_the_stage_record_alone(folders):
    stage = folders / "a/stages/0-dense"
    before = (stage / "metrics.json").read_text()
    assert main(["measure", str(stage), "--T", "1"]) == 0
    assert (stage / "metrics.json").read_text() == before
    assert json.loads((stage / "measure-digits-T1.json").read_text())["time_steps"] == 1


def test_measure_a_train_run_keeps_its_history_and_records_the_default_lr(folders):
    run = folders / "t"
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert main(["measure", str(run)]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["history"] == history and len(history) == 1 and "sops_per_sample" in m
    assert m["train"]["lr"] == 5e-3 and m["train"]["lr_from"] == "the default for digits"


@pytest.mark.parametrize("sub", ["a", "a/stages/0-dense", "a/stages/1-prune/artifact", "t",
                                 "t/artifact"])
def test_eval_and_measure_accept_every_folder_kind(folders, sub, capsys):
    out = folders / "measured" / sub.replace("/", "_")
    assert main(["eval", str(folders / sub)]) == 0
    assert "accuracy " in capsys.readouterr().out
    assert main(["measure", str(folders / sub), "--out", str(out / "m.json")]) == 0
    assert json.loads((out / "m.json").read_text())["time_steps"] == 2


def test_report_accepts_every_folder_kind(folders, capsys):
    assert main(["measure", str(folders / "t")]) == 0
    kinds = ["a", "a/stages/0-dense", "a/stages/1-prune", "a/stages/1-prune/artifact", "t"]
    argv = [str(folders / k) for k in kinds]
    assert main(["report", *argv, "--out", str(folders / "rep")]) == 0
    md = (folders / "rep/report.md").read_text()
    for name in ("| a |", "| 0-dense |", "| 1-prune |", "| artifact |", "| t |"):
        assert name in md, name


def test_an_unmeasured_train_run_is_named_with_the_missing_key(tmp_path, folders, capsys):
    shutil.copytree(folders / "t", tmp_path / "t")
    record = json.loads((tmp_path / "t/metrics.json").read_text())
    record.pop("params", None)
    (tmp_path / "t/metrics.json").write_text(json.dumps(record))
    assert main(["report", str(tmp_path / "t"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 't/metrics.json'}: missing key 'params'" in err
    assert f"run `spikecompress measure {tmp_path / 't'}`" in err


def test_an_unfinished_stage_says_what_is_missing(tmp_path, folders, capsys):
    stage = tmp_path / "1-prune"
    shutil.copytree(folders / "a/stages/1-prune", stage)
    shutil.rmtree(stage / "artifact")  # killed before finalize: only the checkpoint is left
    assert main(["measure", str(stage)]) == 2
    assert "holds no artifact/ yet" in capsys.readouterr().err


def test_train_reads_an_npz_file_given_as_data(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.arange(80) % 2
    x = (rng.random((80, 1, 8, 8)) * 0.2 + y[:, None, None, None] * 0.8).astype(np.float32)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    assert main([*TRAIN, "--data", str(tmp_path / "mine.npz"), "--out", str(tmp_path / "t")]) == 0
    m = json.loads((tmp_path / "t/metrics.json").read_text())
    assert m["train"]["lr"] == 1e-3  # no default of its own for an npz
    spec = json.loads((tmp_path / "t/artifact/spec.json").read_text())
    assert spec["meta"]["data"]["name"] == "npz"
    assert spec["meta"]["data"]["root"] == str(tmp_path / "mine.npz")


def test_list_shows_the_shipped_recipes_with_a_line_each(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "magnitude_qat" in out and "The demo: a dense spiking CNN" in out
    assert "weight_sharing" in out and "k-means weight sharing" in out


def test_train_says_where_it_resumes(tmp_path, capsys):
    assert main([*TRAIN, "--out", str(tmp_path / "t")]) == 0
    capsys.readouterr()
    argv = [*TRAIN, "--out", str(tmp_path / "t")]
    argv[argv.index("--epochs") + 1] = "2"
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"resuming {tmp_path / 't'} from its checkpoint" in err and "epoch 1 of 2" in err


def test_run_says_where_it_resumes(tmp_path, folders, capsys):
    out = tmp_path / "a"
    shutil.copytree(folders / "a", out)
    for name in ("metrics.json", "artifact"):  # stage 2 killed after its epoch-1 checkpoint
        shutil.rmtree(out / "stages/1-prune" / name) if name == "artifact" else (
            out / "stages/1-prune" / name).unlink()
    assert main(["run", str(folders / "tiny.yaml"), "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"resuming the run in {out}" in err
    assert f"stage 2/2 'prune': resuming from {out / 'stages/1-prune/checkpoint.json'}" in err
    assert "epoch 1 of 1 done, step 1" in err


def test_tables_fit_a_100_column_terminal(folders, monkeypatch, capsys):
    runs = {name: json.loads((folders / f"a/stages/{name}/metrics.json").read_text())
            for name in ("0-dense", "1-prune")}
    buf = io.StringIO()
    console = Console(file=buf, width=100)
    print_comparison(runs, "a 14-column table", console=console)
    print_metrics(runs["1-prune"], "one stage", console=console)
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "accuracy" in text and "1-prune" in text and "left out to fit 100 columns" in text
    monkeypatch.setenv("COLUMNS", "100")  # what a 100-column terminal reports
    assert main(["run", str(folders / "tiny.yaml"), "--out", str(folders / "a"), "--quiet"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("wrote")]
    assert max(len(line) for line in table) <= 100 and "bytes on disk" in "".join(table)


def test_a_corrected_recipe_replaces_a_failed_start(tmp_path, monkeypatch, capsys):
    bad, good = tmp_path / "bad.yaml", tmp_path / "good.yaml"
    bad.write_text(TINY)
    good.write_text(TINY.replace("lr: 1.0e-2", "lr: 5.0e-3"))
    fit = Trainer.fit

    def diverge(self, resume=True):  # the first stage checkpoints once, then diverges
        self._save()
        raise ValueError("stage 'dense': loss is nan at epoch 1, step 1: training diverged")

    monkeypatch.setattr(Trainer, "fit", diverge)
    assert main(["run", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert (tmp_path / "o/stages/0-dense/checkpoint.json").is_file()
    monkeypatch.setattr(Trainer, "fit", fit)
    assert main(["run", str(good), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert "replacing the unfinished start of another recipe" in capsys.readouterr().err
    dense = json.loads((tmp_path / "o/stages/0-dense/metrics.json").read_text())
    assert dense["train"]["resumed"] is False  # the stale checkpoint was not resumed
    assert main(["run", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2  # finished
    assert "holds a run of a different recipe" in capsys.readouterr().err


def test_the_effective_recipe_names_the_model_an_init_holds(tmp_path, capsys):
    art = tmp_path / "art"
    save(build("conv_net", in_channels=1, input_size=8, classes=10, widths=[4, 8]), art,
         meta={"T": 2})
    recipe = TINY.replace("conv_net", "conv1d_net").replace(
        "- {name: dense, epochs: 1,", f"- {{name: dense, epochs: 0, init: {art},")
    (tmp_path / "r.yaml").write_text(recipe)
    out = tmp_path / "o"
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(out), "--quiet"]) == 0
    effective = yaml.safe_load((out / stages.EFFECTIVE).read_text())
    assert effective["model"]["name"] == "conv_net" and effective["model"]["widths"] == [4, 8]
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(out), "--quiet"]) == 0  # resumes
    assert f"resuming the run in {out}" in capsys.readouterr().err
