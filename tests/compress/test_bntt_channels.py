"""Channel surgery and the channel methods on BNTT models: a BNTT's [steps, C] tensors shrink
along dim 1 with its group, gates mask that dim, slimming scores mean |γ| over the steps."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from _exact import dyadic_
from spikecompress.compress import METHODS, attach
from spikecompress.compress.contract import _train_steps
from spikecompress.compress.prune.channel_mask import (
    channel_mask,
    dense_gamma_grad,
    gate_channels_,
    ungate_,
)
from spikecompress.compress.prune.groups import channel_groups
from spikecompress.compress.prune.slimming import NetworkSlimming, bn_l1_penalty, gamma_scores
from spikecompress.compress.prune.surgery import consumer_inputs, remove_channels_, remove_masked_
from spikecompress.export import load, save
from spikecompress.models import build, from_spec
from spikecompress.snn import BNTT, reset_state

STEPS = 3
ARCHS = {
    "conv_net": dict(name="conv_net", in_channels=1, input_size=8, widths=[6, 8], hidden=[6]),
    "conv1d_net": dict(name="conv1d_net", in_channels=1, input_size=40, widths=[6, 6, 8]),
    "mlp": dict(name="mlp", in_features=64, widths=[16, 8]),
    "resnet": dict(name="resnet", in_channels=1, input_size=8, widths=[6, 8], blocks=[2, 1],
                   hidden=[6]),
    "sew_resnet": dict(name="sew_resnet", in_channels=1, input_size=8, widths=[6, 8],
                       blocks=[1, 1]),
}


def _model(arch, seed=0, norm="bntt"):
    """Random per-step γ and statistics, every channel and step different, all dyadic
    (tests/_exact.py): a pruned and a dense model agree bit for bit on any CPU."""
    torch.manual_seed(seed)
    steps = STEPS if norm == "bntt" else None
    model = build(classes=10, norm=norm, steps=steps, **ARCHS[arch])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BNTT):
                m.running_mean.normal_()
                m.running_var.uniform_(0.01, 0.1)
                m.weight.normal_(1.0, 0.5)
    return dyadic_(model).eval()


def _spikes(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(STEPS, 3, *model.in_shape, generator=g) < 0.5).float()


def _half(groups, seed=2):
    g = torch.Generator().manual_seed(seed)
    return {grp.name: torch.randperm(grp.size, generator=g)[: grp.size // 2].tolist()
            for grp in groups}


def _bntts(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, BNTT)}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_groups_are_those_of_the_bn_twin_with_the_bntts_as_bns(arch):
    twin = [vars(g) for g in channel_groups(_model(arch, norm="bn"))]
    groups = channel_groups(_model(arch))
    assert [vars(g) for g in groups] == twin
    assert all(g.bns for g in groups)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_surgery_shrinks_dim_1_of_every_bntt_and_is_exact(arch, tmp_path):
    model = _model(arch)
    dense, untouched = copy.deepcopy(model), copy.deepcopy(model)
    groups = channel_groups(model)
    drop = _half(groups)
    before = {n: (m.weight.detach().clone(), m.running_mean.clone(), m.running_var.clone())
              for n, m in _bntts(model).items()}
    owner = {bn: g.name for g in groups for bn in g.bns}
    remove_channels_(model, drop)
    for name, m in _bntts(model).items():
        keep = [c for c in range(before[name][0].shape[1]) if c not in set(drop[owner[name]])]
        assert m.num_features == len(keep) and m.steps == STEPS
        for t, old in zip((m.weight.detach(), m.running_mean, m.running_var), before[name],
                          strict=True):
            assert t.shape == (STEPS, len(keep)), name
            assert torch.equal(t, old[:, keep]), name
    modules = dict(dense.named_modules())
    for name, idxs in consumer_inputs(dense, drop).items():
        modules[name].weight.data[:, idxs] = 0
    x = _spikes(model)
    got = model(x)
    assert torch.equal(dense(x), got)
    reset_state(untouched)
    assert not torch.equal(untouched(x), got)  # the removed channels mattered
    # the rewritten spec rebuilds it and the artifact carries it exactly
    assert model.spec["norm"] == "bntt" and model.spec["steps"] == STEPS
    from_spec(model.spec).load_state_dict(model.state_dict())
    save(model, tmp_path / "small")
    loaded = load(tmp_path / "small")
    reset_state(model)
    assert torch.equal(loaded(x), model(x))


def test_a_gate_masks_a_channel_at_every_step_in_training_and_eval():
    model = _model("conv_net")
    group = channel_groups(model)[0]
    mask = torch.ones(group.size)
    mask[[1, 4]] = 0
    gate_channels_(model, group, mask)
    bn = model.features[0].bn
    assert bn.weight.shape == (STEPS, group.size)
    assert torch.equal(channel_mask(model, group), mask)
    outs = []
    bn.register_forward_hook(lambda m, i, o: outs.append(o))
    x = _spikes(model)
    for train in (True, False):
        model.train(train)
        out = model(x)
        reset_state(model)
        assert torch.equal(outs[-1][:, :, [1, 4]], torch.zeros_like(outs[-1][:, :, [1, 4]]))
        assert bool((outs[-1][:, :, [0, 2]] != 0).any())
    F.cross_entropy(out.mean(0), torch.arange(3)).backward()
    grad = dense_gamma_grad(model, group)
    assert grad.shape == (group.size,) and bool((grad[[1, 4]] != 0).any())
    model.eval()
    gated = model(x)
    reset_state(model)
    small = remove_masked_(model, {group.name: mask})
    assert small.features[0].bn.weight.shape == (STEPS, group.size - 2)
    assert torch.equal(small(x), gated)


def test_ungate_keeps_the_gated_gammas_of_every_step():
    model = _model("mlp")
    group = channel_groups(model)[1]
    mask = torch.ones(group.size)
    mask[0] = 0
    w0 = model.features[1].bn.weight.detach().clone()
    gate_channels_(model, group, mask)
    ungate_(model)
    w = model.features[1].bn.weight.detach()
    assert torch.equal(w[:, 0], torch.zeros(STEPS)) and torch.equal(w[:, 1:], w0[:, 1:])


def test_slimming_scores_the_mean_abs_gamma_over_the_steps():
    model = _model("conv_net")
    groups = channel_groups(model)
    bn = model.features[0].bn
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 4.0, 0.25, 1.0],
                                      [3.0, 2.0, -0.5, 0.0, 0.25, 1.0],
                                      [-2.0, 2.0, 0.5, -2.0, 0.25, 1.0]]))
    scores = gamma_scores(model, groups)
    assert torch.equal(scores["features.0.conv"],
                       torch.tensor([2.0, 2.0, 0.5, 2.0, 0.25, 1.0]))
    want = sum(m.weight.abs().sum() for m in _bntts(model).values())
    assert torch.equal(bn_l1_penalty(model, groups), want)
    slim = NetworkSlimming(channel_sparsity=0.5, include=["features\\.0\\.conv"], until=0.0)
    session = attach(model, [slim])
    small = session.finalize()
    assert small.features[0].bn.weight.shape == (STEPS, 3)
    assert torch.equal(small.features[0].bn.weight.detach().abs().mean(0),
                       torch.tensor([2.0, 2.0, 2.0]))  # channels 0, 1, 3 kept


def _random_data(model, batches=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    train = [((torch.rand(STEPS, 8, *model.in_shape, generator=g) < 0.5).float(),
              torch.randint(0, 10, (8,), generator=g)) for _ in range(batches)]
    return SimpleNamespace(train=train)


@pytest.mark.parametrize("name, fields", [
    ("l1_filter", {}),
    ("slimming", {"penalty": 1e-3}),
    ("sca", {}),
    ("sdsnn", {"update_every": 1}),
])
def test_channel_methods_give_a_smaller_bntt_model_that_runs_and_saves(name, fields, tmp_path):
    model = _model("conv_net").train()
    method = METHODS[name](channel_sparsity=0.5, **fields)
    before = {g.name: g.size for g in method.select(model)}
    session = attach(model, [method])
    torch.manual_seed(0)
    _train_steps(model, session, _random_data(model), 4, lr=1e-3, per_epoch=2)
    small = session.finalize().eval()
    after = {g.name: g.size for g in channel_groups(small)}
    assert sum(after[n] for n in before) < sum(before.values())
    for n, m in _bntts(small).items():
        assert m.weight.shape == m.running_mean.shape == (STEPS, m.num_features), n
    x = _spikes(small)
    out = small(x)
    assert out.shape == (STEPS, 3, 10) and torch.isfinite(out).all()
    reset_state(small)
    save(small, tmp_path / name)
    loaded = load(tmp_path / name)
    assert loaded.spec == small.spec and loaded.spec["widths"] == small.spec["widths"]
    assert torch.equal(loaded(x), small(x))
