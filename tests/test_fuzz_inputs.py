"""Fuzzing every input a user hands in: each malformed input either loads or is refused with one
of the project's user errors (a ValueError subclass or FileNotFoundError) and a one-line message;
never another exception, never a traceback.

Mutated: recipes as dicts and as YAML text (wrong types, missing and extra keys, huge, negative,
NaN numbers, duplicate keys, unknown names, broken syntax), ``--set`` overrides, .npz data files
(NaN/inf/huge values, negative/float/huge labels, shape mismatches, missing and extra arrays,
non-npz bytes), artifacts (spec.json keys and types, tensor files truncated or with flipped bytes,
their sha256 recomputed so that the decoder sees them) and checkpoints (pointer fields, tensor
files, missing files). Hypothesis runs derandomized (the same inputs every run) with no example
database, so nothing is written outside pytest's temporary folders. ``TRIED`` counts the inputs;
``test_fuzz_count`` prints and checks the total.
"""

import collections
import copy
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from spikecompress import recipes
from spikecompress.data import DataConfig, load_data
from spikecompress.export import load, save
from spikecompress.export.artifact import SPEC_FILE, TENSOR_FILE
from spikecompress.models import build
from spikecompress.run.folders import load_model
from spikecompress.run.recipe import Recipe
from spikecompress.run.recipe_files import (
    apply_overrides,
    check_run,
    dump_yaml,
    parse_yaml,
    read_recipe_text,
)
from spikecompress.train import checkpoint as ckpt
from spikecompress.train.seeding import rng_state

# Hypothesis keeps caches in ./.hypothesis: into the session's scratch folder instead (conftest)
set_hypothesis_home_dir(Path(os.environ.get("SPIKECOMPRESS_CACHE") or tempfile.mkdtemp())
                        / "hypothesis")

USER_ERRORS = (ValueError, FileNotFoundError)
TRIED: collections.Counter = collections.Counter()
REFUSED: collections.Counter = collections.Counter()
OTHER: collections.Counter = collections.Counter()
# FUZZ_SCALE=10 FUZZ_RANDOM=1 pytest tests/test_fuzz_inputs.py: a longer hunt on fresh inputs
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
EXAMPLES = {k: max(1, round(n * SCALE)) for k, n in {
    "recipe_dict": 150, "recipe_yaml": 120, "overrides": 200, "npz": 200, "artifact_spec": 150,
    "artifact_bytes": 150, "checkpoint": 200}.items()}
FUZZ = dict(deadline=None, derandomize=not os.environ.get("FUZZ_RANDOM"), database=None,
            print_blob=False, suppress_health_check=list(HealthCheck))

NASTY = [None, True, False, 0, -1, 1.5, -1e-9, 1e39, 3e38, 1e300, math.nan, math.inf, -math.inf,
         2**31, 2**63, 2**64, 10**30, "", "abc", "1e39", "nan", "-1", "../x", "cuda:abc", [],
         [1, "x"], [[]], {}, {"name": "nope"}, {"a": {"b": []}}]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6))
VALUES = st.one_of(
    st.sampled_from(NASTY),
    st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(
        st.text(max_size=4), c, max_size=3), max_leaves=6),
)
KEYS = st.one_of(st.sampled_from(["name", "T", "epochs", "lr", "x", "extra", "version", "init"]),
                 st.text(max_size=5))


def _attempt(kind: str, fn) -> bool:
    """Run ``fn`` on one malformed input; True if it loaded, False if refused as it should be."""
    TRIED[kind] += 1
    try:
        fn()
    except USER_ERRORS as e:
        msg = str(e).strip()
        if not msg or "\n" in msg:
            OTHER[kind] += 1
            raise AssertionError(f"{kind}: not a one-line message: {msg!r}") from e
        REFUSED[kind] += 1
        return False
    except Exception:
        OTHER[kind] += 1
        raise
    return True


# -- mutating nested dicts and lists -------------------------------------------------------------
def _paths(node, prefix=()):
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(
        node, list) else ()
    for key, child in items:
        yield from _paths(child, (*prefix, key))


def _get(node, path):
    for key in path:
        node = node[key]
    return node


