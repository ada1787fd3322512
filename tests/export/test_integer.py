"""The integer SNN: integer dtypes only, bit-exact against the contract's float64 reference
(ties fire), refusals by name, exact save/load round trips and loud corruption.

The models are finalized quantized models built by hand: a model of ``spikecompress.models``
with its BatchNorms removed and a bias added, then the buffers of the quantization contract set
with dyadic scales and integer codes. ``reference`` is the contract run in float64 on integer
values, written here independently of ``export.integer``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import spikecompress as sc
from spikecompress.export import ArtifactError, IntegerSNN, load_integer, save_integer, to_integer
from spikecompress.export.integer import TENSOR_FILE, IntConv, IntLinear, IntNeuronOp
from spikecompress.models import build
from spikecompress.snn import IF, LIF, Conv1d, Conv2d, Linear
from spikecompress.snn.dynamics import Reset
from spikecompress.snn.integer import MAX_SHIFT, qmax
from spikecompress.snn.neuron import PLIF

SYN = (Conv1d, Conv2d, Linear)
NEURONS = (IF, LIF, PLIF)


# ------------------------------------------------------------------------- the hand-made models


def _set(m: nn.Module, name: str, value: torch.Tensor | None) -> None:
    """Set buffer ``name`` (registering it when the module has none yet)."""
    if name in m._buffers or not hasattr(m, name):
        m.register_buffer(name, value)
    else:
        setattr(m, name, value)


def _strip_bn(model: nn.Module) -> nn.Module:
    """Drop every BatchNorm (the fold) and give every synaptic layer a bias."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm1d | nn.BatchNorm2d):
                delattr(parent, name)
    for m in model.modules():
        if isinstance(m, SYN) and m.bias is None:
            m.bias = nn.Parameter(torch.zeros(m.weight.shape[0]))
    return model


def _leaves(model: nn.Module):
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (*SYN, *NEURONS, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d,
                              nn.AvgPool2d, nn.Flatten, nn.BatchNorm1d, nn.BatchNorm2d))]


def quantize_(model, *, wbits=4, ubits=8, per_channel=False, shared=False, input_bits=8,
              input_scale=2.0**-4, theta=None, seed=0, bias=True):
    """Set the contract's buffers on a BN-free model: dyadic scales (per channel or per tensor),
    weights = weight_scale · codes, bias = grid · bias codes, membrane scales, input grids.
    ``theta``: make each neuron's integer threshold small (v_threshold = theta · s_u) so that
    ties h == θ are frequent."""
    g = torch.Generator().manual_seed(seed)
    stream, x_std, grid, first = input_scale, 1.0 / input_scale, None, True
    for _, m in _leaves(model):
        if isinstance(m, SYN):
            c_out, fan_in = m.weight.shape[0], m.weight[0].numel()
            m_w = qmax(wbits)
            codes = torch.randint(-m_w, m_w + 1, m.weight.shape, generator=g).float()
            e = round(math.log2(1.5 / (math.sqrt(fan_in) * 0.58 * m_w * x_std * stream)))
            ws = torch.full((c_out,) if per_channel else (), 2.0**e)
            if per_channel:
                ws = ws * 2.0 ** torch.randint(-1, 2, (c_out,), generator=g).float()
            grid = ws * stream
            with torch.no_grad():
                m.weight.copy_(codes * (ws.view(-1, *[1] * (codes.dim() - 1)) if per_channel
                                        else ws))
                b = torch.randint(-3 * m_w, 3 * m_w + 1, (c_out,), generator=g).float()
                if bias and m.bias is not None:
                    m.bias.copy_(b * grid)
                else:
                    m.bias = None
            _set(m, "input_scale", torch.tensor(stream))
            _set(m, "input_bits", torch.tensor(input_bits) if first else None)
            _set(m, "weight_scale", ws)
            first = False
        elif isinstance(m, NEURONS):
            c = grid.shape[0] if grid.dim() else None
            s_u = grid * 2.0 ** torch.randint(-1, 3, grid.shape, generator=g).float()
            if not shared and c is None:
                s_u = torch.tensor(2.0**-3)
            if theta is not None:
                with torch.no_grad():
                    m.v_threshold.copy_(theta * (s_u.max() if m.v_threshold.dim() == 0 else s_u))
            _set(m, "membrane_bits", torch.tensor(ubits))
            _set(m, "membrane_scale", None if shared else s_u)
            _set(m, "input_grid", grid.clone())
            stream, x_std = 1.0, 0.5
        elif isinstance(m, nn.AvgPool1d | nn.AvgPool2d):
            stream /= math.prod(m.kernel_size if isinstance(m.kernel_size, tuple)
                                else (m.kernel_size,) * (1 if isinstance(m, nn.AvgPool1d) else 2))
    return model.eval()


