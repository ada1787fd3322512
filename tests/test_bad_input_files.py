"""Every bad input is a one-line error naming the field or the file, raised before any work.

One test per class of bad input: data files (values, labels, shapes), T and batch sizes against
the machine's memory, optimizer numbers and devices, recipes (duplicate keys, a stage's init),
checkpoint pointers and artifact spec.json files. ``test_fuzz_inputs.py`` mutates the same inputs
at random.
"""

import json

import numpy as np
import pytest
import torch

import spikecompress.data.api as data_api
from spikecompress.data import DataConfig, DataError, load_data, npz_arrays
from spikecompress.data.common import Arrays, check_arrays
from spikecompress.data.embedded import digits_arrays, digits_images, mnist1d_arrays
from spikecompress.data.events import generate_events, to_frames
from spikecompress.export import ArtifactError, load, save
from spikecompress.export.artifact import SPEC_FILE
from spikecompress.models import build
from spikecompress.run.recipe import OptimizerConfig, Recipe
from spikecompress.run.recipe_files import apply_overrides, check_init, load_recipe, parse_yaml
from spikecompress.train import CheckpointError, TrainConfig
from spikecompress.train import checkpoint as ckpt

GIB = 2**30


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg.strip(), msg
    return msg


# -- data files ----------------------------------------------------------------------------------
def _npz(tmp_path, name="d.npz", **arrays):
    rng = np.random.default_rng(0)
    base = {"x": rng.random((40, 3)).astype(np.float32), "y": np.arange(40) % 4}
    base.update(arrays)
    path = tmp_path / name
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


@pytest.mark.parametrize("key,value,message", [
    ("x", np.full((40, 3), np.nan), r"'x' holds 120 NaN"),
    ("x", np.where(np.eye(40, 3) > 0, np.inf, 0.0), r"'x' holds 3 .*inf"),
    ("x", np.full((40, 3), 1e30), r"'x' holds values up to 1e\+30.*data.max_abs"),
    ("x", np.full((40, 3), -1e7, dtype=np.float64), r"beyond data.max_abs 1e\+06"),
    ("x", np.zeros(40), r"'x' must be \[N, features...\]"),
    ("x", np.zeros((40, 0)), r"'x' has no values per sample"),
    ("x", np.array(3.0), r"'x' must be \[N, features...\]"),
    ("x", np.array(["a"] * 40), r"'x' must hold numbers"),
    ("x", np.zeros((0, 3)), r"'x' holds no samples"),
    ("y", np.arange(39) % 4, r"'x' has 40 samples but 'y' has 39"),
    ("y", np.zeros(40), r"'y' must be 1-D non-negative integer labels"),
    ("y", -(np.arange(40) % 4), r"'y' must be 1-D non-negative integer labels"),
    ("y", np.where(np.arange(40) == 0, 10**9, np.arange(40) % 4),
     r"'y' labels imply 1000000001 classes.*\[4, 5, 6, ...\] never occur"),
    ("y", np.arange(40) % 4 * 2, r"classes \[1, 3, 5\] never occur"),
    ("y", (np.arange(40) % 4).reshape(4, 10), r"'y' must be 1-D"),
    ("y_test", np.arange(5), r"'y_test' without 'x_test'"),
    ("x_val", np.zeros((5, 3)), r"unexpected array 'x_val'"),
])
def test_npz_bad_values_labels_and_shapes_name_the_file_and_array(tmp_path, key, value, message):
    path = _npz(tmp_path, **{key: value})
    with pytest.raises(DataError, match=message) as e:
        npz_arrays(path)
    assert str(path) in _one_line(e)