@st.composite
def mutated(draw, base):
    """``base`` with 1-3 random edits: a value replaced, a key or item deleted, a key added."""
    d = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(d) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _get(d, path[:-1]), path[-1]
        op = draw(st.sampled_from(["set", "set", "delete", "add"]))
        if op == "set":
            parent[key] = copy.deepcopy(draw(VALUES))  # NASTY values are shared objects
        elif op == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(KEYS)] = copy.deepcopy(draw(VALUES))
        else:
            parent.append(copy.deepcopy(draw(VALUES)))
    return d


def _tiny_recipe() -> dict:
    return {
        "version": 1,
        "model": {"name": "mlp", "widths": [8]},
        "data": {"name": "digits", "T": 2, "batch_size": 32, "limit": 64},
        "stages": [
            {"name": "dense", "epochs": 1, "optimizer": {"name": "adam", "lr": 1e-2}},
            {"name": "prune", "epochs": 1, "optimizer": {"lr": 1e-2},
             "methods": [{"name": "magnitude", "sparsity": 0.5, "schedule": "cubic"}]},
        ],
    }


BASES = [_tiny_recipe()] + [parse_yaml(*read_recipe_text(n)) for n in recipes.names()]


def _build_and_check(d, out):
    recipe = Recipe.from_dict(d)
    assert Recipe.from_dict(parse_yaml(dump_yaml(recipe), "effective")) == recipe
    check_run(recipe, out)


# -- recipes -------------------------------------------------------------------------------------
@settings(max_examples=EXAMPLES["recipe_dict"], **FUZZ)
@given(data=st.data())
def test_fuzz_recipe_dicts(data, tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / "fuzz-run"
    base = data.draw(st.sampled_from(BASES))
    d = data.draw(mutated(base))
    _attempt("recipe_dict", lambda: _build_and_check(d, out))


TEXT_EDITS = ["delete", "duplicate", "char", "truncate", "number", "indent"]


@st.composite
def mutated_text(draw, text):
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1)) if lines else 0
        op = draw(st.sampled_from(TEXT_EDITS))
        if not lines:
            lines = [draw(st.text(max_size=10))]
        elif op == "delete":
            del lines[i]
        elif op == "duplicate":  # a repeated key, most of the time
            lines.insert(i, lines[i])
        elif op == "char":
            j = draw(st.integers(0, len(lines[i])))
            ch = draw(st.sampled_from(list(":-{}[]&*!|>'\"#%@` \t") + ["\x00", "é"]))
            lines[i] = lines[i][:j] + ch + lines[i][j:]
        elif op == "truncate":
            lines = lines[:i]
        elif op == "number":
            lit = draw(st.sampled_from([".nan", ".inf", "-.inf", "1e39", "-1", "0", "1e999",
                                        "99999999999999999999999", "0x10", "~", "yes"]))
            lines[i] = (lines[i].split(":")[0] + ": " + lit) if ":" in lines[i] else lit
        else:
            lines[i] = " " * draw(st.integers(1, 3)) + lines[i]
    return "\n".join(lines) + "\n"


