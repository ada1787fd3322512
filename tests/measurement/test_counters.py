"""count(): exact SOPs / MACs / dense MACs against brute-force loops, and its contract."""

import copy
import itertools
import json

import pytest
import torch
from torch import nn

from spikecompress import snn
from spikecompress.measurement.counters import Counts, count
from spikecompress.measurement.spikes import SpikeMonitor
from spikecompress.models import build


def _prune_(layer: nn.Module, fraction: float = 0.5) -> None:
    with torch.no_grad():
        layer.weight[torch.rand_like(layer.weight) < fraction] = 0.0


def _spikes(*shape: int, p: float = 0.3) -> torch.Tensor:
    return (torch.rand(*shape) < p).float()


def _brute_conv(x_seq, weight, stride, padding, dilation, groups, zero_w=False):
    """Plain-Python loops over steps, samples, output positions, channels and kernel taps.

    Returns (pairs of non-zero input and (non-zero) weight, dense pairs of in-bounds inputs).
    """
    x = x_seq.flatten(0, 1).tolist()  # [T·B, C, *S] as nested lists
    w = weight.tolist()
    nd = weight.dim() - 2
    c_out, c_in_g, kernel = weight.shape[0], weight.shape[1], weight.shape[2:]
    size = x_seq.shape[3:]
    out = [(size[i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
           for i in range(nd)]
    ops = dense = 0
    for sample, co in itertools.product(x, range(c_out)):
        g = co // (c_out // groups)
        for o, k, ci in itertools.product(itertools.product(*map(range, out)),
                                          itertools.product(*map(range, kernel)), range(c_in_g)):
            pos = [o[i] * stride[i] + k[i] * dilation[i] - padding[i] for i in range(nd)]
            if not all(0 <= pos[i] < size[i] for i in range(nd)):
                continue
            dense += 1
            v, wv = sample[g * c_in_g + ci], w[co][ci]
            for i in range(nd):
                v, wv = v[pos[i]], wv[k[i]]
            ops += int(v != 0 and (wv != 0 or zero_w))
    return ops, dense


@pytest.mark.parametrize("zero_w", [False, True])
@pytest.mark.parametrize("dims", [1, 2])
def test_conv_matches_brute_force(dims, zero_w):
    geometry = {"stride": 2, "padding": 1, "dilation": 2, "groups": 2}
    if dims == 1:
        conv, x = snn.Conv1d(4, 6, 3, bias=True, **geometry), _spikes(2, 3, 4, 11)
    else:
        conv, x = snn.Conv2d(4, 6, (3, 2), bias=True, **geometry), _spikes(2, 3, 4, 7, 6)
    _prune_(conv)
    c = count(conv, x, count_zero_weights=zero_w)
    ops, dense = _brute_conv(x, conv.weight, conv.stride, conv.padding, conv.dilation, 2, zero_w)
    assert (c.sops, c.macs, c.dense_macs) == (ops, 0, dense)
    assert c.layers[""].input_kind == "binary"
    if not zero_w:
        dense_ops, _ = _brute_conv(x, conv.weight, conv.stride, conv.padding, conv.dilation, 2,
                                   zero_w=True)
        assert ops < dense_ops  # pruned weights are not counted by default


def test_conv_counts_same_on_plain_module_in_seqwrap():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2)
    _prune_(conv)
    x = _spikes(3, 2, 4, 9, 8)
    ours = snn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2)
    ours.load_state_dict(conv.state_dict())
    a, b = count(snn.SeqWrap(conv), x), count(ours, x)
    assert (a.sops, a.dense_macs) == (b.sops, b.dense_macs)
    assert a.sops == _brute_conv(x, conv.weight, conv.stride, conv.padding, conv.dilation, 2)[0]


