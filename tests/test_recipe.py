import json

import pytest
import torch
import yaml

from spikecompress.compress import METHODS
from spikecompress.compress.prune.magnitude import MagnitudePruning
from spikecompress.compress.session import Session
from spikecompress.data import DataConfig
from spikecompress.export import load
from spikecompress.run.recipe import OptimizerConfig, Recipe, Stage
from spikecompress.run.recipe_files import apply_overrides, dump_yaml, load_recipe, shipped_recipes
from spikecompress.run.stages import run_recipe
from spikecompress.train import load_checkpoint

ISSUE_EXAMPLE = """
version: 1
model: {name: conv_net, widths: [16, 32, 64]}
data: {name: digits, T: 4, batch_size: 64}
stages:
  - name: dense
    epochs: 10
    optimizer: {name: adam, lr: 1.0e-3}
  - name: compress
    epochs: 5
    methods:
      - {name: magnitude, sparsity: 0.8, schedule: cubic, include: ['features\\..*']}
"""


def _tiny(prune_epochs=1) -> dict:
    return {
        "version": 1,
        "model": {"name": "conv_net", "widths": [4, 8]},
        "data": {"name": "digits", "T": 2, "batch_size": 64, "limit": 128},
        "stages": [
            {"name": "dense", "epochs": 1, "optimizer": {"name": "adam", "lr": 1e-2}},
            {
                "name": "prune",
                "epochs": prune_epochs,
                "optimizer": {"lr": 1e-2},
                "methods": [{"name": "magnitude", "sparsity": 0.5, "schedule": "cubic"}],
            },
        ],
    }


def test_yaml_maps_onto_dataclasses_and_round_trips(tmp_path):
    file = tmp_path / "r.yaml"
    file.write_text(ISSUE_EXAMPLE)
    recipe = load_recipe(file)
    assert recipe.data == DataConfig(name="digits", T=4, batch_size=64)
    assert recipe.stages[0].optimizer == OptimizerConfig(name="adam", lr=1e-3)
    spec = recipe.stages[1].methods[0]
    assert spec["include"] == ["features\\..*"] and spec["scope"] == "global"  # defaults resolved
    assert isinstance(recipe.stages[1].build_methods()[0], MagnitudePruning)
    text = dump_yaml(recipe)
    again = Recipe.from_dict(yaml.safe_load(text))
    assert again == recipe and dump_yaml(again) == text


@pytest.mark.parametrize("name", shipped_recipes())
def test_shipped_recipes_round_trip(name):
    recipe = load_recipe(name)
    assert Recipe.from_dict(yaml.safe_load(dump_yaml(recipe))) == recipe


def test_dataclasses_build_directly_and_validate():
    stage = Stage(name="s", epochs=0, methods=[{"name": "magnitude"}])
    assert stage.methods[0]["sparsity"] == 0.8
    recipe = Recipe(1, {"name": "mlp"}, DataConfig("digits"), [stage])
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        Stage(name="s", epochs=-1)