def test_npz_test_split_labels_must_be_training_labels_and_shapes_agree(tmp_path):
    x = np.random.default_rng(0).random((40, 3))
    path = _npz(tmp_path, x_test=x[:20], y_test=np.arange(20) % 4 + np.arange(20) // 19 * 47)
    with pytest.raises(DataError, match=r"'y_test' holds labels \[50\] that 'y' never has"):
        npz_arrays(path)
    path = _npz(tmp_path, x_test=x[:20, :2], y_test=np.arange(20) % 4)
    with pytest.raises(DataError, match=r"'x_test' samples are \(2,\), 'x' samples \(3,\)"):
        npz_arrays(path)
    path = _npz(tmp_path, x_test=np.full((20, 3), np.nan), y_test=np.arange(20) % 4)
    with pytest.raises(DataError, match=r"'x_test' holds 60 NaN"):
        npz_arrays(path)


def test_max_abs_is_a_data_setting_that_lets_big_values_through(tmp_path):
    path = _npz(tmp_path, x=np.full((40, 3), 5e6))
    with pytest.raises(DataError, match="data.max_abs"):
        load_data(DataConfig("npz", root=str(path)))
    data = load_data(DataConfig("npz", root=str(path), max_abs=1e7))
    assert float(data.train.x.max()) == 5e6
    for bad in (0, -1.0, float("nan"), "big", True):
        with pytest.raises(ValueError, match="data.max_abs"):
            DataConfig("npz", max_abs=bad)


def test_good_npz_still_loads_with_uint8_and_int32(tmp_path):
    x = (np.arange(120).reshape(40, 3) % 256).astype(np.uint8)
    path = _npz(tmp_path, x=x, y=(np.arange(40) % 4).astype(np.int32))
    arrays = npz_arrays(path)
    assert arrays.classes == 4 and arrays.x_train.dtype == np.float32


def test_embedded_and_generated_sets_pass_the_same_checks(tmp_path):
    arrays = digits_arrays(0)
    check_arrays(arrays, "digits", 1e6)  # nothing to refuse: the checks are for user files
    check_arrays(mnist1d_arrays(tmp_path, num_samples=300), "mnist1d", 1e6)
    images, labels = digits_images()
    frames = to_frames(generate_events(images[:30], seed=0), T=4).astype(np.float32)
    check_arrays(Arrays(frames[:20], labels[:20], frames[20:], labels[20:30], 10), "events", 1e6)
    bad = Arrays(arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test + 10, 10)
    with pytest.raises(DataError, match="'y_test' holds labels"):
        check_arrays(bad, "digits", 1e6)


# -- T, batch sizes and memory -------------------------------------------------------------------
@pytest.fixture
def sixteen_gib(monkeypatch):
    monkeypatch.setattr(data_api, "physical_memory", lambda: 16 * GIB)


@pytest.mark.parametrize("name", ["digits", "event_digits", "mnist1d", "cifar10"])
def test_a_huge_T_is_refused_before_any_allocation(sixteen_gib, name, monkeypatch):
    def boom(cfg):
        raise AssertionError("loaded data before checking T")

    monkeypatch.setitem(data_api.DATASETS, name, boom)
    cfg = DataConfig(name, T=100_000, encoding="direct")
    with pytest.raises(DataError, match=r"data.T 100000: .* GiB.* lower data.T") as e:
        data_api.check_data(cfg)
    assert "16 GiB" in _one_line(e)
    with pytest.raises(DataError, match=r"data.T 100000"):
        load_data(cfg)


def test_npz_memory_estimate_reads_only_the_header(sixteen_gib, tmp_path):
    path = _npz(tmp_path, x=np.zeros((40, 3, 32, 32), np.float32))
    data_api.check_data(DataConfig("npz", root=str(path), T=16, batch_size=40))
    with pytest.raises(DataError, match=r"data.T 20000: .*lower data.T \(--T\) or data.batch"):
        data_api.check_data(DataConfig("npz", root=str(path), T=20_000))
    assert len(load_data(DataConfig("npz", root=str(path), T=4)).train) == 1


def test_sane_T_passes_and_unknown_memory_skips_the_estimate(monkeypatch):
    data_api.check_data(DataConfig("digits", T=64))
    monkeypatch.setattr(data_api, "physical_memory", lambda: None)
    data_api.check_data(DataConfig("digits", T=10**6))


@pytest.mark.parametrize("field,value", [
    ("T", 0), ("T", 2.0), ("T", "4"), ("T", 2**31), ("batch_size", 0), ("batch_size", True),
    ("batch_size", 2**31), ("limit", 0), ("limit", 1.5), ("seed", -1), ("seed", 2**32),
])
def test_data_sizes_are_ints_in_range(field, value):
    with pytest.raises(ValueError, match=f"data.{field}"):
        DataConfig("digits", **{field: value})


# -- optimizer numbers and devices ---------------------------------------------------------------
@pytest.mark.parametrize("field,value,message", [
    ("lr", 1e39, r"lr must be > 0 and <= 1000 \(a finite number: .* diverge\), got 1e\+39"),
    ("lr", 3e38, r"lr must be"), ("lr", 1e300, r"lr must be"), ("lr", float("nan"), r"lr must"),
    ("lr", float("inf"), r"lr must"), ("lr", 0.0, r"lr must"), ("lr", "0.1", r"lr must"),
    ("weight_decay", 1e39, r"weight_decay must be >= 0 and <= 1000"),
    ("weight_decay", float("nan"), r"weight_decay"), ("weight_decay", -1.0, r"weight_decay"),
    ("momentum", 1.0, r"momentum must be in \[0, 1\)"),
    ("momentum", float("nan"), r"momentum"), ("momentum", -0.5, r"momentum"),
    ("epochs", 1.5, r"epochs must be >= 0 \(an integer\)"), ("epochs", -1, r"epochs"),
    ("seed", 2**64, r"seed must be >= 0 and <= 4294967295"),
    ("checkpoint_every", "x", r"checkpoint_every"), ("amp", "yes", r"amp must be true or false"),
    ("device", "cuda:abc", r"device must be 'cpu' or 'cuda\[:N\]', got 'cuda:abc'"),
    ("device", "cuda:-1", r"device"), ("device", "CUDA", r"device"), ("device", 0, r"device"),
])
def test_train_config_numbers_and_device_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message) as e:
        TrainConfig(**{field: value})
    _one_line(e)


