"""Per-family behaviour: reference parameter counts (data.md §3), layouts, options and errors."""

import pytest
import torch
from torch import nn

from spikecompress.models import VGG_WIDTHS, build, from_spec
from spikecompress.models.conv_net import default_pools
from spikecompress.snn import LIF, PLIF, ATan, AvgPool2d, MaxPool2d, Rectangular, reset_state


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _weights(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.dim() > 1)  # conv and linear weights


def test_conv_net_digits_reference_count():
    model = build("conv_net", in_channels=1, input_size=8, widths=[16, 32, 64], classes=10)
    assert model.spec["pools"] == [1, 2]
    assert _count(model) == 25_978  # data.md: "3×conv3 16-32-64 + BN, 26.0k params"


def test_conv_net_event_and_mnist_sizes():
    events = build("conv_net", in_channels=2, input_size=22, classes=10)
    assert events.spec["pools"] == [0, 1, 2] and _count(events) == 26_122
    # data.md's event-digit net (39.6k) leaves a 5×5 map: two poolings
    events2 = build("conv_net", in_channels=2, input_size=22, classes=10, pools=[1, 2])
    assert _count(events2) == 39_562
    mnist = build("conv_net", in_channels=1, input_size=28, classes=10)
    assert _count(mnist) == 29_178  # data.md: "3×conv, pool after each, 29.2k"
    for model in (events, events2, mnist):
        assert model(torch.rand(2, 3, *model.in_shape)).shape == (2, 3, 10)


def test_default_pools_keep_at_least_two_by_two():
    assert default_pools((8, 8), 3) == [1, 2]
    assert default_pools((28, 28), 3) == [0, 1, 2]
    assert default_pools((4, 6), 3) == [2]
    assert default_pools((3, 3), 2) == []
    with pytest.raises(ValueError, match="pools"):
        build("conv_net", in_channels=1, input_size=8, classes=2, widths=[2, 2], pools=[1, 0])
    with pytest.raises(ValueError, match="pools"):
        build("conv_net", in_channels=1, input_size=2, classes=2, widths=[2, 2], pools=[0, 1])


def test_conv1d_net_is_convbase_with_bn():
    model = build("conv1d_net", in_channels=1, input_size=40, widths=[64, 64, 64], classes=10)
    assert _weights(model) == 28_096  # data.md: ch64 "28.1k weights"
    assert _count(model) == 28_490
    small = build("conv1d_net", in_channels=1, input_size=40, widths=[25, 25, 25], classes=10)
    assert _count(small) == 5_285  # data.md: "ConvBase + BN, 5.3k"
    convs = [small.features[i].conv for i in range(3)]
    assert [c.kernel_size[0] for c in convs] == [5, 3, 3]
    assert all(c.stride == (2,) and c.padding == (1,) and c.bias is None for c in convs)
    assert small.classifier.fc.in_features == 25 * 5  # 40 → 19 → 10 → 5


def test_vgg_reference_counts_and_widths_form():
    vgg11 = build("vgg", in_channels=3, input_size=32, classes=10, depth=11)
    assert _count(vgg11) == 9_228_362  # data.md: spiking VGG-11, 9.23M
    assert vgg11.spec["widths"] == VGG_WIDTHS[11] and vgg11.spec["depth"] is None
    assert vgg11.classifier.fc.in_features == 512
    assert len(vgg11.features) == 8
    assert build("vgg", in_channels=3, input_size=32, classes=10).spec == vgg11.spec
    with pytest.raises(ValueError, match="depth"):
        build("vgg", in_channels=3, input_size=32, classes=10, depth=13)
    with pytest.raises(ValueError, match="either widths or depth"):
        build("vgg", in_channels=3, input_size=32, classes=10, depth=11, widths=[4, "M"])
    with pytest.raises(ValueError, match=r"widths\[0\]"):
        build("vgg", in_channels=3, input_size=32, classes=10, widths=["M", 4])
    with pytest.raises(ValueError, match="widths"):
        build("vgg", in_channels=3, input_size=4, classes=10, widths=[2, "M", 2, "M", 2, "M"])


def test_resnet19_layout_and_count():
    model = build("resnet", in_channels=3, input_size=32, classes=10)
    assert _count(model) == 12_698_250
    assert [len(getattr(model.features, f"stage{s}")) for s in range(3)] == [3, 3, 2]
    assert model.features.stem.conv.out_channels == 128
    assert all(b.downsample is None for b in model.features.stage0)
    down = model.features.stage1[0].downsample
    assert down.conv.kernel_size == (1, 1) and down.conv.stride == (2, 2) and len(down) == 2
    assert model.classifier.fc0.out_features == 256


def test_resnet_inner_widths_are_per_block():
    spec = {"in_channels": 2, "input_size": 8, "classes": 3, "widths": [4, 6], "blocks": [1, 2],
            "inner_widths": [[3], [2, 5]]}
    model = build("resnet", **spec)
    assert model.features.stage1[1].conv1.out_channels == 5
    assert model.features.stage1[1].conv2.in_channels == 5
    assert model.features.stage1[1].conv2.out_channels == 6
    with pytest.raises(ValueError, match=r"inner_widths\[1\]"):
        build("resnet", **{**spec, "inner_widths": [[3], [2]]})
    with pytest.raises(ValueError, match="inner_widths"):
        build("resnet", **{**spec, "inner_widths": [[3]]})
    with pytest.raises(ValueError, match="blocks"):
        build("resnet", **{**spec, "blocks": [1], "inner_widths": None})