@pytest.mark.parametrize(
    "override,message",
    [
        ("stages.0.epochs=abc", "stages.0.epochs: expected int, got 'abc'"),
        ("stages.0.epochs=1.5", "stages.0.epochs: expected int, got 1.5"),
        ("stages.0.epochs=-1", "stages.0.epochs must be >= 0"),
        ("stages.0.optimizer.lr=0", "stages.0.optimizer.lr must be > 0"),
        ("stages.0.optimizer.lr=fast", "stages.0.optimizer.lr: expected float, got 'fast'"),
        ("stages.0.optimizer.name=adamw", "stages.0.optimizer.name must be one of"),
        ("stages.0.optimizer.betas=1", "stages.0.optimizer.betas: unknown key"),
        ("stages.0.loss=mse", "stages.0.loss must be one of"),
        ("stages.0.name=a/b", "stages.0.name must be"),
        ("stages.1.name=dense", "stages.1.name: 'dense' is used twice"),
        ("stages.0.init=3", "stages.0.init: expected str | null, got 3"),
        ("stages.2.epochs=1", "stages.2: no item '2' (the list has 2 items)"),
        ("stages.x.epochs=1", "stages.x: no item 'x'"),
        ("stages.1.methods.0.sparsity=1.5", "stages.1.methods.0.sparsity must be in [0, 1)"),
        ("stages.1.methods.0.sparsity=lots", "stages.1.methods.0.sparsity: expected float"),
        ("stages.1.methods.0.include=conv", "stages.1.methods.0.include: expected list[str]"),
        ("stages.1.methods.0.foo=1", "stages.1.methods.0.foo: unknown key"),
        ("stages.1.methods.0.name=nope", "stages.1.methods.0.name: unknown method 'nope'"),
        ("stages.1.methods.1.sparsity=0.5", "stages.1.methods.1: no item '1'"),
        ("data.T=0", "data.T must be an integer >= 1"),
        ("data.T=two", "data.T: expected int, got 'two'"),
        ("data.name=imagenet", "data.name: unknown dataset"),
        ("data.colour=1", "data.colour: unknown key"),
        ("model.widths=[4, x]", "model.widths.1: expected int, got 'x'"),
        ("model.depth=3", "model.depth: unknown key in model"),
        ("model.name=transformer", "model.name: unknown model 'transformer'"),
        ("seed=-1", "seed must be >= 0"),
        ("seed=yes", "seed: expected int, got True"),
        ("trainer.epochs=1", "trainer: unknown key in the recipe"),
        ("version=2", "version: recipe version 2 is newer"),
        ("stages.0.epochs", "--set expects path=value"),
        ("stages.0.epochs=[1", "stages.0.epochs: cannot parse"),
    ],
)
def test_every_override_error_names_the_field(override, message):
    with pytest.raises(ValueError) as info:
        Recipe.from_dict(apply_overrides(_tiny(), [override]))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_overrides_are_type_checked_and_applied():
    d = _tiny()
    sets = [
        "stages.1.epochs=3",
        "stages.0.optimizer.lr=1e-3",
        "model.widths=[2, 2]",
        "stages.1.methods.0.exclude=[classifier.*]",
        "data.limit=null",
        "seed=7",
        "stages.0.optimizer.weight_decay=0",
    ]
    recipe = Recipe.from_dict(apply_overrides(d, sets))
    assert d == _tiny()  # the input is not modified
    assert recipe.stages[1].epochs == 3 and recipe.stages[0].optimizer.lr == 1e-3
    assert recipe.model["widths"] == [2, 2] and recipe.data.limit is None and recipe.seed == 7
    assert recipe.stages[1].methods[0]["exclude"] == ["classifier.*"]
    assert isinstance(recipe.stages[0].optimizer.weight_decay, float)


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda d: d["stages"][1]["methods"][0].update(name="pruning"),
            "stages.1.methods.0.name: unknown method 'pruning'; known: [",
        ),
        (
            lambda d: d["stages"][1]["methods"][0].update(amount=0.5),
            "stages.1.methods.0.amount: unknown key in stages.1.methods.0; known: ['begin'",
        ),
        (
            lambda d: d["stages"][1]["methods"][0].update(scope="net"),
            "stages.1.methods.0.scope must be 'global' or 'layer'",
        ),
        (
            lambda d: d["stages"][1]["methods"].append("magnitude"),
            "stages.1.methods.1: expected a mapping",
        ),
        (lambda d: d["stages"][0].pop("epochs"), "stages.0.epochs: missing"),
        (lambda d: d["stages"][1].update(T=0), "stages.1.T must be an integer >= 1 or null"),
        (lambda d: d["stages"][1].update(T=1.5), "stages.1.T: expected int | null, got 1.5"),
        (lambda d: d["stages"][1].update(train_on="test"), "stages.1.train_on must be one of"),
        (lambda d: d["stages"][1].update(train_on="holdout"),
         "stages.1.train_on: holdout needs data.holdout > 0"),
        (lambda d: d["data"].update(holdout=1.0), "data.holdout must be a fraction in [0, 1)"),
        (lambda d: d.pop("data"), "data: missing"),
        (lambda d: d["stages"].clear(), "stages: a recipe needs at least one stage"),
        (lambda d: d.update(stages={"name": "x"}), "stages: expected list[mapping]"),
        (lambda d: d.pop("version"), "version: missing"),
        (lambda d: d.update(version=2), "version: recipe version 2 is newer"),
        (lambda d: d.update(version="1"), "version: expected int"),
        (lambda d: d.update(version=0), "version must be 1"),
    ],
)
def test_invalid_recipes_give_one_line_errors(edit, message):
    d = _tiny()
    edit(d)
    with pytest.raises(ValueError) as info:
        Recipe.from_dict(d)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_newer_version_is_reported_before_unknown_keys(tmp_path):
    file = tmp_path / "future.yaml"
    file.write_text("version: 3\nmodel: {name: conv_net}\npipeline: []\n")
    with pytest.raises(ValueError, match="version: recipe version 3 is newer"):
        load_recipe(file, overrides=["pipeline.0=1"])