@settings(max_examples=EXAMPLES["recipe_yaml"], **FUZZ)
@given(data=st.data())
def test_fuzz_recipe_yaml_text(data, tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / "fuzz-run"
    base = data.draw(st.sampled_from(BASES[:6]))
    text = data.draw(mutated_text(dump_yaml(Recipe.from_dict(base))))
    _attempt("recipe_yaml", lambda: _build_and_check(parse_yaml(text, "fuzz.yaml"), out))


SET_PATHS = ["version", "seed", "model", "model.name", "model.widths", "model.widths.0",
             "data", "data.T", "data.name", "data.max_abs", "data.limit", "data.batch_size",
             "data.holdout", "stages", "stages.0", "stages.0.epochs", "stages.0.optimizer",
             "stages.0.optimizer.lr", "stages.0.optimizer.momentum", "stages.1.init",
             "stages.1.T", "stages.1.methods", "stages.1.methods.0.sparsity",
             "stages.1.methods.0", "stages.9.epochs", "stages.x", "a.b.c", "", ".", "stages..0"]
SET_TEXTS = ["1e39", ".nan", ".inf", "-1", "0", "null", "[1", "{a: 1, a: 2}", "{lr: 1, lr: 2}",
             "abc", "1e999", "99999999999999999999", "[]", "{}", "true", "x: y: z", "'", "- 1"]


@settings(max_examples=EXAMPLES["overrides"], **FUZZ)
@given(data=st.data())
def test_fuzz_set_overrides(data):
    sets = data.draw(st.lists(st.one_of(
        st.builds(lambda p, v: f"{p}={v}", st.sampled_from(SET_PATHS), st.sampled_from(SET_TEXTS)),
        st.text(max_size=12)), min_size=1, max_size=3))
    _attempt("overrides", lambda: Recipe.from_dict(apply_overrides(_tiny_recipe(), sets)))


# -- data files ----------------------------------------------------------------------------------
X_VALUES = [0.5, 0.0, -1.0, 1e30, -1e7, math.nan, math.inf, -math.inf]
DTYPES = [np.float32, np.float64, np.float16, np.int64, np.uint8, np.bool_, np.complex64, "U2"]


@st.composite
def npz_arrays_drawn(draw):
    n = draw(st.sampled_from([0, 1, 2, 9, 20]))
    feat = draw(st.sampled_from([(), (0,), (3,), (2, 2)]))
    x = np.full((n, *feat), 0.25)
    if x.size:
        x.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from(X_VALUES))
    rank = draw(st.sampled_from([None, None, "flat", "scalar"]))  # a wrong rank, sometimes
    x = x.reshape(-1) if rank == "flat" else np.array(0.3) if rank == "scalar" else x
    with np.errstate(all="ignore"):
        x = x.astype(draw(st.sampled_from(DTYPES)))
    y = np.arange(draw(st.sampled_from([n, n - 1, n + 1])) if n else 0) % 3
    label = draw(st.sampled_from([None, -1, 7, 10**9, 2**40, 0.5]))
    if label is not None and y.size:
        y = y.astype(type(label) if isinstance(label, float) else np.int64)
        y[draw(st.integers(0, y.size - 1))] = label
    arrays = {"x": x, "y": y}
    if draw(st.booleans()):
        arrays["x_test"] = x[:5] if x.ndim else x
        arrays["y_test"] = y[:5] + draw(st.sampled_from([0, 0, 2, 50]))
    for key in draw(st.lists(st.sampled_from(["x", "y", "y_test", "x_test", "extra"]),
                             max_size=2)):
        if draw(st.booleans()):
            arrays.pop(key, None)
        else:
            arrays[key] = np.zeros(draw(st.sampled_from([(), (2,), (2, 1)])))
    return arrays


def _write_npz(path, arrays, damage):
    np.savez(path, **arrays)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x93NUMPY garbage" + raw[:10])
    elif damage == "npy":
        np.save(path.with_suffix(".npy"), np.zeros(3))
        path.write_bytes(path.with_suffix(".npy").read_bytes())


def _load_npz(path):
    data = load_data(DataConfig("npz", root=str(path), T=2, batch_size=8))
    x_seq, y = next(iter(data.train))
    assert torch.isfinite(x_seq).all() and int(y.max()) < data.classes


@settings(max_examples=EXAMPLES["npz"], **FUZZ)
@given(arrays=npz_arrays_drawn(), damage=st.sampled_from([None] * 6 + ["truncate", "garbage",
                                                                          "npy"]))
