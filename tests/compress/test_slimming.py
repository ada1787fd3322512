"""SNN network slimming (Liu et al. 2017 transplanted): L1 on BN γ, |γ| threshold, removal."""

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _exact import dyadic_
from spikecompress.compress import attach
from spikecompress.compress.contract import TINY_MODELS as TINY
from spikecompress.compress.contract import check_method
from spikecompress.compress.prune.channel_select import floor_count
from spikecompress.compress.prune.groups import channel_groups
from spikecompress.compress.prune.slimming import NetworkSlimming, bn_l1_penalty
from spikecompress.compress.prune.surgery import consumer_inputs
from spikecompress.data import DataConfig, load_data
from spikecompress.models import build, from_spec
from spikecompress.snn import reset_state

ARCHS = {
    "conv_net": dict(name="conv_net", in_channels=1, input_size=8, widths=[6, 8], hidden=[6]),
    "sew_resnet": dict(name="sew_resnet", in_channels=1, input_size=8, widths=[6, 8],
                       blocks=[2, 1]),
    "resnet": dict(name="resnet", in_channels=1, input_size=8, widths=[6, 8], blocks=[1, 1],
                   hidden=[6]),
}

def _plain_name(name):  # "bn.parametrizations.weight.original" -> "bn.weight"
    return re.sub(r"\.parametrizations\.(\w+)\.original$", r".\1", name)


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


def _model(arch, seed=0, **changes):
    """A model whose every channel matters: random BN statistics, affine terms and γ signs, all
    dyadic like the weights (tests/_exact.py), so that a pruned and a dense model, which sum
    different terms in different orders, agree bit for bit on any CPU and thread count."""
    torch.manual_seed(seed)
    model = build(classes=10, **{**ARCHS[arch], **changes})
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.01, 0.1)
            m.weight.data.normal_(0.0, 1.0)
            m.bias.data.normal_(0.0, 0.5)
    return dyadic_(model)


def _spikes(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(4, 3, *model.in_shape, generator=g) < 0.5).float()  # [T, B, ...]


def _bns(model):
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def _grads(model, session, x, y):
    model.zero_grad()
    out = model(x)
    loss = F.cross_entropy(out.mean(0), y)
    if session is not None:
        loss = loss + session.loss(x, out)
    loss.backward()
    reset_state(model)
    return {_plain_name(n): p.grad.clone() for n, p in model.named_parameters()}


def test_penalty_adds_exactly_lambda_sign_gamma_to_gamma_and_nothing_else():
    model = _model("sew_resnet").train()
    _bns(model)["features.stem.bn"].weight.data[:2] = 0.0  # sign(0) = 0: no push at γ = 0
    plain = copy.deepcopy(model)
    lam = 1e-2
    session = attach(model, [NetworkSlimming(penalty=lam, exclude=["features\\.stage1\\..*"])])
    x, y = _spikes(model), torch.arange(3)
    without, with_ = _grads(plain, None, x, y), _grads(model, session, x, y)
    assert without.keys() == with_.keys()
    penalised = {f"{n}.weight" for g in channel_groups(plain) if not g.name.startswith(
        "features.stage1") for n in g.bns}
    assert penalised == {"features.stem.bn.weight", "features.stage0.0.bn1.weight",
                         "features.stage0.0.bn2.weight", "features.stage0.1.bn1.weight",
                         "features.stage0.1.bn2.weight"}
    params = dict(plain.named_parameters())
    for name, g in with_.items():
        extra = lam * torch.sign(params[name].detach()) if name in penalised else 0.0
        assert torch.equal(g, without[name] + extra), name
    assert torch.equal(with_["features.stem.bn.weight"][:2], without["features.stem.bn.weight"][:2])
    assert not torch.equal(with_["features.stem.bn.weight"], without["features.stem.bn.weight"])


def test_bn_l1_penalty_is_the_sum_of_absolute_gammas():
    model = _model("conv_net")
    groups = channel_groups(model)
    want = sum(m.weight.abs().sum() for m in _bns(model).values())
    assert torch.allclose(bn_l1_penalty(model, groups), want)
    assert torch.allclose(bn_l1_penalty(model, groups[:1]), model.features[0].bn.weight.abs().sum())


def _slim(model, **fields):
    method = NetworkSlimming(**fields)
    session = attach(model, [method])
    return session.finalize().eval(), method


@pytest.mark.parametrize("arch", list(ARCHS))
def test_pruned_output_equals_dense_with_removed_consumer_inputs_zeroed(arch):
    model = _model(arch)
    dense, untouched = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
    pruned, method = _slim(model, channel_sparsity=0.5, floor=0.1)
    drop = {n: (m == 0).nonzero().flatten().tolist() for n, m in method.masks_.items()}
    assert sum(map(len, drop.values())) > 0
    modules = dict(dense.named_modules())
    for name, idxs in consumer_inputs(dense, drop).items():
        modules[name].weight.data[:, idxs] = 0
    x = _spikes(pruned)
    got = pruned(x)
    assert torch.equal(dense(x), got)
    assert not torch.equal(untouched(x), got)  # the removed channels did matter