def make(name="conv1d_net", *, neuron="lif", neuron_params=None, **q):
    kw = {
        "conv1d_net": {"in_channels": 2, "input_size": 24, "classes": 5, "widths": [6, 8],
                       "hidden": [12]},
        "conv_net": {"in_channels": 2, "input_size": 8, "classes": 4, "widths": [4, 6],
                     "pools": [0, 1], "hidden": []},
        "mlp": {"in_features": 12, "classes": 3, "widths": [16, 8]},
    }[name]
    pool = q.pop("pool", None)
    if pool is not None:
        kw["pool"] = pool
    model = build(name, **kw, neuron=neuron, neuron_params=neuron_params or {})
    return quantize_(_strip_bn(model), **q)


# ------------------------------------------------------------------------ the float64 reference


def _pool_args(m, dims):
    def tup(v):
        return tuple(v) if isinstance(v, tuple | list) else (v,) * dims
    return tup(m.kernel_size), tup(m.stride or m.kernel_size), tup(m.padding)


def reference(model, x_seq):
    """The contract in float64: (read-out accumulators [T, B, K], {neuron: spikes}, ties)."""
    T, B = x_seq.shape[:2]
    x = x_seq
    spikes, ties, first = {}, 0, True
    for name, m in _leaves(model):
        if isinstance(m, SYN):
            s_in = m.input_scale
            if first:
                m_in = qmax(int(m.input_bits))
                x = torch.round(x / s_in).clamp(-m_in, m_in).double()
                first = False
            else:
                x = (x / s_in.double())
                assert bool((x == x.round()).all())
            ws = m.weight_scale
            w = m.weight.detach()
            codes = torch.round(w / (ws.view(-1, *[1] * (w.dim() - 1)) if ws.dim() else ws))
            grid = ws * s_in
            bias = torch.round(m.bias.detach() / grid).double() if m.bias is not None else None
            flat = x.flatten(0, 1)
            if isinstance(m, Linear):
                acc = F.linear(flat, codes.double(), bias)
            else:
                conv = F.conv1d if isinstance(m, Conv1d) else F.conv2d
                acc = conv(flat, codes.double(), bias, m.stride, m.padding)
            x = acc.view(T, B, *acc.shape[1:])
            assert bool((x.abs() < 2**40).all())
        elif isinstance(m, NEURONS):
            k, a = m._decay_gain()
            k = (k if m.leak is None else m.leak).detach().double()
            a = a.detach().double()
            g = m.input_grid.double()
            s_u = g if getattr(m, "membrane_scale", None) is None else m.membrane_scale.double()
            N = MAX_SHIFT
            K = torch.round(k * 2**N)
            G = torch.round(a * g / s_u * 2**N)
            th = torch.ceil(m.v_threshold.double() / s_u)

            def view(p, ref):
                return p if p.dim() == 0 else p.view(-1, *[1] * (ref.dim() - 2))

            K, G, th = (view(p, x[0]) for p in (K, G, th))
            u_max = qmax(int(m.membrane_bits))
            u = torch.zeros_like(x[0])
            out = []
            for t in range(T):
                h = torch.floor((K * u + G * x[t]) / 2**N)
                ties += int((h == th).sum())
                s = (h >= th).double()
                u = h - th * s if m.reset.v_reset is None else h * (1 - s)
                u = u.clamp(-u_max, u_max)
                out.append(s)
            x = torch.stack(out)
            if m.spike_mask is not None:
                x = x * m.spike_mask.double()
            spikes[name] = x
        elif isinstance(m, nn.MaxPool1d | nn.MaxPool2d | nn.AvgPool1d | nn.AvgPool2d):
            dims = 1 if isinstance(m, nn.MaxPool1d | nn.AvgPool1d) else 2
            k, s, p = _pool_args(m, dims)
            fn = {(True, 1): F.max_pool1d, (True, 2): F.max_pool2d, (False, 1): F.avg_pool1d,
                  (False, 2): F.avg_pool2d}[isinstance(m, nn.MaxPool1d | nn.MaxPool2d), dims]
            y = fn(x.flatten(0, 1), k, s, p)
            x = y.view(T, B, *y.shape[1:])
        elif isinstance(m, nn.Flatten):
            x = x.flatten(2)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            raise AssertionError("BN left in")
    return x, spikes, ties