def test_fuzz_npz_files(arrays, damage, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "fuzz.npz"
    _write_npz(path, arrays, damage)
    _attempt("npz", lambda: _load_npz(path))


# -- artifacts -----------------------------------------------------------------------------------
def _compressible_model():
    """An MLP whose weights are pruned and quantized, so that its artifact holds every codec
    format: dense, sparse, codebook, sparse_codebook, coo, coo_codebook."""
    torch.manual_seed(0)
    model = build("mlp", in_features=64, classes=3, widths=[64, 32])
    with torch.no_grad():
        weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
        weights[0].mul_(torch.rand_like(weights[0]) > 0.97).copy_(weights[0].sign() * 0.5)
        weights[1].mul_(torch.rand_like(weights[1]) > 0.5)
        weights[2].copy_(torch.round(weights[2] * 4) / 4)
    return model


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("artifact")
    save(_compressible_model(), path, meta={"T": 2, "data": {"name": "digits"}})
    formats = {e["format"] for e in json.loads((path / SPEC_FILE).read_text())["tensors"].values()}
    assert len(formats) >= 3, formats
    return path


def _fresh_copy(src, dst):
    dst.mkdir(exist_ok=True)
    for name in (SPEC_FILE, TENSOR_FILE):
        (dst / name).write_bytes((src / name).read_bytes())


@settings(max_examples=EXAMPLES["artifact_spec"], **FUZZ)
@given(data=st.data())
def test_fuzz_artifact_spec_json(data, artifact_dir, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "fuzz-artifact"
    _fresh_copy(artifact_dir, path)
    doc = data.draw(mutated(json.loads((artifact_dir / SPEC_FILE).read_text())))
    (path / SPEC_FILE).write_text(json.dumps(doc))
    _attempt("artifact_spec", lambda: load(path))


@settings(max_examples=EXAMPLES["artifact_bytes"], **FUZZ)
@given(data=st.data())
def test_fuzz_artifact_tensor_bytes(data, artifact_dir, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "fuzz-artifact-bytes"
    _fresh_copy(artifact_dir, path)
    raw = bytearray((artifact_dir / TENSOR_FILE).read_bytes())
    op = data.draw(st.sampled_from(["flip", "flip", "truncate", "append", "header"]))
    if op == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif op == "append":
        raw += data.draw(st.binary(min_size=1, max_size=16))
    else:  # flip bytes in the header (where JSON names dtypes, shapes, offsets) or anywhere
        end = int.from_bytes(raw[:8], "little") + 8 if op == "header" else len(raw)
        for i in data.draw(st.lists(st.integers(0, end - 1), min_size=1, max_size=4)):
            raw[i] = data.draw(st.integers(0, 255))
    (path / TENSOR_FILE).write_bytes(bytes(raw))
    if data.draw(st.booleans()):  # tampered but consistent: the decoder sees it
        doc = json.loads((path / SPEC_FILE).read_text())
        doc.update(tensor_bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest())
        (path / SPEC_FILE).write_text(json.dumps(doc))
    _attempt("artifact_bytes", lambda: load(path))


# -- checkpoints ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint")
    model = build("mlp", in_features=4, classes=3, widths=[5])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(2, 3, 4)).sum().backward()
    opt.step()
    opt_tensors, opt_meta = ckpt.optimizer_to_flat(opt)
    tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()}, **opt_tensors,
               **rng_state()}
    meta = {"epoch": 1, "step": 1, "train": {"epochs": 1}, "history": [{"test_accuracy": 0.5}],
            "optimizer": opt_meta, "grad_scale": None, "session": None, "model": model.spec,
            "data": {"name": "digits"}, "stage": "dense"}
    ckpt.save_checkpoint(path, tensors, meta)
    return path


def _resume_like_the_trainer(path):
    tensors, meta = ckpt.load_checkpoint(path)
    model = load_model(path)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt.load_state_dict(ckpt.optimizer_from_flat(tensors, meta["optimizer"]))  # as the Trainer
    torch.set_rng_state(tensors["rng.cpu"])


@settings(max_examples=EXAMPLES["checkpoint"], **FUZZ)
@given(data=st.data())
def test_fuzz_checkpoints(data, checkpoint_dir, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "fuzz-checkpoint"
    path.mkdir(exist_ok=True)
    for f in path.iterdir():
        f.unlink()
    meta = json.loads((checkpoint_dir / ckpt.POINTER).read_text())
    raw = bytearray((checkpoint_dir / meta["tensors"]).read_bytes())
    op = data.draw(st.sampled_from(["pointer", "pointer", "pointer", "tensors", "missing",
                                    "pointer_text"]))
    pointer = json.dumps(meta)
    if op == "pointer":
        pointer = json.dumps(data.draw(mutated(meta)))
    elif op == "pointer_text":
        pointer = pointer[: data.draw(st.integers(0, len(pointer)))]
    elif op == "tensors":
        for i in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4)):
            raw[i] = data.draw(st.integers(0, 255))
    (path / ckpt.POINTER).write_text(pointer)
    if op != "missing":
        (path / meta["tensors"]).write_bytes(bytes(raw))
    _attempt("checkpoint", lambda: _resume_like_the_trainer(path))


# -- the count -----------------------------------------------------------------------------------
def test_fuzz_count():
    """Run last (file order): the number of malformed inputs tried, per kind and in all."""
    total = sum(TRIED.values())
    refused, other = sum(REFUSED.values()), sum(OTHER.values())
    print(f"\nfuzz: {total} malformed inputs tried: {refused} refused with a one-line user "
          f"error, {total - refused - other} loaded, {other} other exceptions; per kind "
          f"{dict(TRIED)}")
    assert other == 0, dict(OTHER)
    if set(TRIED) == set(EXAMPLES):  # the whole file ran
        assert total >= sum(EXAMPLES.values())
        assert all(REFUSED[k] for k in EXAMPLES), dict(REFUSED)
