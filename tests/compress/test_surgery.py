"""Channel groups and physical channel removal: residual coupling, flatten, neurons, exactness."""

import copy
import tempfile
from collections import OrderedDict

import pytest
import torch
from torch import nn

from _exact import dyadic_, rounding_modules
from spikecompress.compress.prune.channel_mask import (
    channel_mask,
    dense_gamma_grad,
    gate_channels_,
    ungate_,
)
from spikecompress.compress.prune.groups import channel_groups
from spikecompress.compress.prune.surgery import consumer_inputs, remove_channels_, remove_masked_
from spikecompress.export import load, save
from spikecompress.models import Network, build, from_spec
from spikecompress.models.common import activation, conv_bn_act, head, resolve_neuron
from spikecompress.snn import BatchNorm2d, Conv2d, reset_state

PER_CHANNEL = {"per_channel": True}
ARCHS = {
    "conv_net": dict(name="conv_net", in_channels=1, input_size=8, widths=[6, 8], hidden=[6]),
    "vgg": dict(name="vgg", in_channels=3, input_size=16, widths=[6, "M", 8, 8, "M"],
                neuron="plif", neuron_params=PER_CHANNEL),
    "resnet": dict(name="resnet", in_channels=1, input_size=8, widths=[6, 8], blocks=[2, 1],
                   hidden=[6], neuron_params=PER_CHANNEL),
    "sew_resnet": dict(name="sew_resnet", in_channels=1, input_size=8, widths=[6, 8],
                       blocks=[1, 1], neuron="plif", neuron_params=PER_CHANNEL),
    "mlp": dict(name="mlp", in_features=64, widths=[16, 8]),
    "conv1d_net": dict(name="conv1d_net", in_channels=1, input_size=40, widths=[6, 6, 8]),
}