def test_bad_yaml_and_missing_files_name_the_file(tmp_path):
    file = tmp_path / "bad.yaml"
    file.write_text("version: 1\nstages: [\n")
    with pytest.raises(ValueError, match=r"bad.yaml: invalid YAML \(line"):
        load_recipe(file)
    file.write_text("- 1\n")
    with pytest.raises(ValueError, match="a recipe must be a YAML mapping"):
        load_recipe(file)
    with pytest.raises(FileNotFoundError, match="recipe file .*nope.yaml not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(FileNotFoundError, match="no recipe file 'nope' and no shipped recipe"):
        load_recipe("nope")


def _state(path):
    return load(path).state_dict()


def test_run_writes_every_output_and_skips_finished_stages(tmp_path):
    recipe = Recipe.from_dict(_tiny())
    out = tmp_path / "run"
    result = run_recipe(recipe, out, verbose=False)
    assert load_recipe(out / "recipe.effective.yaml") == recipe
    for i, name in enumerate(["dense", "prune"]):
        stage = out / "stages" / f"{i}-{name}"
        assert (stage / "checkpoint.json").is_file() and (stage / "artifact/spec.json").is_file()
        metrics = json.loads((stage / "metrics.json").read_text())
        assert metrics["stage"] == name and metrics["train"]["epochs"] == 1
        assert metrics == result["stages"][name]
    dense, pruned = result["stages"]["dense"], result["stages"]["prune"]
    assert pruned["params_nonzero"] < dense["params_nonzero"] == dense["params"]
    assert json.loads((out / "metrics.json").read_text()) == pruned
    assert (out / "artifact/model.safetensors").read_bytes() == (
        out / "stages/1-prune/artifact/model.safetensors"
    ).read_bytes()
    assert (out / "report/report.md").is_file() and (out / "report/report.html").is_file()
    assert "| prune |" in (out / "report/report.md").read_text()

    before = (out / "stages/0-dense/metrics.json").stat().st_mtime_ns
    again = run_recipe(recipe, out, verbose=False)  # nothing left to do: every stage is skipped
    assert again["stages"] == result["stages"]
    assert (out / "stages/0-dense/metrics.json").stat().st_mtime_ns == before
    other = Recipe.from_dict(apply_overrides(_tiny(), ["stages.1.epochs=2"]))
    with pytest.raises(ValueError, match="holds a run of a different recipe"):
        run_recipe(other, out, verbose=False)


def test_each_stage_runs_and_records_its_own_T(tmp_path):
    d = _tiny(prune_epochs=0)
    d["data"].update(name="event_digits", limit=64)
    d["model"]["widths"] = [2, 2]
    d["stages"][0]["T"] = 3
    d["stages"][1].update(T=1, methods=[])
    result = run_recipe(Recipe.from_dict(d), tmp_path / "run", verbose=False)
    for i, (name, T) in enumerate([("dense", 3), ("prune", 1)]):
        stage = tmp_path / f"run/stages/{i}-{name}"
        meta = json.loads((stage / "artifact/spec.json").read_text())["meta"]
        assert meta["T"] == T and meta["data"]["T"] == T
        assert result["stages"][name]["time_steps"] == T
    # the T = 1 stage starts from the T = 3 stage's model (0 epochs: the same weights)
    assert _equal(_state(tmp_path / "run/stages/0-dense/artifact"),
                  _state(tmp_path / "run/stages/1-prune/artifact"))
    sops = [result["stages"][n]["sops_per_sample"] for n in ("dense", "prune")]
    assert sops[1] < sops[0]


def test_a_stage_can_train_on_the_held_out_samples_only(tmp_path):
    d = _tiny(prune_epochs=1)
    d["data"]["holdout"] = 0.25  # 128 samples: 96 to train (2 batches), 32 held out (1 batch)
    d["stages"][1].update(train_on="holdout", methods=[])
    run_recipe(Recipe.from_dict(d), tmp_path / "run", verbose=False)
    steps = [load_checkpoint(tmp_path / f"run/stages/{i}-{n}")[1]["step"]
             for i, n in enumerate(["dense", "prune"])]
    assert steps == [2, 1]


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# Knobs that make a method's state change within the 4 steps of the killed stage. Every registered
# method is run (with its defaults where it is not listed), so a new method is covered by default.
FAST = {
    "magnitude": {"sparsity": 0.5, "schedule": "cubic"},
    "weight_sharing": {"clusters": 4},
    "admm": {"sparsity": 0.5, "admm_until": 0.5, "update_every": 1},
    "admm_quant": {"weight_bits": 2, "admm_until": 0.5, "update_every": 1},
    "uniform_quant": {"weight_bits": 4, "scale": "lsq", "membrane_bits": 4},
    "esl": {"sparsity": 0.5, "rewire": {"update_every": 1}},
    "gradr": {"sparsity": 0.9},
    "stds": {"sparsity": 0.5},
    "lats": {"sparsity": 0.5},
    "sops_aware": {"search": 0.5},
    "sca": {"channel_sparsity": 0.5},
    "pca_width": {"collect": 0.75},
    "slimming": {"penalty": 1.0e-2, "channel_sparsity": 0.5},
    "l1_filter": {"channel_sparsity": 0.5, "scope": "global"},
    "sdsnn": {"channel_sparsity": 0.5, "update_every": 1},
    "ssnn": {"steps": [1], "transformer": "learnable", "T": 2},
    "seenn": {"mode": "policy"},
    "lite_snn": {"search": 0.75},
}
CASES = {name: [{"name": name, **FAST.get(name, {})}] for name in METHODS} | {
    "magnitude+uniform_quant": [{"name": "magnitude", "sparsity": 0.5},
                                {"name": "uniform_quant", "weight_bits": 4}],
    "sca+corrections": [{"name": "sca", "channel_sparsity": 0.5, "corrections": {
        "after_bn": True, "dense_regrow": True, "gradual": True}}],
    "stds+D": [{"name": "stds", "D": 0.05}],
    "kl_kd+gradr": [{"name": "kl_kd"}, {"name": "gradr", "sparsity": 0.9}],
    "kdsnn+uniform_quant": [{"name": "kdsnn"}, {"name": "uniform_quant", "weight_bits": 4}],
    "activity+magnitude": [{"name": "activity", "weighting": "fanout"},
                           {"name": "magnitude", "sparsity": 0.5, "schedule": "cubic"}],
}
# The default tier (under 5 minutes on 2 cores) resumes one method of each kind of state:
# parametrizations (a composition), dual variables, activity sums and gates, covariances,
# rewiring with its RNG, a policy and its rewards, a search, integer training, a calibration
# reservoir, a loss with a pruning method. Every case runs in the slow tier (make test-all).
# a frozen teacher and a loss, or a loss alone: nothing to checkpoint
STATELESS = {"kl_kd", "spike_kd", "bntt_kd", "activity"}
DEFAULT_TIER = {"magnitude+uniform_quant", "admm", "sca+corrections", "pca_width", "esl",
                "seenn", "lite_snn", "istbp", "ttfs", "kl_kd+gradr"}


@pytest.mark.parametrize("methods", [
    m if name in DEFAULT_TIER else pytest.param(m, marks=pytest.mark.slow)
    for name, m in CASES.items()], ids=list(CASES))
def test_killed_stage_resumes_with_its_method_state_to_identical_weights(
    tmp_path, monkeypatch, methods
):
    d = _tiny(prune_epochs=2)  # 2 steps per epoch: 4 steps in the compression stage
    d["stages"][1]["methods"] = methods
    if methods[0]["name"] in ("ann_conversion", "tsc", "ttfs"):  # they convert the ANN twin
        d["model"]["spiking"] = False
    for m in methods:  # a model option the method needs (bntt_kd: a BNTT student)
        d["model"].update(getattr(METHODS[m["name"]], "MODEL_OPTIONS", {}))
    recipe = Recipe.from_dict(d)
    ref = run_recipe(recipe, tmp_path / "ref", verbose=False)

    after_step = Session.after_step

    def crash_at_step_3(self, progress, epoch=None):
        after_step(self, progress, epoch)
        if self.ctx.stage == "prune" and self.ctx.step == 3:  # after the epoch-1 checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(Session, "after_step", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, tmp_path / "killed", verbose=False)
    monkeypatch.undo()
    stage = tmp_path / "killed/stages/1-prune"
    assert not (stage / "metrics.json").exists()
    tensors, meta = load_checkpoint(stage)
    assert meta["step"] == 2  # the method state is in the checkpoint: buffers or session fields
    assert {m["name"] for m in methods} <= STATELESS or any(
        ".parametrizations." in k or k.startswith("session.") or k.endswith(".leak")
        or k.startswith("model.ssnn_heads.") or ".weight_quant." in k for k in tensors)
    if methods[0]["name"] == "magnitude":  # the masks in the checkpoint are partly zero already
        masks = [k for k in tensors if k.endswith("parametrizations.weight.0.mask")]
        assert masks and any(not tensors[k].all() for k in masks)

    torch.manual_seed(12345)  # a fresh process: the runner must not depend on the global RNG
    dense_done = (tmp_path / "killed/stages/0-dense/metrics.json").stat().st_mtime_ns
    resumed = run_recipe(recipe, tmp_path / "killed", verbose=False)
    assert resumed["stages"]["prune"]["train"]["resumed"]
    assert (tmp_path / "killed/stages/0-dense/metrics.json").stat().st_mtime_ns == dense_done
    want, got = _state(tmp_path / "ref/artifact"), _state(tmp_path / "killed/artifact")
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    for key in ("params_nonzero", "accuracy", "size_bytes"):
        assert resumed["metrics"][key] == ref["metrics"][key], key


def test_stage_init_starts_from_an_artifact_or_a_checkpoint(tmp_path):
    first = run_recipe(Recipe.from_dict(_tiny()), tmp_path / "a", verbose=False)
    ckpt = tmp_path / "ckpt"  # a run directory holding only the dense stage's checkpoint
    ckpt.mkdir()
    for f in (tmp_path / "a/stages/0-dense").glob("c*"):
        (ckpt / f.name).write_bytes(f.read_bytes())
    for init, source in [(tmp_path / "a/stages/1-prune", "prune"), (ckpt, "dense")]:
        d = _tiny()
        d["stages"] = [{"name": "tune", "epochs": 0, "init": str(init)}]
        result = run_recipe(Recipe.from_dict(d), tmp_path / f"from-{init.name}", verbose=False)
        assert result["metrics"]["params_nonzero"] == first["stages"][source]["params_nonzero"]
        assert result["metrics"]["accuracy"] == first["stages"][source]["accuracy"]
    d = _tiny()
    d["stages"][0]["init"] = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="stages.0.init: .*missing holds neither"):
        run_recipe(Recipe.from_dict(d), tmp_path / "b", verbose=False)


