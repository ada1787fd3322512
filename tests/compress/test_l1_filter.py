"""L1-filter-norm pruning (Li et al., ICLR 2017): the lowest-L1 filters go, per layer or global."""

import copy

import pytest
import torch
from torch import nn

from _exact import dyadic_
from spikecompress.compress import attach
from spikecompress.compress.contract import TINY_MODELS as TINY
from spikecompress.compress.contract import check_method
from spikecompress.compress.prune.channel_select import choose_masks
from spikecompress.compress.prune.groups import channel_groups
from spikecompress.compress.prune.l1_filter import L1FilterPruning, filter_l1
from spikecompress.compress.prune.surgery import consumer_inputs
from spikecompress.data import DataConfig, load_data
from spikecompress.models import build


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


def _model(name="conv_net", seed=0, **spec):
    torch.manual_seed(seed)
    model = build(name, classes=10, in_channels=1, input_size=8, **spec)
    for m in model.modules():  # every channel matters downstream
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.01, 0.1)
            m.weight.data.normal_(1.0, 0.5)
            m.bias.data.normal_(0.0, 0.5)
    return model


def _set_l1(module, norms, seed=0):
    """Give each output filter of ``module`` the L1 norm ``norms[c]``: random signs and a random
    spread of magnitudes (so the L2 or max norm would rank the filters differently)."""
    w = module.weight.data
    g = torch.Generator().manual_seed(seed)
    signs = torch.where(torch.rand(w.shape, generator=g) < 0.5, -1.0, 1.0)
    spread = torch.rand(w.shape, generator=g) ** 4  # from near-uniform to one dominant entry
    rows = spread.reshape(w.shape[0], -1)  # [C, ...] -> [C, fan-in]
    rows = rows / rows.sum(1, keepdim=True) * torch.tensor(norms).view(-1, 1)
    w.copy_(signs * rows.view_as(w))


def _top(scores, k):
    return sorted(sorted(range(len(scores)), key=lambda c: -float(scores[c]))[:k])


def _prune(model, **fields):
    method = L1FilterPruning(**fields)
    session = attach(model, [method])
    return session.finalize().eval(), method