def test_residual_coupled_channels_shrink_together_and_the_model_still_runs():
    model = _model("sew_resnet", widths=[8, 16], blocks=[2, 1])
    before = sum(p.numel() for p in model.parameters())
    pruned, method = _slim(model, channel_sparsity=0.5)
    f = pruned.features
    stem = int(method.masks_["features.stem.conv"].sum())
    assert 0 < stem < 8
    assert {f.stem.conv.out_channels, f.stage0[0].conv2.out_channels,
            f.stage0[1].conv2.out_channels, f.stage0[0].conv1.in_channels,
            f.stage1[0].downsample.conv.in_channels} == {stem}
    out = int(method.masks_["features.stage1.0.conv2"].sum())
    assert f.stage1[0].conv2.out_channels == f.stage1[0].downsample.conv.out_channels == out
    assert pruned.spec["widths"] == [stem, out]
    x = _spikes(pruned)
    assert pruned(x).shape == (4, 3, 10)
    reset_state(pruned)  # the membranes persist across calls
    rebuilt = from_spec(pruned.spec)
    rebuilt.load_state_dict(pruned.state_dict())
    assert torch.equal(rebuilt.eval()(x), pruned(x))
    after = sum(p.numel() for p in pruned.parameters())
    total = sum(m.numel() for m in method.masks_.values())
    kept = sum(int(m.sum()) for m in method.masks_.values())
    assert method.removed_["channels"] == pytest.approx(1 - kept / total)
    assert method.removed_["channels"] == pytest.approx(0.5)
    assert method.removed_["params"] == pytest.approx(1 - after / before)


def _set_gammas(model, values):
    for name, v in values.items():
        _bns(model)[name].weight.data.copy_(torch.tensor(v))


def test_the_floor_keeps_every_group_at_least_its_floor():
    model = _model("conv_net", widths=[8, 16], hidden=[12])
    _set_gammas(model, {"features.0.bn": [1e-3 * (i + 1) for i in range(8)],
                        "features.1.bn": [1.0 + i for i in range(16)],
                        "classifier.bn0": [2e-3 * (i + 1) for i in range(12)]})
    pruned, method = _slim(copy.deepcopy(model), channel_sparsity=0.75, floor=0.3, scope="global")
    kept = {n: int(m.sum()) for n, m in method.masks_.items()}
    floors = {"features.0.conv": floor_count(8, 0.3), "features.1.conv": floor_count(16, 0.3),
              "classifier.fc0": floor_count(12, 0.3)}
    assert floors == {"features.0.conv": 3, "features.1.conv": 5, "classifier.fc0": 4}
    # 36 channels, keep 9: the floors take 12, so only they survive, the best ones of each group
    assert kept == floors
    assert method.masks_["features.0.conv"].tolist() == [0] * 5 + [1] * 3
    assert pruned.spec["widths"] == [3, 5] and pruned.spec["hidden"] == [4]
    _, loose = _slim(copy.deepcopy(model), channel_sparsity=0.75, floor=0.0, scope="global")
    assert {n: int(m.sum()) for n, m in loose.masks_.items()} == {
        "features.0.conv": 1, "features.1.conv": 7, "classifier.fc0": 1}  # no floor: the big-γ
    # group keeps the budget and the others 1 each


def test_the_global_threshold_removes_exactly_the_lowest_mean_abs_gamma_channels():
    model = _model("sew_resnet", widths=[6, 8], blocks=[1, 1])
    g = torch.Generator().manual_seed(5)
    bns = _bns(model)
    sizes = {n: m.num_features for n, m in bns.items()}
    values = torch.rand(sum(sizes.values()), generator=g) + 0.1  # distinct |γ|, no mean ties
    signs = torch.where(torch.rand(len(values), generator=g) < 0.5, -1.0, 1.0)
    start = 0
    for n, size in sizes.items():
        _set_gammas(model, {n: (values * signs)[start:start + size].tolist()})
        start += size
    groups = channel_groups(model)
    scores = {grp.name: torch.stack([bns[b].weight.detach().abs() for b in grp.bns]).mean(0)
              for grp in groups}  # [#BN, C] -> [C]
    flat = torch.cat(list(scores.values()))
    k = int(len(flat) * 0.4)
    threshold = flat.sort(descending=True).values[k - 1]
    gammas = {n: m.weight.detach().clone() for n, m in bns.items()}
    pruned, method = _slim(model, channel_sparsity=0.6, floor=0.0, scope="global")
    for grp in groups:
        want = (scores[grp.name] >= threshold).float()
        assert torch.equal(method.masks_[grp.name], want), grp.name
        keep = want.nonzero().flatten()
        for b in grp.bns:  # the survivors are physically those channels, in order
            assert torch.equal(dict(pruned.named_modules())[b].weight, gammas[b][keep])
    assert method.removed_["threshold"] == pytest.approx(float(threshold))
    assert sum(int(m.sum()) for m in method.masks_.values()) == k


def test_include_limits_the_pruned_groups():
    model = _model("conv_net")
    pruned, method = _slim(model, channel_sparsity=0.5, include=["features\\..*"])
    assert list(method.masks_) == ["features.0.conv", "features.1.conv"]
    assert pruned.spec["hidden"] == [6] and pruned.spec["widths"] == [3, 4]


@pytest.mark.parametrize(
    "fields, message",
    [({"penalty": -1.0}, "penalty"), ({"channel_sparsity": 1.0}, "channel_sparsity"),
     ({"scope": "net"}, "scope"), ({"begin": 0.8, "until": 0.5}, "begin"),
     ({"floor": 1.5}, "floor"), ({"include": ["("]}, "include"), ({"exclude": "x"}, "exclude")],
)
def test_invalid_fields_name_themselves(fields, message):
    with pytest.raises(ValueError, match=message):
        NetworkSlimming(**fields)


def test_selecting_nothing_is_an_error():
    with pytest.raises(ValueError, match="no channel group selected"):
        attach(_model("conv_net"), [NetworkSlimming(include=["nothing"])])


@pytest.mark.parametrize("model_name", list(TINY))
def test_contract(model_name, data):
    torch.manual_seed(0)
    check_method(NetworkSlimming, build(classes=10, **TINY[model_name]), data)