def test_cuda_device_strings_parse_even_without_cuda():
    assert TrainConfig(device="cuda:1").device == "cuda:1"


@pytest.mark.parametrize("value,message", [
    (1e39, " must be > 0 and <= 1000"), (3e38, " must be > 0"), (1e300, " must be > 0"),
    ("1e39", " must be > 0"), ("inf", ": expected a finite float, got inf"),
    (float("nan"), ": expected a finite float"), (10**400, ": expected a finite float"),
])
def test_recipe_learning_rate_overflow_is_a_one_line_error(value, message):
    d = {"version": 1, "model": {"name": "mlp"}, "data": {"name": "digits"},
         "stages": [{"name": "a", "epochs": 1, "optimizer": {"lr": value}}]}
    with pytest.raises(ValueError, match=rf"^stages.0.optimizer.lr{message}"):
        Recipe.from_dict(d)
    with pytest.raises(ValueError, match="momentum"):
        OptimizerConfig(momentum=float("nan"))


# -- recipes -------------------------------------------------------------------------------------
DUP = """version: 1
model: {name: mlp}
data: {name: digits, T: 4}
stages:
  - name: a
    epochs: 1
    epochs: 3
"""


def test_duplicate_yaml_keys_name_the_line_and_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"r.yaml: invalid YAML \(line 7\): duplicate key"):
        parse_yaml(DUP, "r.yaml")
    file = tmp_path / "r.yaml"
    file.write_text(DUP.replace("T: 4}", "T: 4, T: 8}").replace("    epochs: 3\n", ""))
    with pytest.raises(ValueError, match=rf"{file}: invalid YAML \(line 3\): duplicate key 'T'"):
        load_recipe(file)
    merged = "base: &b {x: 1}\nversion: 1\nother: {<<: *b, x: 2}\n"
    assert parse_yaml(merged, "m")["other"] == {"x": 2}  # a merge key's override is no duplicate


def test_duplicate_keys_and_paths_in_set_overrides():
    d = parse_yaml(DUP.replace("    epochs: 3\n", ""), "r")
    with pytest.raises(ValueError, match=r"stages.0.optimizer: cannot parse .*duplicate key 'lr'"):
        apply_overrides(d, ["stages.0.optimizer={lr: 0.1, lr: 0.2}"])
    with pytest.raises(ValueError, match=r"--set stages.0.epochs is given twice"):
        apply_overrides(d, ["stages.0.epochs=2", "stages.0.epochs=3"])