def test_removes_exactly_the_lowest_l1_filters_of_each_layer():
    model = _model(widths=[6, 8], hidden=[6])
    g = torch.Generator().manual_seed(3)
    norms = {n: (10.0 + 0.3 * torch.randperm(c, generator=g)).tolist()  # close norms
             for n, c in (("features.0.conv", 6), ("features.1.conv", 8), ("classifier.fc0", 6))}
    modules = dict(model.named_modules())
    for name, v in norms.items():
        _set_l1(modules[name], v)
    before = {n: modules[n].weight.detach().clone() for n in norms}
    pruned, method = _prune(model, channel_sparsity=0.5, scope="layer", floor=0.0)
    keep, by_l2 = {}, []
    for name, v in norms.items():
        top = _top(v, len(v) // 2)  # the top half
        keep[name] = torch.tensor(top)
        assert method.masks_[name].nonzero().flatten().tolist() == top, name
        l2 = before[name].reshape(len(v), -1).norm(dim=1)  # [C, ...] -> [C]
        by_l2.append(_top(l2, len(v) // 2) == top)
    assert not all(by_l2)  # the L2 norm would have chosen other filters
    after = dict(pruned.named_modules())
    assert torch.equal(after["features.0.conv"].weight, before["features.0.conv"][keep[
        "features.0.conv"]])
    w1 = before["features.1.conv"][keep["features.1.conv"]][:, keep["features.0.conv"]]
    assert torch.equal(after["features.1.conv"].weight, w1)  # [out kept, in kept, k, k]


@pytest.mark.parametrize(
    "prune, floor, widths, hidden",
    # 31 channels, 0.3: shares 1.5 2.1 3.0 2.7 → ⌊⌋ 1 2 3 2 = 8, the 9th of round(9.3) = 9 goes to
    # the largest remainder (2.7); floor 0.6 caps them at 2 2 4 3 (same result); 0.9: the floors
    # (one channel each) keep 4, so 27 go instead of 28; 0.5: 14 + 2 remainders of .5, earliest
    [(0.3, 0.1, [4, 5, 7], [6]), (0.3, 0.6, [4, 5, 7], [6]), (0.9, 0.0, [1, 1, 1], [1]),
     (0.0, 0.0, [5, 7, 10], [9]), (0.5, 0.0, [2, 3, 5], [5])],
)
def test_per_layer_counts_are_exact(prune, floor, widths, hidden):
    model = _model(widths=[5, 7, 10], hidden=[9])
    pruned, method = _prune(model, channel_sparsity=prune, floor=floor)
    assert pruned.spec["widths"] == widths and pruned.spec["hidden"] == hidden
    assert [int(m.sum()) for m in method.masks_.values()] == [*widths, *hidden]
    total, kept = 5 + 7 + 10 + 9, sum(widths) + sum(hidden)
    assert method.removed_["channels"] == pytest.approx(1 - kept / total)


def test_global_scope_ranks_group_normalised_scores_across_layers():
    big = [10.0, 20.0, 30.0, 40.0, 50.0, 450.0]  # mean 100: normalised 0.1 … 4.5
    small = [4.0 + 0.1 * i for i in range(8)]  # mean 4.35: normalised 0.92 … 1.08
    kept = {}
    for scope in ("layer", "global"):
        model = _model(widths=[6, 8])
        modules = dict(model.named_modules())
        _set_l1(modules["features.0.conv"], big)
        _set_l1(modules["features.1.conv"], small)
        pruned, method = _prune(model, channel_sparsity=0.5, scope=scope, floor=0.1)
        kept[scope] = pruned.spec["widths"]
        if scope == "global":  # the big-norm layer keeps only its one outstanding filter
            assert method.masks_["features.0.conv"].tolist() == [0, 0, 0, 0, 0, 1]
            assert method.masks_["features.1.conv"].tolist() == [0, 0, 1, 1, 1, 1, 1, 1]
    assert kept == {"layer": [3, 4], "global": [1, 6]}
    raw = choose_masks({"a": torch.tensor(big), "b": torch.tensor(small)}, 0.5, "layer", 0.1)
    assert [int(m.sum()) for m in raw.values()] == [3, 4]


def test_residual_group_score_sums_its_producers():
    model = _model("sew_resnet", widths=[6, 8], blocks=[1, 1])
    modules = dict(model.named_modules())
    a, b = [1.0, 9.0, 2.0, 8.0, 3.0, 7.0], [9.5, 1.0, 7.5, 1.5, 6.0, 4.0]
    _set_l1(modules["features.stem.conv"], a)
    _set_l1(modules["features.stage0.0.conv2"], b)  # sums 10.5 10 9.5 9.5 9 11
    groups = {g.name: g for g in channel_groups(model)}
    assert groups["features.stem.conv"].producers == ["features.stem.conv",
                                                      "features.stage0.0.conv2"]
    scores = filter_l1(model, [groups["features.stem.conv"]])["features.stem.conv"]
    assert torch.allclose(scores, torch.tensor(a) + torch.tensor(b).double())
    _, method = _prune(model, channel_sparsity=0.5, include=["features\\.stem\\.conv"])
    assert method.masks_["features.stem.conv"].tolist() == [1, 1, 0, 0, 0, 1]  # not a's, not b's
    assert list(method.masks_) == ["features.stem.conv"]


def test_pruned_output_equals_dense_with_removed_consumer_inputs_zeroed():
    # dyadic weights and BN (tests/_exact.py): the two models sum different terms in different
    # orders, and must still agree bit for bit on any CPU and thread count
    model = dyadic_(_model("sew_resnet", widths=[6, 8], blocks=[1, 1]))
    dense = copy.deepcopy(model).eval()
    pruned, method = _prune(model, channel_sparsity=0.5, scope="global")
    drop = {n: (m == 0).nonzero().flatten().tolist() for n, m in method.masks_.items()}
    modules = dict(dense.named_modules())
    for name, idxs in consumer_inputs(dense, drop).items():
        modules[name].weight.data[:, idxs] = 0
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(4, 3, *model.in_shape, generator=g) < 0.5).float()  # [T, B, C, H, W]
    assert torch.equal(dense(x), pruned(x))
    assert 0 < method.removed_["params"] < 1


@pytest.mark.parametrize(
    "fields, message",
    [({"channel_sparsity": -0.1}, "channel_sparsity"), ({"until": 1.5}, "until"),
     ({"scope": "net"}, "scope"), ({"floor": -1}, "floor"),
     ({"include": [1]}, "include")],
)
def test_invalid_fields_name_themselves(fields, message):
    with pytest.raises(ValueError, match=message):
        L1FilterPruning(**fields)


@pytest.mark.parametrize("model_name", list(TINY))
def test_contract(model_name, data):
    torch.manual_seed(0)
    check_method(L1FilterPruning, build(classes=10, **TINY[model_name]), data)