def test_example_recipes_validate():
    from pathlib import Path

    examples = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        recipe = load_recipe(path)
        assert recipe.stages and dump_yaml(recipe)


def test_a_student_stage_distils_from_an_earlier_stage_of_another_width(tmp_path):
    d = _tiny()
    d["model"]["widths"] = [8, 16]
    d["stages"] = [
        {"name": "teacher", "epochs": 1, "optimizer": {"lr": 1e-2}},
        {"name": "ann", "epochs": 1, "T": 1, "model": {"spiking": False}},
        {"name": "student", "epochs": 1, "model": {"widths": [4, 8]},
         "methods": [{"name": "kl_kd", "teacher": "stage:teacher"}]},
        {"name": "from_ann", "epochs": 1, "model": {"widths": [4, 8]},
         "methods": [{"name": "kdsnn", "teacher": "stage:ann"}]},
    ]
    recipe = Recipe.from_dict(d)
    assert recipe.stages[2].build_methods(lambda name: f"/runs/{name}")[0].teacher == \
        "/runs/teacher"
    result = run_recipe(recipe, tmp_path / "kd", verbose=False)
    assert _state(tmp_path / "kd/artifact")["features.0.conv.weight"].shape[0] == 4
    assert _state(tmp_path / "kd/stages/1-ann/artifact")["features.0.conv.weight"].shape[0] == 8
    assert result["stages"]["student"]["params"] < result["stages"]["teacher"]["params"]


@pytest.mark.parametrize("change, message", [
    (lambda d: d["stages"][0].update(methods=[{"name": "kl_kd", "teacher": "stage:prune"}]),
     r"stages.0.methods.0.teacher: 'stage:prune' names no earlier stage \(earlier: \[\]\)"),
    (lambda d: d["stages"][1].update(model={"widths": [4]}, init="x"),
     "stages.1.model: a stage starts from a new model or from its init, not both"),
    (lambda d: d["stages"][1].update(model={"depth": 3}), "stages.1.model.depth: unknown key"),
])
def test_bad_stage_models_and_teacher_references_are_named(change, message):
    d = _tiny()
    change(d)
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict(d)


def test_a_missing_teacher_is_refused_before_any_training(tmp_path):
    d = _tiny()
    d["stages"][1]["methods"] = [{"name": "kl_kd", "teacher": str(tmp_path / "gone")}]
    with pytest.raises(FileNotFoundError, match="stages.1.methods.0.teacher: .*gone"):
        run_recipe(Recipe.from_dict(d), tmp_path / "r", verbose=False)
    assert not (tmp_path / "r/stages").exists()