def test_yaml_bombs_deep_nesting_odd_keys_and_binary_files(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcde", "bcdef", strict=True))
    with pytest.raises(ValueError, match=r"bomb.yaml: invalid YAML: more than 100000 values"):
        parse_yaml(bomb, "bomb.yaml")
    with pytest.raises(ValueError, match=r"deep.yaml: invalid YAML: nested too deeply"):
        parse_yaml("a: " + "[" * 5000 + "]" * 5000, "deep.yaml")
    with pytest.raises(ValueError, match=r"^'a\\nb': unknown key in the recipe") as e:
        Recipe.from_dict({"version": 1, "a\nb": 1})
    _one_line(e)
    with pytest.raises(ValueError, match="--set expects path=value"):
        apply_overrides({"version": 1}, ["a\nb=1"])
    file = tmp_path / "bin.yaml"
    file.write_bytes(b"\xff\xfe\x00version: 1")
    with pytest.raises(ValueError, match=rf"{file}: not a UTF-8 text file"):
        load_recipe(file)


def _small_artifact(path):
    model = build("mlp", in_features=4, classes=3, widths=[5])
    save(model, path, meta={"T": 2})
    return model


def _recipe_with_init(init):
    return Recipe.from_dict({
        "version": 1, "model": {"name": "mlp"}, "data": {"name": "digits"},
        "stages": [{"name": "a", "epochs": 0}, {"name": "b", "epochs": 0, "init": str(init)}],
    })


def test_check_init_refuses_a_missing_or_broken_init_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"stages.1.init: .*missing holds neither"):
        check_init(_recipe_with_init(tmp_path / "missing"), tmp_path / "out")
    _small_artifact(tmp_path / "art")
    check_init(_recipe_with_init(tmp_path / "art"), tmp_path / "out")
    (tmp_path / "art" / "model.safetensors").write_bytes(b"xx")
    with pytest.raises(ArtifactError, match=r"model.safetensors"):
        check_init(_recipe_with_init(tmp_path / "art"), tmp_path / "out")
    bad_ckpt = tmp_path / "ck"
    bad_ckpt.mkdir()
    (bad_ckpt / ckpt.POINTER).write_text('{"tensors": 5}')
    with pytest.raises(CheckpointError, match=r"checkpoint.json: 'tensors' must be"):
        check_init(_recipe_with_init(bad_ckpt), tmp_path / "out")


def test_check_init_accepts_a_folder_an_earlier_stage_of_this_run_writes(tmp_path):
    out = tmp_path / "out"
    check_init(_recipe_with_init(out / "stages" / "0-a"), out)
    check_init(_recipe_with_init(out / "stages" / "0-a" / "artifact"), out)
    with pytest.raises(FileNotFoundError, match="stages.1.init"):
        check_init(_recipe_with_init(out / "stages" / "1-b"), out)  # its own folder: not yet


def test_check_init_skips_a_stage_an_earlier_run_finished(tmp_path):
    out = tmp_path / "out"
    done = out / "stages" / "1-b"
    _small_artifact(done / "artifact")
    (done / "metrics.json").write_text("{}")
    check_init(_recipe_with_init(tmp_path / "gone"), out)


# -- checkpoints ---------------------------------------------------------------------------------
def _checkpoint(run_dir):
    model = build("mlp", in_features=4, classes=3, widths=[5])
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors["rng.cpu"] = torch.get_rng_state()
    meta = {"epoch": 1, "step": 3, "train": TrainConfig().to_dict(), "history": [],
            "optimizer": {"param_groups": [], "scalars": {}}, "grad_scale": None,
            "session": None, "model": model.spec}
    ckpt.save_checkpoint(run_dir, tensors, meta)
    return json.loads((run_dir / ckpt.POINTER).read_text())


@pytest.mark.parametrize("field,value,message", [
    ("tensors", 5, r"'tensors' must be the name of a \.safetensors file"),
    ("tensors", "../x.safetensors", r"'tensors' must be the name"),
    ("epoch", "1", r"'epoch' must be an integer >= 0"), ("step", -3, r"'step' must be"),
    ("step", True, r"'step' must be"), ("history", {}, r"'history' must be a list"),
    ("history", [1], r"'history' must be a list of objects"),
    ("optimizer", [], r"'optimizer' must be an object"),
    ("optimizer", {"param_groups": {}, "scalars": {}}, r"'optimizer.param_groups' must be"),
    ("optimizer", {"param_groups": [], "scalars": {"x": 1}}, r"'optimizer.scalars' key 'x'"),
    ("grad_scale", "big", r"'grad_scale' must be"), ("session", [], r"'session' must be"),
    ("train", None, r"'train' must be an object"), ("model", "mlp", r"'model' must be an object"),
    ("stage", 3, r"'stage' must be a string"),
])
def test_checkpoint_pointer_schema_names_the_file_and_field(tmp_path, field, value, message):
    meta = _checkpoint(tmp_path)
    meta[field] = value
    (tmp_path / ckpt.POINTER).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message) as e:
        ckpt.load_checkpoint(tmp_path)
    assert str(tmp_path / ckpt.POINTER) in _one_line(e)