@pytest.mark.parametrize("plain", [False, True])
def test_linear_counts_nonzero_weights_per_input_spike(plain):
    fc = nn.Linear(7, 5) if plain else snn.Linear(7, 5)
    _prune_(fc)
    x = _spikes(3, 4, 7)
    c = count(snn.SeqWrap(fc) if plain else fc, x)
    nnz_col = (fc.weight != 0).sum(0).tolist()
    expected = sum(nnz_col[i] for row in x.flatten(0, 1).tolist() for i, v in enumerate(row) if v)
    assert (c.sops, c.macs, c.dense_macs) == (expected, 0, 3 * 4 * 7 * 5)
    assert count(fc, x, count_zero_weights=True).sops == int(x.sum()) * 5


def test_hand_linear_example():
    fc = snn.Linear(3, 2, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [3.0, 4.0, 5.0]]))  # nnz per column 2, 1, 2
    x = torch.tensor([[[1.0, 1.0, 0.0]], [[0.0, 1.0, 1.0]]])  # [T=2, B=1, 3]
    c = count(fc, x)
    assert c.sops == (2 + 1) + (1 + 2)
    assert c.layers[""].params == 6 and c.layers[""].params_nonzero == 5


def test_pooling_bn_flatten_add_no_operations():
    conv = snn.Conv2d(2, 3, 3, padding=1, bias=False)
    model = nn.Sequential(snn.MaxPool2d(2), conv, snn.BatchNorm2d(3), snn.AvgPool2d(2),
                          snn.Flatten())
    x = _spikes(2, 3, 2, 8, 8)
    c = count(model, x)
    alone = count(conv, snn.MaxPool2d(2)(x))
    assert list(c.layers) == ["1"]
    assert (c.sops, c.macs, c.dense_macs) == (alone.sops, alone.macs, alone.dense_macs)


def test_sew_add_input_is_counted_as_macs():
    conv = snn.Conv2d(3, 4, 3, padding=1)
    _prune_(conv)
    x = _spikes(2, 2, 3, 6, 6) + _spikes(2, 2, 3, 6, 6)  # SEW ADD: values 0, 1, 2
    assert x.max() == 2
    c = count(conv, x)
    ops, dense = _brute_conv(x, conv.weight, conv.stride, conv.padding, conv.dilation, 1)
    assert (c.sops, c.macs, c.dense_macs) == (0, ops, dense)
    assert c.layers[""].input_kind == "real"


def test_ternary_input_is_counted_as_sops():
    conv = snn.Conv1d(2, 3, 3, padding=1)
    x = _spikes(2, 2, 2, 9) - _spikes(2, 2, 2, 9)  # values -1, 0, 1
    c = count(conv, x)
    ops, _ = _brute_conv(x, conv.weight, conv.stride, conv.padding, conv.dilation, 1)
    assert (c.sops, c.macs, c.layers[""].input_kind) == (ops, 0, "ternary")


def test_real_first_layer_and_static_input_once():
    model = build("conv_net", in_channels=1, input_size=8, classes=10, widths=[4, 8])
    image = torch.rand(3, 1, 8, 8)
    x_seq = image.expand(4, *image.shape)  # direct coding: the same image at every step
    every, once = count(model, x_seq), count(model, x_seq, static_input_once=True)
    first, first_once = every.layers["features.0.conv"], once.layers["features.0.conv"]
    ops, dense = _brute_conv(x_seq, model.features[0].conv.weight, (1, 1), (1, 1), (1, 1), 1)
    assert (first.input_kind, first.sops, first.macs, first.dense_macs) == ("real", 0, ops, dense)
    assert (first_once.macs, first_once.dense_macs) == (ops // 4, dense // 4)
    assert once.layers["features.1.conv"].sops == every.layers["features.1.conv"].sops
    assert every.macs == first.macs and not every.count_zero_weights and once.static_input_once
    varying = torch.rand(4, 3, 1, 8, 8)
    assert count(model, varying, static_input_once=True).macs == count(model, varying).macs


def _plain_twin(model: nn.Module) -> nn.Module:
    """The same model with every snn conv / linear replaced by a plain torch module in SeqWrap."""
    for name, m in list(model.named_modules()):
        if isinstance(m, snn.Conv2d | snn.Linear):
            bias = m.bias is not None
            if isinstance(m, nn.Conv2d):
                plain = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                                  padding=m.padding, dilation=m.dilation, groups=m.groups,
                                  bias=bias)
            else:
                plain = nn.Linear(m.in_features, m.out_features, bias=bias)
            plain.load_state_dict(m.state_dict())
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, snn.SeqWrap(plain))
    return model