def _block_outputs(model: nn.Module, x_seq: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = model.features.stage0[0].register_forward_hook(lambda m, i, o: seen.append(o))
    model(x_seq)
    handle.remove()
    return seen[0]


def test_sew_block_adds_spikes_and_spiking_resnet_block_fires_binary():
    spec = {"in_channels": 2, "input_size": 8, "classes": 3, "widths": [4], "blocks": [1],
            "neuron_params": {"v_threshold": 0.3}}
    x = torch.rand(3, 4, 2, 8, 8) * 2
    sew = _block_outputs(build("sew_resnet", **spec), x)
    assert sew.max() > 1 and torch.equal(sew, sew.round())  # spike counts, not spikes
    res = _block_outputs(build("resnet", **spec), x)
    assert set(res.unique().tolist()) == {0.0, 1.0}
    sew_down = build("sew_resnet", **{**spec, "widths": [4, 6], "blocks": [1, 1]})
    assert isinstance(sew_down.features.stage1[0].downsample.act, LIF)


@pytest.mark.parametrize("name", ["conv_net", "vgg"])
def test_avg_pooling(name):
    spec = {"in_channels": 1, "input_size": 8, "classes": 3, "widths": [4, "M", 4, "M"]}
    if name == "conv_net":
        spec["widths"] = [4, 4]
    model = build(name, **spec, pool="avg")
    kinds = {type(m) for m in model.modules()}
    assert AvgPool2d in kinds and MaxPool2d not in kinds
    assert model(torch.rand(2, 2, 1, 8, 8)).shape == (2, 2, 3)


def test_neuron_params_are_resolved_and_applied():
    params = {"tau": 4, "v_threshold": 0.5, "v_reset": None, "surrogate": "atan", "alpha": 3}
    model = build("conv_net", in_channels=1, input_size=8, classes=3, widths=[4],
                  neuron_params=params)
    assert model.spec["neuron_params"] == {
        "tau": 4.0, "v_threshold": 0.5, "v_reset": None, "decay_input": True,
        "detach_reset": False, "surrogate": "atan", "per_channel": False, "alpha": 3.0,
    }
    lif = model.features[0].act
    assert lif.tau.item() == 4.0 and lif.reset.v_reset is None and lif.surrogate == ATan(3.0)
    rect = build("mlp", in_features=4, classes=2, widths=[3], neuron="plif",
                 neuron_params={"surrogate": "rectangular", "width": 0.5, "init_tau": 3.0,
                                "per_channel": True})
    plif = rect.features[0].act
    assert isinstance(plif, PLIF) and plif.surrogate == Rectangular(0.5) and plif.w.shape == (3,)
    torch.testing.assert_close(plif.tau, torch.full((3,), 3.0))
    assert from_spec(rect.spec).spec == rect.spec


@pytest.mark.parametrize(
    ("params", "key"),
    [({"tau": 1.0}, "tau"), ({"v_threshold": 0}, "v_threshold"), ({"v_reset": "0"}, "v_reset"),
     ({"detach_reset": 1}, "detach_reset"), ({"surrogate": "relu"}, "surrogate"),
     ({"alpha": -1.0}, "alpha"), ({"width": 1.0}, "width"), ({"init_tau": 2.0}, "init_tau")],
)
def test_bad_neuron_params_name_the_key(params, key):
    with pytest.raises(ValueError, match=rf"neuron_params\.{key}"):
        build("mlp", in_features=4, classes=2, widths=[3], neuron_params=params)


def test_mlp_flattens_any_sample_shape_and_checks_it():
    model = build("mlp", in_features=16, classes=3, widths=[5])
    x = torch.rand(2, 3, 1, 4, 4)
    out = model(x)
    reset_state(model)
    torch.testing.assert_close(model(x.flatten(2)), out)
    with pytest.raises(ValueError, match="mlp expects"):
        model(torch.rand(2, 3, 15))
    conv = build("conv_net", in_channels=1, input_size=[8, 6], classes=3, widths=[4])
    assert conv(torch.rand(1, 2, 1, 8, 6)).shape == (1, 2, 3)
    with pytest.raises(ValueError, match=r"conv_net expects x_seq of shape \[T, B, 1, 8, 6\]"):
        conv(torch.rand(1, 2, 1, 6, 8))


def test_unknown_model_and_bad_spec_dict():
    with pytest.raises(ValueError, match="unknown model name 'lenet'"):
        build("lenet", classes=2)
    with pytest.raises(ValueError, match="name"):
        from_spec({"classes": 2})
    with pytest.raises(ValueError, match="input_size"):
        build("conv_net", in_channels=1, input_size=[8, 8, 8], classes=2)


def test_stable_layer_names():
    names = dict(build("resnet", in_channels=1, input_size=8, classes=2, widths=[2, 4],
                       blocks=[1, 1], hidden=[3]).named_modules())
    for fqn in ["features.stem.conv", "features.stem.bn", "features.stem.act",
                "features.stage0.0.conv1", "features.stage1.0.downsample.conv",
                "features.stage1.0.act2", "features.pool", "classifier.fc0", "classifier.bn0",
                "classifier.act0", "classifier.fc"]:
        assert fqn in names, fqn
    conv = dict(build("conv_net", in_channels=1, input_size=8, classes=2).named_modules())
    assert {"features.0.conv", "features.0.bn", "features.0.act", "features.2.pool",
            "classifier.flatten", "classifier.fc"} <= set(conv)