def test_checkpoint_missing_fields_and_tensor_files(tmp_path):
    meta = _checkpoint(tmp_path)
    (tmp_path / ckpt.POINTER).write_text(json.dumps({k: v for k, v in meta.items() if k != "step"}))
    with pytest.raises(CheckpointError, match=r"checkpoint.json: 'step' missing"):
        ckpt.read_pointer(tmp_path)
    (tmp_path / ckpt.POINTER).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"checkpoint.json: expected a JSON object"):
        ckpt.read_pointer(tmp_path)
    (tmp_path / ckpt.POINTER).write_text(json.dumps(meta))
    tensor_file = tmp_path / meta["tensors"]
    tensor_file.write_bytes(tensor_file.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=rf"corrupt tensor file {tensor_file}"):
        ckpt.load_checkpoint(tmp_path)
    tensor_file.unlink()
    with pytest.raises(CheckpointError, match=rf"names missing {tensor_file}"):
        ckpt.load_checkpoint(tmp_path)


def test_checkpoint_tensor_file_without_rng_state_or_with_bad_optimizer_names(tmp_path):
    meta = _checkpoint(tmp_path)
    ckpt.atomic_save_tensors(tmp_path / meta["tensors"], {"model.w": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"lacks the RNG state 'rng.cpu'"):
        ckpt.load_checkpoint(tmp_path)
    state = {"rng.cpu": torch.get_rng_state(), "opt.x.exp_avg": torch.zeros(2)}
    ckpt.atomic_save_tensors(tmp_path / meta["tensors"], state)
    with pytest.raises(CheckpointError, match=r"tensor 'opt.x.exp_avg' is not opt.<int>.<key>"):
        ckpt.load_checkpoint(tmp_path)


# -- artifacts -----------------------------------------------------------------------------------
def _spec_edit(path, edit):
    doc = json.loads((path / SPEC_FILE).read_text())
    edit(doc)
    (path / SPEC_FILE).write_text(json.dumps(doc))


def _first(doc):
    return doc["tensors"][next(iter(doc["tensors"]))]


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(sha256="abc"), r"'sha256' must be 64 hex digits"),
    (lambda d: d.update(tensor_bytes=-1), r"'tensor_bytes' must be an integer >= 0"),
    (lambda d: d.update(tensor_bytes=True), r"'tensor_bytes'"),
    (lambda d: d.update(library_version=3), r"'library_version' must be a string"),
    (lambda d: d["meta"].update(T=0), r"'meta.T' must be an integer >= 1"),
    (lambda d: d["meta"].update(T="4"), r"'meta.T'"),
    (lambda d: d["model"].pop("name"), r"'model.name' must be a model name"),
    (lambda d: d["model"].update(name="nope"), r"bad model spec .*nope"),
    (lambda d: d["tensors"].update(x=[]), r"'tensors.x' must be an object"),
    (lambda d: _first(d).update(format="zip"), r"'tensors.*format' must be one of"),
    (lambda d: _first(d).update(shape=[True, 2]), r"'tensors.*shape' must be a list of int"),
    (lambda d: _first(d).update(shape=[2**62, 2**62]), r"'tensors.*shape' must be"),
    (lambda d: _first(d).update(dtype="float99"), r"'tensors.*dtype' must be a torch dtype"),
    (lambda d: _first(d).update(nnz=-1), r"'tensors.*nnz' must be an integer"),
    (lambda d: _first(d).update(bits=9), r"'tensors.*bits' must be an integer in \[1, 8\]"),
    (lambda d: _first(d).update(rice_k="3"), r"'tensors.*rice_k' must be an integer"),
])
def test_artifact_spec_schema_names_the_file_and_key(tmp_path, edit, message):
    _small_artifact(tmp_path)
    _spec_edit(tmp_path, edit)
    with pytest.raises(ArtifactError, match=message) as e:
        load(tmp_path)
    assert str(tmp_path / SPEC_FILE) in _one_line(e)


def test_artifact_truncated_or_replaced_tensor_file(tmp_path):
    _small_artifact(tmp_path)
    file = tmp_path / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match=rf"corrupt artifact file {file}: .* bytes"):
        load(tmp_path)
