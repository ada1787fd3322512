"""The artifact: exact round trips, the format chosen per tensor, real bytes, loud corruption."""

import json
import pickle

import pytest
import torch
from torch import nn

import spikecompress.atomic as atomic_mod
import spikecompress.export.artifact as artifact_mod
from spikecompress.export import ArtifactError, load, read_spec, save, size_bytes
from spikecompress.export.packing import bit_view
from spikecompress.models import build
from spikecompress.snn import reset_state

SMALL = {"in_channels": 1, "input_size": 8, "classes": 10, "widths": [16, 32, 64]}


def _net(widths=(16, 32, 64), **kw) -> nn.Module:
    model = build("conv_net", **{**SMALL, "widths": list(widths), **kw})
    with torch.no_grad():  # non-trivial BN statistics, so they are part of what is checked
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
    return model.eval()


def _weights(model):
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def _quantize_(model, bits):
    """Each weight onto 2**bits levels of a symmetric grid (what uniform quantization leaves)."""
    with torch.no_grad():
        for w in _weights(model).values():
            s = w.abs().max() / (2 ** (bits - 1) - 1)
            w.copy_(torch.clamp(torch.round(w / s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * s)
    return model


def _levels_(model, k):
    """Each weight replaced by one of k random non-zero levels per tensor (k-means style)."""
    with torch.no_grad():
        for w in _weights(model).values():
            levels = torch.randn(k)
            w.copy_(levels[torch.randint(k, w.shape)])
    return model


def _prune_(model, fraction):
    with torch.no_grad():
        for w in _weights(model).values():
            w.mul_(torch.rand_like(w) >= fraction)  # leaves -0.0 where w < 0, as a bake would
    return model


def _assert_same(a: nn.Module, b: nn.Module, T=4):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    x = (torch.rand(T, 3, *a.in_shape) * 2).to(next(a.parameters()).dtype)
    reset_state(a)
    reset_state(b)
    out_a, out_b = a(x), b(x)
    assert torch.equal(bit_view(out_a), bit_view(out_b))


def _formats(path):
    return {k: v["format"] for k, v in read_spec(path)["tensors"].items()}


def _weight_entries(path):
    tensors = read_spec(path)["tensors"]
    return {k: v for k, v in tensors.items() if k.endswith(("conv.weight", "fc.weight"))}


CASES = {
    "dense": (lambda: _net(), "dense", None),
    "sparse50": (lambda: _prune_(_net(), 0.5), "sparse", None),
    "levels16": (lambda: _levels_(_net(), 16), "codebook", 4),
    "levels4": (lambda: _levels_(_net(), 4), "codebook", 2),
    "levels16+sparse90": (lambda: _prune_(_levels_(_net(), 15), 0.9), "coo_codebook", 4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_is_exact_and_picks_the_expected_format(case, tmp_path):
    make, fmt, bits = CASES[case]
    model = make()
    save(model, tmp_path / "a")
    loaded = load(tmp_path / "a")
    _assert_same(model, loaded)
    assert not loaded.training
    big = {k: v for k, v in _weight_entries(tmp_path / "a").items() if "features.0" not in k}
    assert {v["format"] for v in big.values()} == {fmt}, big
    assert all(v.get("bits") == bits for v in big.values())


def test_uniform_quantization_round_trips(tmp_path):
    for bits in (4, 2):
        model = _quantize_(_net(), bits)
        save(model, tmp_path / f"q{bits}")
        _assert_same(model, load(tmp_path / f"q{bits}"))
        for entry in _weight_entries(tmp_path / f"q{bits}").values():
            assert "codebook" in entry["format"] and entry["bits"] <= bits


@pytest.mark.parametrize("neuron", ["lif", "plif", "if"])
def test_per_channel_neuron_parameters_round_trip(neuron, tmp_path):
    model = _net(neuron=neuron, neuron_params={"per_channel": True, "v_reset": None})
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("act.tau"):
                t.uniform_(1.5, 4.0)
            elif name.endswith(("act.v_threshold", "act.w")):
                t.uniform_(0.2, 1.2)
    save(model, tmp_path / "a")
    _assert_same(model, load(tmp_path / "a"))
    formats = _formats(tmp_path / "a")
    assert formats["features.0.bn.num_batches_tracked"] == "dense"
    assert formats["features.2.act.v_threshold"] == "dense"  # 64 distinct fp32 values


def test_dtype_and_meta_are_kept(tmp_path):
    model = _levels_(_net(), 8).to(torch.float64)
    meta = {"T": 4, "quant": {"bits": 3, "scheme": "kmeans"}, "exit": None}
    save(model, tmp_path / "a", meta=meta)
    spec = read_spec(tmp_path / "a")
    assert spec["meta"] == meta and spec["model"] == model.spec
    assert spec["format_version"] == 2 and spec["library_version"]
    entry = spec["tensors"]["features.1.conv.weight"]
    assert entry == {"format": "codebook", "shape": [32, 16, 3, 3], "dtype": "float64", "bits": 3}
    _assert_same(model, load(tmp_path / "a"))


def test_size_bytes_is_measured_and_shrinks(tmp_path):
    sizes = {}
    for name, make in {
        "dense": lambda: _net((64, 128, 128)),
        "sparse50": lambda: _prune_(_net((64, 128, 128)), 0.5),
        "q4": lambda: _quantize_(_net((64, 128, 128)), 4),
        "q2": lambda: _quantize_(_net((64, 128, 128)), 2),
        "q4+sparse90": lambda: _prune_(_quantize_(_net((64, 128, 128)), 4), 0.9),
    }.items():
        path = save(make(), tmp_path / name)
        files = [path / "model.safetensors", path / "spec.json"]
        sizes[name] = size_bytes(path)
        assert sizes[name] == sum(f.stat().st_size for f in files)
    params = sum(p.numel() for p in _net((64, 128, 128)).parameters())
    assert sizes["dense"] > 4 * params
    assert sizes["dense"] / sizes["sparse50"] > 1.7
    assert sizes["dense"] / sizes["q4"] > 7
    assert sizes["dense"] / sizes["q2"] > 15
    assert sizes["dense"] / sizes["q4+sparse90"] >= 20  # measured 28.7x


def test_model_without_spec_or_bad_meta_cannot_be_saved(tmp_path):
    with pytest.raises(ValueError, match="no .spec"):
        save(nn.Linear(2, 2), tmp_path / "a")
    with pytest.raises(ValueError, match="JSON"):
        save(_net((4,)), tmp_path / "b", meta={"x": object()})
    with pytest.raises(ValueError, match="T"):
        save(_net((4,)), tmp_path / "c", meta={"T": 0})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / "spec.json").exists()


def _saved(tmp_path):
    model = _prune_(_net((4, 8)), 0.5)
    return model, save(model, tmp_path / "art")


def _assert_one_line_error(path, file, match):
    with pytest.raises(ArtifactError, match=match) as info:
        load(path)
    msg = str(info.value)
    assert str(path / file) in msg and "\n" not in msg, msg


def test_truncated_tensor_file(tmp_path):
    _, path = _saved(tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    _assert_one_line_error(path, "model.safetensors", "truncated")


def test_flipped_byte_is_a_sha_mismatch(tmp_path):
    _, path = _saved(tmp_path)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-3] ^= 0x10
    (path / "model.safetensors").write_bytes(bytes(data))
    _assert_one_line_error(path, "model.safetensors", "sha256")


def test_invalid_json_spec(tmp_path):
    _, path = _saved(tmp_path)
    (path / "spec.json").write_text((path / "spec.json").read_text()[:-20])
    _assert_one_line_error(path, "spec.json", "invalid JSON")


def test_future_format_version(tmp_path):
    _, path = _saved(tmp_path)
    spec = json.loads((path / "spec.json").read_text())
    (path / "spec.json").write_text(json.dumps({**spec, "format_version": 99}))
    _assert_one_line_error(path, "spec.json", "version 99")


def test_format_version_1_still_loads_and_3_is_refused(tmp_path):
    """v1 artifacts (written before the scaled-codes formats) load; a newer one asks to upgrade."""
    model, path = _saved(tmp_path)
    spec = json.loads((path / "spec.json").read_text())
    assert spec["format_version"] == 2
    (path / "spec.json").write_text(json.dumps({**spec, "format_version": 1}))
    assert read_spec(path)["format_version"] == 1
    _assert_same(model, load(path))
    (path / "spec.json").write_text(json.dumps({**spec, "format_version": 3}))
    _assert_one_line_error(path, "spec.json", "version 3, newer .* upgrade spikecompress")


@pytest.mark.parametrize("file", ["model.safetensors", "spec.json"])
def test_missing_file(tmp_path, file):
    _, path = _saved(tmp_path)
    (path / file).unlink()
    _assert_one_line_error(path, file, "missing")
    if file == "spec.json":
        with pytest.raises(ArtifactError, match="missing"):
            size_bytes(path)


def test_spec_that_does_not_match_the_tensors(tmp_path):
    _, path = _saved(tmp_path)
    spec = json.loads((path / "spec.json").read_text())
    spec["tensors"]["features.1.conv.weight"]["nnz"] += 1
    (path / "spec.json").write_text(json.dumps(spec))
    _assert_one_line_error(path, "spec.json", "features.1.conv.weight")
    spec["tensors"]["features.1.conv.weight"]["nnz"] -= 1
    spec["model"]["widths"] = [4, 9]
    (path / "spec.json").write_text(json.dumps(spec))
    _assert_one_line_error(path, "spec.json", "does not fit")


def test_load_never_unpickles(tmp_path, monkeypatch):
    model, path = _saved(tmp_path)

    def boom(*args, **kwargs):
        raise AssertionError("unpickling")

    for mod, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(mod, name, boom)
    _assert_same(model, load(path))


def test_overwrite_and_failed_saves_leave_the_previous_artifact(tmp_path, monkeypatch):
    old, path = _saved(tmp_path)
    new = _levels_(_net((4, 8)), 4)

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as m:  # failure while encoding: nothing written
        m.setattr(artifact_mod.codec, "encode", fail)
        with pytest.raises(RuntimeError):
            save(new, path)
    _assert_same(old, load(path))

    real_writer = atomic_mod.atomic_writer
    for victim in ["model.safetensors", "spec.json"]:
        def writer(target, victim=victim):
            if target.name == victim:
                raise OSError("disk full")
            return real_writer(target)

        with monkeypatch.context() as m:
            m.setattr(atomic_mod, "atomic_writer", writer)  # the pair writer's own writes
            with pytest.raises(OSError):
                save(new, path)
        _assert_same(old, load(path))
        assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "spec.json"]

    save(new, path)  # an ordinary save overwrites
    _assert_same(new, load(path))