def _randomise(model):
    """Random BN statistics and affine terms, per-channel thresholds and taus: every channel
    matters, so a wrong slice shows in the output. All of them dyadic (tests/_exact.py): the
    pruned and the dense model sum different terms in different orders, and they must agree bit
    for bit on any CPU and thread count."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.01, 0.1)
            m.weight.data.normal_(1.0, 0.5)
            m.bias.data.normal_(0.0, 0.5)
        for name, low, high in (("v_threshold", 0.2, 1.0), ("tau", 1.1, 3.0)):
            t = m._buffers.get(name)
            if t is not None:
                t.uniform_(low, high)
        if isinstance(getattr(m, "w", None), nn.Parameter) and m.w.dim() == 1:
            m.w.data.normal_()
    return dyadic_(model).eval()


def _model(arch, seed=0):
    torch.manual_seed(seed)
    return _randomise(build(classes=10, **ARCHS[arch]))


def _spikes(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(4, 3, *model.in_shape, generator=g) < 0.5).float()


def _half(groups, seed=2):
    g = torch.Generator().manual_seed(seed)
    return {grp.name: torch.randperm(grp.size, generator=g)[: grp.size // 2].tolist()
            for grp in groups}


def test_groups_tie_residual_channels_and_skip_the_readout():
    groups = {g.name: g for g in channel_groups(_model("resnet"))}
    stem = groups["features.stem.conv"]
    assert stem.producers == ["features.stem.conv", "features.stage0.0.conv2",
                              "features.stage0.1.conv2"]
    assert stem.bns == ["features.stem.bn", "features.stage0.0.bn2", "features.stage0.1.bn2"]
    assert "features.stage1.0.downsample.conv" in stem.consumers
    stage1 = groups["features.stage1.0.conv2"]
    assert stage1.producers == ["features.stage1.0.conv2", "features.stage1.0.downsample.conv"]
    assert stage1.neurons == ["features.stage1.0.act2"] and stage1.consumers == ["classifier.fc0"]
    assert all("classifier.fc" not in g.producers for g in groups.values())
    assert [g.size for g in groups.values()] == [6, 6, 6, 8, 8, 6]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_the_test_models_compute_without_rounding(arch):
    """The premise of the exact comparisons below: nothing in these forwards rounds (each
    module's float32 output equals its float64 twin's), so no summation order can matter."""
    model = _model(arch)
    assert rounding_modules(model, _spikes(model)) == []


@pytest.mark.parametrize("arch", list(ARCHS))
def test_pruned_model_equals_dense_with_consumer_inputs_zeroed_exactly(arch):
    model = _model(arch)
    remove = _half(channel_groups(model))
    dense, untouched = copy.deepcopy(model), copy.deepcopy(model)
    modules = dict(dense.named_modules())
    for name, idxs in consumer_inputs(model, remove).items():
        modules[name].weight.data[:, idxs] = 0
    before = sum(p.numel() for p in model.parameters())
    remove_channels_(model, remove)
    x = _spikes(model)
    want, got = dense(x), model(x)
    assert torch.equal(want, got)
    assert not torch.equal(untouched(x), got)  # the removed channels did matter
    assert sum(p.numel() for p in model.parameters()) < before
    rebuilt = from_spec(model.spec)  # the new spec rebuilds the pruned model
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt.eval()(x), got)


def test_spec_widths_follow_the_removal_and_the_artifact_rebuilds_it(tmp_path):
    model = _model("sew_resnet")
    groups = {g.name: g for g in channel_groups(model)}
    remove_channels_(model, {"features.stem.conv": [0, 1], "features.stage1.0.conv1": [3]})
    assert model.spec["widths"] == [4, 8] and model.spec["inner_widths"] == [[6], [7]]
    assert groups["features.stem.conv"].size == 6
    neuron = model.features.stage0[0].act2
    assert neuron.w.shape == (4,) and neuron.v_threshold.shape == (4,)
    x = _spikes(model)
    loaded = load(save(model, tmp_path / "a"))
    assert torch.equal(loaded.eval()(x), model(x))


def test_per_channel_neuron_parameters_are_sliced_with_their_channels():
    model = _model("vgg")
    act = model.features[0].act
    w, th = act.w.detach().clone(), act.v_threshold.clone()
    remove_channels_(model, {"features.0.conv": [1, 4]})
    keep = [0, 2, 3, 5]
    assert torch.equal(model.features[0].act.w.detach(), w[keep])
    assert torch.equal(model.features[0].act.v_threshold, th[keep])
    assert isinstance(model.features[0].act.w, nn.Parameter)


def test_stale_membrane_state_is_cleared():
    model = _model("conv_net")
    model(_spikes(model))
    assert model.features[0].act.v is not None
    remove_channels_(model, {"features.0.conv": [0]})
    assert all(getattr(m, "v", None) is None for m in model.modules())


def test_bad_removals_name_the_group():
    model = _model("conv_net")
    with pytest.raises(ValueError, match="'nope' is not a channel group"):
        remove_channels_(model, {"nope": [0]})
    with pytest.raises(ValueError, match=r"remove\['features.0.conv'\]: indices must be in"):
        remove_channels_(model, {"features.0.conv": [6]})
    with pytest.raises(ValueError, match="removes all 6 channels"):
        remove_channels_(model, {"features.0.conv": list(range(6))})
    gate_channels_(model, channel_groups(model)[0], torch.ones(6))
    with pytest.raises(ValueError, match="features.0.bn still has a parametrization"):
        remove_channels_(model, {"features.0.conv": [0]})


class _Concat(nn.Module):
    """Two conv-BN-neuron branches concatenated along channels: dim 2 of [T, B, C, H, W] and
    dim 1 of the one-step [B, C, H, W] the graph is traced on (Torch-Pruning needs a positive
    dim 1 there)."""

    def __init__(self, act):
        super().__init__()
        self.a = conv_bn_act(4, 3, 3, 1, 1, act)
        self.b = conv_bn_act(4, 5, 3, 1, 1, act)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=x.dim() - 3)


def test_concatenation_maps_each_branch_to_its_consumer_inputs():
    torch.manual_seed(0)
    act = activation(True, *resolve_neuron("lif", None))
    stem = nn.Sequential(OrderedDict(conv=Conv2d(1, 4, 3, padding=1, bias=False),
                                     bn=BatchNorm2d(4), act=act(4)))
    features = nn.Sequential(stem, _Concat(act), conv_bn_act(8, 6, 3, 1, 1, act))
    model = _randomise(Network(features, head(6 * 8 * 8, [], 10, act), (1, 8, 8),
                               {"name": "custom"}))
    remove = {"features.1.a.conv": [1], "features.1.b.conv": [0, 4]}
    assert consumer_inputs(model, remove)["features.2.conv"] == [1, 3, 7]  # b starts at 3
    dense = copy.deepcopy(model)
    dense.features[2].conv.weight.data[:, [1, 3, 7]] = 0
    remove_channels_(model, remove)
    x = _spikes(model)
    assert model.features[2].conv.in_channels == 5 and torch.equal(dense(x), model(x))


# -- channel masks during training ---------------------------------------------------------------
def test_channel_gate_after_bn_silences_the_channel_but_a_mask_before_bn_leaks():
    model = _model("conv_net").train()
    model.features[0].bn.bias.data[2] = 2.0  # a positive β: a zeroed input still fires
    group = channel_groups(model)[0]
    x = _spikes(model)

    def run(m, perturb):
        m = copy.deepcopy(m)
        if perturb:  # change what the consumer reads from channel 2 only
            m.features[1].conv.weight.data[:, 2] += 5.0
        out = m(x)
        reset_state(m)
        return out

    before_bn = copy.deepcopy(model)
    before_bn.features[0].conv.weight.data[2] = 0  # the conv output of channel 2 is zero
    assert not torch.equal(run(before_bn, False), run(before_bn, True))  # BN turns it into β
    gate_channels_(model, group, torch.tensor([1.0, 1, 0, 1, 1, 1]))
    assert torch.equal(run(model, False), run(model, True))
    model.eval()
    assert torch.equal(run(model, False), run(model, True))


def test_dense_gamma_gradient_is_nonzero_for_a_masked_channel():
    torch.manual_seed(0)
    model = build(classes=10, **ARCHS["conv_net"]).train()
    group = channel_groups(model)[0]
    mask = torch.tensor([1.0, 0, 1, 1, 0, 1])
    gate_channels_(model, group, mask)
    model(_spikes(model)).square().sum().backward()
    dense = dense_gamma_grad(model, group)
    plain = model.features[0].bn.parametrizations.weight.original.grad
    assert torch.equal(plain, dense * mask)  # what reaches γ: masked channels get exactly 0
    assert dense[1] != 0 and dense[4] != 0
    assert torch.equal(channel_mask(model, group), mask)


def test_masked_training_model_equals_the_physically_pruned_one():
    torch.manual_seed(0)
    model = _randomise(build(classes=10, **ARCHS["sew_resnet"]))
    groups = channel_groups(model)
    masks = {g.name: (torch.arange(g.size) % 3 != 1).float() for g in groups}
    for g in groups:
        gate_channels_(model, g, masks[g.name])
    x = _spikes(model)
    want = model(x)
    reset_state(model)
    remove_masked_(model, masks)
    assert torch.equal(model(x), want)
    assert model.spec["widths"] == [4, 5] and model.spec["inner_widths"] == [[4], [5]]
    with tempfile.TemporaryDirectory() as tmp:
        assert torch.equal(load(save(model, f"{tmp}/a")).eval()(x), want)


def test_ungate_keeps_masked_values():
    model = _model("conv_net")
    group = channel_groups(model)[0]
    gate_channels_(model, group, torch.tensor([0.0, 1, 1, 1, 1, 1]))
    ungate_(model)
    assert model.features[0].bn.weight[0] == 0 and model.features[0].bn.bias[0] == 0
    assert not hasattr(model.features[0].bn, "parametrizations")