def _x(model, T=4, B=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, *model.in_shape, generator=g)


class NoFloat(TorchDispatchMode):
    """Raise on any ATen op that takes or makes a floating-point (or complex) tensor."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
                raise AssertionError(f"floating-point operand in {func}")
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
                raise AssertionError(f"floating-point result of {func}")
        return out


# ------------------------------------------------------------------------------------- the tests


CASES = {
    "conv1d-lif-tensor": ("conv1d_net", "lif", {}, {}),
    "conv1d-if-hard-channel": ("conv1d_net", "if", {"per_channel": True},
                               {"per_channel": True}),
    "conv1d-lif-shared-channel": ("conv1d_net", "lif", {"v_reset": None, "tau": 4.0},
                                  {"per_channel": True, "shared": True}),
    "conv2d-plif-avg": ("conv_net", "plif", {"per_channel": True, "v_reset": None},
                        {"per_channel": True, "pool": "avg"}),
    "conv2d-lif-max": ("conv_net", "lif", {"decay_input": False, "v_reset": None},
                       {"pool": "max", "wbits": 3, "ubits": 5}),
    "mlp-if-nobias": ("mlp", "if", {"v_reset": None}, {"per_channel": True, "bias": False}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bit_exact_against_the_float64_reference(case):
    name, neuron, params, q = CASES[case]
    model = make(name, neuron=neuron, neuron_params=params, theta=3, **q)
    if neuron == "plif":  # per-channel decays 1/2 and 1/sigmoid(-log 3) (rounded at N = 16)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, PLIF):
                    m.w.copy_(torch.tensor([0.0, -math.log(3.0)]).repeat(m.w.numel())[:m.w.numel()])
    program = to_integer(model)
    x = _x(model)
    acc_ref, spikes_ref, ties = reference(model, x)
    acc, spikes = program(program.encode(x), record=True)
    assert acc.dtype == torch.int64 and acc.shape == acc_ref.shape
    assert torch.equal(acc, acc_ref.to(torch.int64))
    assert list(spikes) == list(spikes_ref)
    for key, s in spikes.items():
        assert torch.equal(s, spikes_ref[key].to(torch.int64)), key
    rate = torch.cat([s.flatten() for s in spikes.values()]).double().mean()
    assert 0.02 < rate < 0.9 and ties > 0  # the comparison saw spikes, silence and ties
    logits = program.logits(x)
    grid = program.scale
    assert torch.equal(logits, acc_ref.float() * grid)
    assert torch.equal(program(program.encode(x), batch_size=3), acc)  # chunking changes nothing


def test_ties_fire_and_the_crafted_trains():
    """An identity layer feeding IF (soft, hard) and LIF (τ = 2) neurons with θ = 5: inputs
    that put the charge exactly on θ fire."""
    for neuron, drive, expect in (
        (IF(v_threshold=5 / 8, v_reset=None), [5, 4, 1, 6, 3, 2], [1, 0, 1, 1, 0, 1]),
        (IF(v_threshold=5 / 8, v_reset=0.0), [5, 4, 1, 6, 3, 2], [1, 0, 1, 1, 0, 1]),
        (LIF(tau=2.0, v_threshold=5 / 8, v_reset=None), [10, 9, 6, 0, 11, 0],
         [1, 0, 1, 0, 1, 0]),
    ):
        model = nn.Sequential(OrderedDict(fc=Linear(1, 1), act=neuron, out=Linear(1, 1)))
        with torch.no_grad():
            model.fc.weight.fill_(1 / 8)
            model.fc.bias.zero_()
            model.out.weight.fill_(1.0)
            model.out.bias.zero_()
        for m, s_in, ws in ((model.fc, 1.0, 1 / 8), (model.out, 1.0, 1.0)):
            _set(m, "input_scale", torch.tensor(s_in))
            _set(m, "weight_scale", torch.tensor(ws))
        _set(model.fc, "input_bits", torch.tensor(8))
        _set(neuron, "membrane_bits", torch.tensor(8))
        _set(neuron, "membrane_scale", torch.tensor(1 / 8))
        _set(neuron, "input_grid", torch.tensor(1 / 8))
        program = to_integer(model, in_shape=(1,))
        assert program.ops[1].neuron.threshold == 5
        x = torch.tensor(drive, dtype=torch.int64).view(-1, 1, 1)
        acc, spikes = program(x, record=True)
        assert spikes["act"].flatten().tolist() == expect, neuron
        acc_ref, _, ties = reference(model, x.float())
        assert torch.equal(acc, acc_ref.to(torch.int64)) and ties >= 2


def test_forward_uses_integer_dtypes_only():
    model = make("conv_net", neuron="lif", pool="avg", per_channel=True)
    model.features[0].act.spike_mask = (torch.rand(4, 8, 8) > 0.3).float()
    program = to_integer(model)
    codes = program.encode(_x(model))
    with NoFloat():
        acc, _ = program(codes, record=True)
    assert acc.dtype == torch.int64
    with pytest.raises(AssertionError, match="floating-point"), NoFloat():
        torch.ones(2, dtype=torch.int64) * torch.tensor(0.5)  # the mode does catch float ops
    with pytest.raises(AssertionError, match="floating-point"), NoFloat():
        program.logits(_x(model))  # the scaled logits are float: outside __call__


def test_spike_mask_silences_pruned_neurons():
    model = make("conv1d_net", per_channel=True, theta=2)
    act = model.features[1].act
    mask = torch.ones(8, 6)
    mask[[1, 4]] = 0
    mask[0, :3] = 0
    act.spike_mask = mask
    program = to_integer(model)
    op = next(op for op in program.ops if op.name == "features.1.act")
    assert op.spike_mask.dtype == torch.int8
    x = _x(model)
    acc, spikes = program(program.encode(x), record=True)
    s = spikes["features.1.act"]
    assert int(s[:, :, mask == 0].sum()) == 0 and int(s.sum()) > 0
    acc_ref, spikes_ref, _ = reference(model, x)
    assert torch.equal(acc, acc_ref.long()) and torch.equal(s, spikes_ref["features.1.act"].long())


def test_avg_pool_is_a_sum_pool_and_checks_the_next_input_scale():
    model = make("conv_net", pool="avg")
    program = to_integer(model)
    kinds = [op.kind for op in program.ops]
    assert kinds == ["conv", "neuron", "sumpool", "conv", "neuron", "sumpool", "flatten",
                     "linear"]
    assert float(model.features[1].conv.input_scale) == 0.25
    model.features[1].conv.input_scale = torch.tensor(1.0)
    with pytest.raises(ValueError, match=r"^features\.1\.conv: input_scale 1 does not match .*"
                                         r"sum-pooled by features\.0\.pool \(area 4\)"):
        to_integer(model)


def test_per_channel_and_per_tensor_scales_are_kept():
    for per_channel in (False, True):
        program = to_integer(make("mlp", per_channel=per_channel))
        fc = program.ops[0]
        assert isinstance(fc, IntLinear)
        assert fc.weight_scale.shape == ((16,) if per_channel else ())
        assert program.scale.shape == ((3,) if per_channel else ())
        assert fc.codes.dtype == torch.int8 and fc.bias.dtype == torch.int32


def test_describe_reports_bits_and_bytes():
    program = to_integer(make("conv1d_net", wbits=3, ubits=6))
    d = program.describe()
    assert [r["name"] for r in d["layers"]] == ["features.0.conv", "features.1.conv",
                                                "classifier.fc0", "classifier.fc"]
    assert all(r["weight_bits"] == 3 for r in d["layers"])
    assert [r["membrane_bits"] for r in d["layers"]] == [6, 6, 6, None]
    n_w = sum(op.codes.numel() for op in program.ops if isinstance(op, IntConv | IntLinear))
    assert d["weight_bytes"] == n_w * 3 / 8 and d["weight_bytes_stored"] == n_w
    assert d["state_bytes"] == (6 * 11 + 8 * 6 + 12) * 6 / 8  # neurons × bits / 8
    assert all(r["acc_bound"] < 2**31 for r in d["layers"])
    assert "features.0.conv" in repr(program)


# ------------------------------------------------------------------------------------ refusals


def _refused(model, pattern):
    with pytest.raises(ValueError, match=pattern) as e:
        to_integer(model)
    assert "\n" not in str(e.value)


def test_refusals_name_the_module():
    bn = quantize_(build("conv1d_net", in_channels=2, input_size=24, classes=5, widths=[6, 8]))
    _refused(bn, r"^features\.0\.bn: BatchNorm left in")

    m = make()
    m.features[0].act.membrane_bits = None
    _refused(m, r"^features\.0\.act: neuron without membrane_bits cannot be lowered \(quantize "
                r"the membrane")
    m = make()
    m.features[1].conv.input_scale = None
    _refused(m, r"^features\.1\.conv: layer without input_scale cannot be lowered")
    m = make()
    m.features[0].conv.input_bits = None
    _refused(m, r"^features\.0\.conv: the first quantized layer has no input_bits")
    m = make()
    m.classifier.act0.reset = Reset(v_reset=0.5, detach=False)
    _refused(m, r"^classifier\.act0: hard reset to v_reset=0\.5")
    m = make()
    m.features[1].act.input_grid = m.features[1].act.input_grid * 2
    _refused(m, r"^features\.1\.act: input_grid does not match the grid of features\.1\.conv")
    m = make()
    m.features[1].act = nn.ReLU()
    _refused(m, r"^features\.1\.act: ReLU cannot be lowered")
    m = make()
    del m.features[1].act
    _refused(m, r"^classifier\.flatten: Flatten between features\.1\.conv and its neuron")
    m = make("mlp")
    del m.features[0].act
    _refused(m, r"^features\.1\.fc: takes the accumulator of features\.0\.fc")

    sew = build("sew_resnet", in_channels=1, input_size=8, classes=3, widths=[4], blocks=[1])
    _refused(sew, r"^features\.stage0\.0: SEWBlock adds a residual")


def test_range_refusals():
    m = make(wbits=16, input_bits=16)
    _refused(m, r"^features\.0\.conv: the accumulator can reach \d+ \(>= 2\^31")


def test_float_input_is_refused_with_a_pointer_to_encode():
    model = make()
    program = to_integer(model)
    x = _x(model)
    with pytest.raises(ValueError, match=r"got a torch\.float32 tensor: quantize it with "
                                         r"\.encode\(x_seq\) first$"):
        program(x)
    with pytest.raises(ValueError, match="outside the 8-bit range"):
        program(torch.full((1, 1, 2, 24), 200, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"expects x_seq of shape \[T, B, 2, 24\]"):
        program(torch.zeros(1, 1, 2, 23, dtype=torch.int8))


def test_root_name():
    assert sc.to_integer is to_integer


# ----------------------------------------------------------------------------------- save/load


def _programs_equal(a: IntegerSNN, b: IntegerSNN) -> None:
    assert a.in_shape == b.in_shape and a.input_bits == b.input_bits
    assert torch.equal(a.input_scale, b.input_scale)
    assert [(o.kind, o.name) for o in a.ops] == [(o.kind, o.name) for o in b.ops]
    for x, y in zip(a.ops, b.ops, strict=True):
        assert x.spec() == y.spec()
        tx, ty = x.tensors(), y.tensors()
        assert list(tx) == list(ty)
        for k in tx:
            assert tx[k].dtype == ty[k].dtype and torch.equal(tx[k], ty[k]), (x.name, k)


def test_save_load_round_trip(tmp_path):
    model = make("conv_net", neuron="plif", neuron_params={"per_channel": True},
                 per_channel=True, pool="avg")
    model.features[1].act.spike_mask = (torch.rand(6, 4, 4) > 0.5).float()
    program = to_integer(model)
    path = save_integer(program, tmp_path / "art")
    loaded = load_integer(path)
    _programs_equal(program, loaded)
    x = program.encode(_x(model))
    assert torch.equal(loaded(x), program(x))
    assert sorted(p.name for p in path.iterdir()) == ["integer.json", "integer.safetensors"]
    assert load_integer(save_integer(loaded, path)).describe() == program.describe()


def _corrupt(path, edit):
    file = path / TENSOR_FILE
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file)


@pytest.mark.parametrize("edit, pattern", [
    (lambda t: t["features.0.conv.codes"].view(-1).__setitem__(0, 9),
     r"features\.0\.conv\.codes holds code 9, outside the 4-bit range ±7"),
    (lambda t: t.pop("features.1.act.threshold"),
     r"tensor 'features\.1\.act\.threshold' is missing"),
    (lambda t: t.__setitem__("features.0.conv.codes", t["features.0.conv.codes"][:, :1].clone()),
     r"tensor 'features\.0\.conv\.codes' has shape \[6, 1, 5\], the description says "
     r"\[6, 2, 5\]"),
    (lambda t: t.__setitem__("features.0.conv.bias", t["features.0.conv.bias"].long()),
     r"tensor 'features\.0\.conv\.bias' has dtype int64"),
    (lambda t: t.__setitem__("extra", torch.zeros(1)), r"tensor 'extra' is not in"),
    (lambda t: t["classifier.fc.codes"].view(-1).__setitem__(0, 1 - t["classifier.fc.codes"]
                                                              .view(-1)[0]),
     r"size or sha256 differs"),
])
def test_corrupted_integer_artifacts_are_refused(tmp_path, edit, pattern):
    path = save_integer(to_integer(make()), tmp_path / "art")
    _corrupt(path, edit)
    with pytest.raises(ArtifactError, match=pattern) as e:
        load_integer(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path / TENSOR_FILE) in msg


def test_a_description_whose_shapes_do_not_chain_is_refused(tmp_path):
    """Tensors and description agree with each other but not with the ops' shapes."""
    import json

    path = save_integer(to_integer(make()), tmp_path / "art")
    key = "features.1.conv.codes"
    _corrupt(path, lambda t: t.__setitem__(key, t[key][:, :5].contiguous()))
    doc = json.loads((path / "integer.json").read_text())
    doc["tensors"][key]["shape"] = [8, 5, 3]
    (path / "integer.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match=r"features\.1\.conv: a conv1d over 5 channels gets "
                                            r"samples of shape \[6, 11\]"):
        load_integer(path)
    (path / "integer.json").unlink()
    with pytest.raises(ArtifactError, match="missing integer artifact file"):
        load_integer(path)


def test_integer_ops_are_the_listed_kinds():
    program = to_integer(make("conv1d_net"))
    assert isinstance(program.ops[0], IntConv) and isinstance(program.ops[1], IntNeuronOp)
