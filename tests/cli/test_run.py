import importlib.resources
import json

import pytest
import yaml

from spikecompress.cli import main
from spikecompress.run.recipe_files import shipped_recipes

TINY = """\
version: 1
model: {name: conv_net, widths: [4, 8]}
data: {name: digits, T: 2, batch_size: 64, limit: 128}
stages:
  - {name: dense, epochs: 1, optimizer: {name: adam, lr: 1.0e-2}}
  - name: prune
    epochs: 1
    methods: [{name: magnitude, sparsity: 0.5}]
"""


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_run_writes_the_run_and_prints_a_summary(recipe_file, tmp_path, capsys):
    out = tmp_path / "runs/a"
    argv = [
        "run",
        str(recipe_file),
        "--out",
        str(out),
        "--set",
        "stages.1.methods.0.sparsity=0.6",
        "--threads",
        "1",
        "--quiet",
    ]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "prune" in stdout and f"wrote {out / 'artifact'}" in stdout
    effective = yaml.safe_load((out / "recipe.effective.yaml").read_text())
    assert effective["stages"][1]["methods"][0]["sparsity"] == 0.6
    for name in (
        "stages/0-dense/checkpoint.json",
        "stages/1-prune/metrics.json",
        "artifact/spec.json",
        "metrics.json",
        "report/report.md",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stage"] == "prune" and metrics["params_nonzero"] < metrics["params"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--set", "stages.0.epochs=abc"], "stages.0.epochs: expected int, got 'abc'"),
        (["--set", "stages.1.methods.0.name=nope"], "stages.1.methods.0.name: unknown method"),
        (["--set", "stages.1.methods.0.amount=1"], "stages.1.methods.0.amount: unknown key"),
        (["--set", "stages.0.optimizer.lr=-1"], "stages.0.optimizer.lr must be > 0"),
        (["--set", "version=2"], "version: recipe version 2 is newer"),
        (["--set", "nothing"], "--set expects path=value"),
        (["--set", "stages.0.init=nowhere"], "stages.0.init: nowhere holds neither"),
        (["--threads", "0"], "threads must be >= 1"),
    ],
)
def test_run_errors_exit_2_with_one_line(recipe_file, tmp_path, capsys, extra, message):
    argv = ["run", str(recipe_file), "--out", str(tmp_path / "out"), "--quiet", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("spikecompress: error:") and err.count("\n") == 1 and message in err


@pytest.mark.parametrize(
    "text,message",
    [
        ("version: 1\nstages: [\n", "invalid YAML (line"),
        (TINY.replace("version: 1", "version: 9"), "version: recipe version 9 is newer"),
        (TINY + "epochs: 3\n", "epochs: unknown key in the recipe"),
        (TINY.replace("magnitude", "magnitudes"), "unknown method 'magnitudes'"),
    ],
)
def test_invalid_recipe_files_exit_2(tmp_path, capsys, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_missing_recipe_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "no_such_recipe"]) == 2
    err = capsys.readouterr().err
    assert "no shipped recipe of that name ([" in err and "'magnitude'" in err
    assert main(["run", "missing.yaml"]) == 2
    assert "recipe file missing.yaml not found" in capsys.readouterr().err


def test_recipes_ship_as_package_data():
    files = {f.name for f in importlib.resources.files("spikecompress.recipes").iterdir()}
    assert {"magnitude_qat.yaml", "magnitude.yaml", "weight_sharing.yaml"} <= files
    assert set(shipped_recipes()) == {f[:-5] for f in files if f.endswith(".yaml")}


def _tiny_overrides(d: dict) -> list[str]:
    """One short epoch per training stage, tiny widths, <= 2 time steps, 64 training samples."""
    sets = ["data.limit=64", "data.T=2"]
    if "widths" in d["model"]:
        sets.append(f"model.widths={[4] * len(d['model']['widths'])}")
    for i, stage in enumerate(d["stages"]):
        sets.append(f"stages.{i}.epochs={min(stage['epochs'], 1)}")
        if stage.get("T"):
            sets.append(f"stages.{i}.T={min(stage['T'], 2)}")
    return sets


# The default tier (under 5 minutes on 2 cores) runs the demo's recipe and the two seed papers'
# pipelines by name; every shipped recipe runs in the slow tier (make test-all), and every one
# is parsed and round-tripped in the default tier (tests/test_recipe.py).
DEFAULT_TIER = {"magnitude_qat", "sca", "spatio_temporal"}


@pytest.mark.parametrize("name", [n if n in DEFAULT_TIER else
                                  pytest.param(n, marks=pytest.mark.slow)
                                  for n in shipped_recipes()])
def test_every_shipped_recipe_runs_by_name(name, tmp_path, capsys, monkeypatch):
    text = importlib.resources.files("spikecompress.recipes").joinpath(f"{name}.yaml").read_text()
    d = yaml.safe_load(text)
    monkeypatch.chdir(tmp_path)
    argv = ["run", name, "--quiet"]
    for s in _tiny_overrides(d):
        argv += ["--set", s]
    assert main(argv) == 0, capsys.readouterr().err
    out = tmp_path / "runs" / name  # the default --out
    assert (out / "artifact/spec.json").is_file() and (out / "report/report.md").is_file()
    assert len(list((out / "stages").iterdir())) == len(d["stages"])
