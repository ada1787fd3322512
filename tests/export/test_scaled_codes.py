"""Quantized weights stored as integer codes times a per-tensor or per-channel scale that the
state dict already holds (``<module>.weight_scale``): exact, small, and loud when corrupted."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from spikecompress.export import ArtifactError, codec, read_spec, read_state_dict, save
from spikecompress.export.artifact import SPEC_FILE, TENSOR_FILE, encode_state_dict
from spikecompress.export.packing import bit_view, packed_bytes
from spikecompress.models import build

torch.set_num_threads(1)

SCALED = list(codec.SCALED_FORMATS)


def _scaled(scale, dims):
    return scale.reshape(-1, *([1] * (dims - 1))) if scale.dim() else scale


def _quantized(shape, bits, *, seed=0, density=1.0, per_channel=True):
    """(weight, scale, codes): codes uniform in [-qmax, qmax], weight = codes · scale exactly."""
    gen = torch.Generator().manual_seed(seed)
    qmax = 2 ** (bits - 1) - 1
    codes = torch.randint(-qmax, qmax + 1, shape, generator=gen)
    codes = codes * (torch.rand(shape, generator=gen) < density)
    scale = torch.rand(shape[0] if per_channel else (), generator=gen) * 0.1 + 0.01
    return codes.to(torch.float32) * _scaled(scale, len(shape)), scale, codes


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bit_view(a), bit_view(b))


def _stored(pieces):
    return sum(p.numel() * p.element_size() for p in pieces.values())


def _round_trip(w, scale, fmt=None):
    pieces, entry = codec.encode("c.weight", w, fmt, scale=("c.weight_scale", scale))
    return codec.decode("c.weight", entry, pieces, scale=scale), pieces, entry


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_per_channel_codes_round_trip_exactly(bits):
    w, scale, codes = _quantized((24, 8, 3), bits, seed=bits)
    codes[5] = 0  # an all-zero row
    scale[7] = 1e-30  # a tiny (normal) scale
    scale[9] = 1e-44  # a subnormal one
    w = codes.to(torch.float32) * _scaled(scale, 3)
    negzero = (w == 0) & (torch.rand(w.shape) < 0.5)
    w[negzero] = -0.0  # what a baked mask leaves; stored as +0.0
    assert negzero.any() and (bit_view(w[negzero]) != 0).all()  # -0.0 bit patterns
    for fmt in [*SCALED, None]:
        out, pieces, entry = _round_trip(w, scale, fmt)
        assert _same_bits(out, codec.canonical(w)), fmt
        assert (bit_view(out)[w == 0] == 0).all()  # +0.0 only
        assert entry["scale"] == "c.weight_scale" and entry["bits"] == bits, entry
        assert not any("scale" in name for name in pieces)  # the scale is not stored again
    assert entry["format"] == "scaled_codes"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_with_a_scale_of_the_same_dtype(dtype):
    w, scale, _ = _quantized((12, 6), 8, seed=3)
    scale = scale.to(dtype)
    w = _quantized((12, 6), 8, seed=3)[2].to(dtype) * _scaled(scale, 2)
    out, _, entry = _round_trip(w, scale)
    assert entry["format"] == "scaled_codes" and _same_bits(out, codec.canonical(w))
    assert codec.encode("c.weight", w, scale=("c.weight_scale", scale.float()))[1]["format"] \
        in codec.FORMATS  # a scale of another dtype is not this tensor's scale


def test_per_tensor_scale_and_all_zero_tensor():
    w, scale, _ = _quantized((16, 4, 3), 3, per_channel=False)
    for fmt in SCALED:
        out, _, entry = _round_trip(w, scale, fmt)
        assert _same_bits(out, w) and entry["bits"] == 3
    zero = torch.zeros(8, 4)
    for fmt in SCALED:
        out, _, entry = _round_trip(zero, torch.full((8,), 0.5), fmt)
        assert _same_bits(out, zero) and entry["bits"] == 1  # qmax 0: only the code 0
    ternary = torch.tensor([[-1.0, 0.0, 1.0], [2.0, -2.0, 0.0]])  # codes in {-1, 0, 1}
    out, pieces, entry = _round_trip(ternary, torch.tensor([1.0, 2.0]), "scaled_codes")
    assert _same_bits(out, ternary) and entry["bits"] == 2 and _stored(pieces) == 2


def test_per_channel_4bit_size_is_half_a_byte_per_weight():
    w, scale, _ = _quantized((64, 64, 3), 4)
    n = w.numel()
    assert torch.unique(w).numel() > codec.MAX_CODEBOOK  # no codebook holds it today
    pieces, entry = codec.encode("c.weight", w, scale=("c.weight_scale", scale))
    assert entry["format"] == "scaled_codes" and set(pieces) == {"c.weight::codes"}
    assert _stored(pieces) == n * 4 // 8
    fallback, fallback_entry = codec.encode("c.weight", w)  # no scale: today's choice
    assert _stored(pieces) * 7 < _stored(fallback), fallback_entry["format"]
    assert _stored(pieces) < 4 * n

    # few channels: a codebook (8 bits) applies, the 4-bit codes still beat it
    w, scale, _ = _quantized((16, 64, 3), 4)
    codebook, entry = codec.encode("c.weight", w, "codebook")
    assert entry["bits"] == 8
    chosen, entry = codec.encode("c.weight", w, scale=("c.weight_scale", scale))
    assert entry["format"] == "scaled_codes" and _stored(chosen) < _stored(codebook)
    assert codec.choose_format("c.weight", w) == "codebook"  # what it is without the scale


def test_sparse_variants_win_when_pruned():
    w, scale, codes = _quantized((64, 64, 3), 4, density=0.1)
    sizes = {fmt: _stored(_round_trip(w, scale, fmt)[1]) for fmt in SCALED}
    assert sizes["sparse_scaled_codes"] < sizes["scaled_codes"] / 2, sizes
    assert sizes["coo_scaled_codes"] < sizes["sparse_scaled_codes"], sizes
    out, pieces, entry = _round_trip(w, scale)
    assert entry["format"] == "coo_scaled_codes" and entry["nnz"] == int((codes != 0).sum())
    assert _same_bits(out, w)
    w, scale, _ = _quantized((64, 64, 3), 4, density=0.4)
    assert _round_trip(w, scale)[2]["format"] == "sparse_scaled_codes"
    assert _stored(_round_trip(w, scale)[1]) == packed_bytes(w.numel(), 1) + packed_bytes(
        int((w != 0).sum()), 4)


def test_choice_counts_the_pieces_it_stores():
    for density in [0.02, 0.1, 0.3, 0.7, 1.0]:
        w, scale, _ = _quantized((32, 16, 3), 3, density=density, seed=int(density * 100))
        sizes = {fmt: _stored(codec.encode("w", w, fmt)[0]) for fmt in codec.FORMATS
                 if fmt not in ("codebook", "sparse_codebook", "coo_codebook")}
        sizes |= {fmt: _stored(_round_trip(w, scale, fmt)[1]) for fmt in SCALED}
        chosen = _round_trip(w, scale)[2]["format"]
        assert sizes[chosen] <= min(sizes.values()) + 200, (density, chosen, sizes)


@pytest.mark.parametrize("case", ["nudged", "not_integer", "beyond_127", "zero_scale",
                                  "negative_scale", "nan_scale", "wrong_shape", "wrong_dtype"])
def test_falls_back_when_the_weight_is_not_codes_times_scale(case):
    w, scale, _ = _quantized((16, 8), 4)
    if case == "nudged":
        w[3, 2] = torch.nextafter(w[3, 2], torch.tensor(1.0))
    elif case == "not_integer":
        w[3] = w[3] + scale[3] * 0.5
    elif case == "beyond_127":
        w[3, 2] = 200 * scale[3]
    elif case == "zero_scale":
        scale[3] = 0.0
    elif case == "negative_scale":
        w[3], scale[3] = -w[3], -scale[3]
    elif case == "nan_scale":
        scale[3] = float("nan")
    elif case == "wrong_shape":
        scale = scale[:8]
    else:
        scale = scale.double()
    pieces, entry = codec.encode("c.weight", w, scale=("c.weight_scale", scale))
    assert entry["format"] == codec.choose_format("c.weight", w) and "scale" not in entry
    assert _same_bits(codec.decode("c.weight", entry, pieces), codec.canonical(w))
    with pytest.raises(ValueError, match="'c.weight'"):
        codec.encode("c.weight", w, "scaled_codes", scale=("c.weight_scale", scale))
    with pytest.raises(ValueError, match="'c.weight'"):
        codec.encode("c.weight", w, "scaled_codes")


def test_decode_checks_the_scale_and_the_codes():
    w, scale, _ = _quantized((8, 5), 3)
    for fmt in SCALED:
        pieces, entry = codec.encode("c.weight", w, fmt, scale=("c.weight_scale", scale))
        bad_scales = [None, scale[:4], scale.reshape(8, 1), scale.double(), -scale,
                      torch.full((8,), float("inf"))]
        for bad in bad_scales:
            with pytest.raises(ValueError, match="'c.weight'.*scale") as e:
                codec.decode("c.weight", entry, pieces, scale=bad)
            assert "\n" not in str(e.value)
        for bad in [{"bits": 2}, {"bits": 4}, {"scale": ""}, {"dtype": "float16"}]:
            with pytest.raises(ValueError, match="'c.weight'"):
                codec.decode("c.weight", {**entry, **bad}, pieces, scale=scale)
        codes = pieces["c.weight::codes"]
        beyond = {**pieces, "c.weight::codes": torch.full_like(codes, 0xFF)}
        with pytest.raises(ValueError, match="'c.weight'.*beyond qmax 3"):
            codec.decode("c.weight", entry, beyond, scale=scale)


def test_entry_problem_knows_the_scale_field():
    w, scale, _ = _quantized((8, 5), 3)
    entries = {"c.weight": _round_trip(w, scale)[2],
               "c.weight_scale": codec.encode("c.weight_scale", scale)[1]}
    assert codec.entry_problem(entries["c.weight"], entries) is None
    assert codec.entry_problem(entries["c.weight"]) is None  # without the others: no reference
    bads = {
        "scale": [{"scale": 3}, {"scale": ""}, {"scale": "nope"}, {"scale": "c.weight"}],
        "bits": [{"bits": 0}, {"bits": 9}],
    }
    for field, edits in bads.items():
        for edit in edits:
            problem = codec.entry_problem({**entries["c.weight"], **edit}, entries)
            assert problem is not None and problem[0] == field, (edit, problem)
    no_scale = {k: v for k, v in entries["c.weight"].items() if k != "scale"}
    assert codec.entry_problem(no_scale, entries)[0] == "scale"
    dense_with_scale = {**entries["c.weight_scale"], "scale": "c.weight_scale"}
    assert codec.entry_problem(dense_with_scale, entries)[0] == "scale"
    for shape in ([4], [8, 1], [2, 4]):
        wrong = {**entries, "c.weight_scale": {**entries["c.weight_scale"], "shape": shape}}
        assert codec.entry_problem(entries["c.weight"], wrong)[0] == "scale", shape
    wrong = {**entries, "c.weight_scale": {**entries["c.weight_scale"], "dtype": "float64"}}
    assert codec.entry_problem(entries["c.weight"], wrong)[0] == "scale"


# -- through the artifact ------------------------------------------------------------------------
def _quantized_net(widths=(16, 32), bits=4, prune=0.0, per_channel=True, seed=0):
    """conv1d_net whose conv/linear weights are codes · weight_scale (a registered buffer)."""
    model = build("conv1d_net", in_channels=1, input_size=40, classes=10, widths=list(widths))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv1d | nn.Linear):
                w, scale, _ = _quantized(tuple(m.weight.shape), bits, density=1 - prune,
                                         per_channel=per_channel,
                                         seed=int(torch.randint(1000, (), generator=gen)))
                m.weight.copy_(w)
                m.register_buffer("weight_scale", scale)
    return model.eval()


def test_state_dict_round_trip_through_the_artifact(tmp_path):
    for name, model in {"channel": _quantized_net(), "tensor": _quantized_net(per_channel=False),
                        "pruned": _quantized_net(prune=0.9)}.items():
        state = model.state_dict()
        path = save(model, tmp_path / name)
        back = read_state_dict(path)
        assert list(back) == list(state)
        for key in state:
            assert _same_bits(back[key], state[key]), (name, key)
        tensors = read_spec(path)["tensors"]
        for key in state:
            if key.endswith("conv.weight") or key == "classifier.fc.weight":
                assert tensors[key]["format"] in SCALED and tensors[key]["scale"] == key + "_scale"
                assert tensors[key + "_scale"]["format"] in codec.FORMATS
                if name != "tensor":  # 64·15 levels over the per-tensor case's 15
                    assert tensors[key]["bits"] == 4


def test_encode_state_dict_order_and_chains():
    w, scale, _ = _quantized((8, 5), 3)
    # the scale before its weight, and a scale that has a "scale" of its own (never chained)
    state = {"a.weight_scale": scale, "a.weight": w, "b": w.clone(), "b_scale": scale,
             "b_scale_scale": torch.tensor(1.0), "c": torch.arange(3.0), "c_scale": scale}
    pieces, entries = encode_state_dict(state)
    assert entries["a.weight"]["scale"] == "a.weight_scale"
    assert entries["b"]["format"] not in SCALED  # b_scale could itself be scaled: not offered
    assert entries["c"]["format"] == "dense"  # c_scale has the wrong shape
    for entry in entries.values():
        assert codec.entry_problem(entry, entries) is None


def _rewrite(path, edit_spec=None, edit_pieces=None):
    """Edit spec.json and/or the tensor file, keeping the recorded size and sha256 consistent."""
    doc = json.loads((path / SPEC_FILE).read_text())
    if edit_pieces is not None:
        pieces = st_load((path / TENSOR_FILE).read_bytes())
        edit_pieces(pieces)
        data = st_save(pieces, metadata={"format": "spikecompress-artifact"})
        (path / TENSOR_FILE).write_bytes(data)
        doc["tensor_bytes"], doc["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    if edit_spec is not None:
        edit_spec(doc["tensors"])
    (path / SPEC_FILE).write_text(json.dumps(doc))


KEY = "features.1.conv.weight"


def _set(field, value):
    return lambda tensors: tensors[KEY].update({field: value})


def _drop_scale(tensors):
    del tensors[KEY + "_scale"]


def _codes_ff(pieces):
    pieces[KEY + "::codes"] = torch.full_like(pieces[KEY + "::codes"], 0xFF)


def _scale_negative(pieces):
    pieces[KEY + "_scale"] = -pieces[KEY + "_scale"]


CORRUPTIONS = {  # name -> (spec edit, tensor-file edit, what the message says)
    "missing_scale_key": (_set("scale", "features.1.conv.nope"), None, "'tensors.%s.scale'"),
    "scale_entry_dropped": (_drop_scale, None, "'tensors.%s.scale'"),
    "no_scale_field": (lambda t: t[KEY].pop("scale"), None, "'tensors.%s.scale'"),
    "wrong_scale_shape": (_set("scale", "features.0.conv.weight_scale"), None,
                          "'tensors.%s.scale'.*shape"),
    "scale_is_itself_scaled": (_set("scale", "features.0.conv.weight"), None,
                               "'tensors.%s.scale'"),
    "bits_too_many": (_set("bits", 8), None, "'%s'"),
    "codes_beyond_qmax": (None, _codes_ff, "'%s'.*beyond qmax 7"),
    "negative_scale": (None, _scale_negative, "'%s'.*scale"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupted_artifacts_are_refused_in_one_line(tmp_path, case):
    path = save(_quantized_net(), tmp_path / "art")
    assert read_spec(path)["tensors"][KEY]["format"] == "scaled_codes"
    edit_spec, edit_pieces, message = CORRUPTIONS[case]
    _rewrite(path, edit_spec, edit_pieces)
    with pytest.raises(ArtifactError, match=message % KEY) as e:
        read_state_dict(path)
    assert isinstance(e.value, ValueError)
    msg = str(e.value)
    assert str(path / SPEC_FILE) in msg and "\n" not in msg, msg