@pytest.mark.parametrize("name", ["conv_net", "sew_resnet"])
def test_built_model_counts_same_with_seqwrap_convs(name):
    spec = {"in_channels": 1, "input_size": 8, "classes": 10, "widths": [4, 8]}
    if name == "sew_resnet":
        spec["blocks"] = [1, 1]
    model = build(name, **spec)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.uniform_(-0.5, 1.0)  # active enough that every layer sees spikes
                _prune_(m, 0.3)
    x = torch.rand(3, 5, 1, 8, 8) * 2
    ours = count(model, x)
    twin = count(_plain_twin(model), x)
    assert ours.to_dict()["sops"] > 0 and ours.macs > 0
    strip = {k.removesuffix(".module"): v.to_dict() for k, v in twin.layers.items()}
    assert strip == {k: v.to_dict() for k, v in ours.layers.items()}
    assert (twin.sops, twin.macs, twin.dense_macs) == (ours.sops, ours.macs, ours.dense_macs)
    if name == "sew_resnet":  # the ADD outputs (0..2) feed the next block's conv as MACs
        assert ours.layers["features.stage1.0.conv1"].input_kind == "real"


def test_spikes_equal_spike_monitor():
    model = build("conv_net", in_channels=1, input_size=8, classes=10, widths=[4, 8])
    x = torch.rand(4, 6, 1, 8, 8) * 3
    c = count(model, x)
    model.eval()
    with SpikeMonitor(model) as mon, torch.no_grad():
        model(x)
    snn.reset_state(model)
    assert mon.spikes == c.spikes > 0
    for name, rec in mon.layers.items():
        assert (c.layers[name].spikes, c.layers[name].neuron_updates) == (
            rec.spikes, rec.neuron_steps)
        assert c.layers[name].firing_rate == pytest.approx(rec.firing_rate)
    assert c.per_sample("spikes") == mon.spikes_per_sample()


def test_int64_exact_above_2_to_24():
    torch.manual_seed(1)
    conv = snn.Conv2d(16, 33, 3, padding=1, bias=False)
    _prune_(conv, 0.1)
    x = _spikes(3, 2, 16, 40, 40, p=0.9)
    mask = (conv.weight != 0).double()
    exact = int(torch.nn.functional.conv2d(x.flatten(0, 1).double(), mask, padding=1).sum())
    assert exact > 2**24 and float(torch.tensor(exact, dtype=torch.float32)) != exact
    c = count(conv, x)
    assert c.sops == exact and isinstance(c.sops, int)
    assert c.dense_macs == 6 * 33 * 16 * (9 * 38 * 38 + 4 * 6 * 38 + 4 * 4)


def test_hooks_removed_modes_and_state_restored_no_grad_leak():
    model = build("conv_net", in_channels=1, input_size=8, classes=10, widths=[4, 8])
    model.train()
    model.features[0].bn.eval()
    modes = {n: m.training for n, m in model.named_modules()}
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    x = torch.rand(2, 3, 1, 8, 8, requires_grad=True)
    c = count(model, x)
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(getattr(m, "v", None) is None for m in model.modules())
    assert x.grad is None and all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled()
    assert c.neuron_updates == 2 * 3 * (4 * 8 * 8 + 8 * 4 * 4)
    with pytest.raises(ValueError):
        count(model, torch.rand(2, 3, 2, 8, 8))  # wrong channels: hooks still removed
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks


def test_counts_record_json_and_neurobench_names():
    model = build("conv_net", in_channels=1, input_size=8, classes=10, widths=[4, 8])
    _prune_(model.features[1].conv)
    c = count(model, torch.rand(2, 4, 1, 8, 8))
    d = json.loads(json.dumps(c.to_dict()))
    assert d["sops"] == c.sops and d["layers"]["features.0.act"]["firing_rate"] is not None
    assert set(d["layers"]) == set(c.layers) and isinstance(c, Counts)
    assert c.per_sample("sops") == c.sops / 4 and c.time_steps == 2 and c.samples == 4
    with pytest.raises(ValueError):
        c.per_sample("energy")
    nb = c.to_neurobench()
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert nb["ConnectionSparsity"] == zeros / sum(w.numel() for w in weights) > 0.05
    assert nb["ParameterCount"] == sum(p.numel() for p in model.parameters())
    tensors = [*model.parameters(), *model.buffers()]
    assert nb["Footprint"] == sum(t.numel() * t.element_size() for t in tensors)
    assert nb["ActivationSparsity"] == pytest.approx(1 - c.spikes / c.neuron_updates)
    assert (nb["Effective_ACs"], nb["Effective_MACs"], nb["Dense"]) == (
        c.sops / 4, c.macs / 4, c.dense_macs / 4)


@pytest.mark.parametrize("geometry", [
    {"padding": "same", "dilation": 2}, {"padding": "valid", "stride": 2},
    {"padding": 2, "padding_mode": "reflect"}, {"padding": 1, "padding_mode": "circular",
                                                "stride": 2},
])
def test_string_and_copying_padding_match_the_mask_convolution(geometry):
    conv = nn.Conv2d(3, 4, (3, 4) if geometry["padding"] != "same" else 4, bias=False,
                     **geometry).double()
    x = _spikes(2, 2, 3, 7, 9).double()
    _prune_(conv)
    c = count(snn.SeqWrap(conv), x)
    with torch.no_grad():
        ones, mask = torch.ones_like(conv.weight), (conv.weight != 0).double()
        conv.weight.copy_(mask)
        exact = int(conv(x.flatten(0, 1)).sum())
        conv.weight.copy_(ones)
        dense = int(conv(torch.ones_like(x.flatten(0, 1))).sum())
    assert (c.sops, c.dense_macs) == (exact, dense)


def test_counting_again_follows_weight_masks_and_geometry():
    """A cache shared across count() calls keeps reach maps: pruning in place (``.data`` too,
    or a mask parametrization) or a new stride must still give a never-counted copy's counts."""
    from spikecompress.compress.prune.masks import set_mask_

    torch.manual_seed(0)
    model = build("conv_net", in_channels=1, input_size=8, classes=10, widths=[4, 8])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.uniform_(-0.5, 1.0)  # active enough that every layer sees spikes
    x = torch.rand(2, 3, 1, 8, 8) * 2
    conv0, conv1 = model.features[0].conv, model.features[1].conv
    cache: dict = {}
    first = count(model, x, cache=cache)
    fresh = count(copy.deepcopy(model), x).to_dict()
    assert count(model, x, cache=cache).to_dict() == first.to_dict() == fresh
    conv1.weight.data[:, :2] = 0.0  # no version bump
    set_mask_(conv0, (torch.rand_like(conv0.weight) < 0.5).float())
    pruned = count(model, x, cache=cache)
    assert pruned.to_dict() == count(copy.deepcopy(model), x).to_dict()
    assert pruned.layers["features.1.conv"].sops < first.layers["features.1.conv"].sops
    set_mask_(conv0, (torch.rand_like(conv0.weight) < 0.5).float())  # updated in place
    assert count(model, x, cache=cache).to_dict() == count(copy.deepcopy(model), x).to_dict()
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    conv, xs = snn.Conv1d(2, 3, 3, padding=1), _spikes(2, 2, 2, 9)
    _prune_(conv)
    assert count(conv, xs, cache=cache).sops == _brute_conv(xs, conv.weight, (1,), (1,), (1,), 1)[0]
    conv.stride = (2,)
    ops, dense = _brute_conv(xs, conv.weight, (2,), (1,), (1,), 1)
    again = count(conv, xs, cache=cache)
    assert (again.sops, again.dense_macs) == (ops, dense)
