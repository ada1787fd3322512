"""ANN → SNN conversion (``ann_conversion``): the rates of the converted SNN converge to the ANN's
ReLUs, so a trained ANN with BN converts to an SNN as accurate as the ANN at many time steps."""

import copy

import pytest
import torch
import torch.nn.functional as F

from spikecompress.compress.session import attach
from spikecompress.compress.temporal.ann_conversion import ANNConversion
from spikecompress.data import DataConfig, load_data
from spikecompress.models import build
from spikecompress.snn.layers import reset_state


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=1, batch_size=64))


@pytest.fixture(scope="module")
def trained_ann(data):
    """The digits reference CNN (3 conv layers 16-32-64 + BN), ANN twin with average pooling."""
    torch.manual_seed(0)
    ann = build("conv_net", in_channels=1, input_size=8, classes=10, widths=[16, 32, 64],
                pool="avg", spiking=False)
    opt = torch.optim.Adam(ann.parameters(), lr=5e-3)
    for _ in range(4):
        for x_seq, y in data.train:
            loss = F.cross_entropy(ann(x_seq).mean(0), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return ann.eval()


def _accuracy(model, data, T):
    correct = total = 0
    with torch.no_grad():
        for x_seq, y in data.test:
            out = model(x_seq.expand(T, *x_seq.shape[1:]))  # direct encoding: the same frame
            reset_state(model)
            correct += int((out.mean(0).argmax(1) == y).sum())
            total += len(y)
    return correct / total


@pytest.mark.parametrize("percentile", [99.0, 99.9])
def test_trained_three_layer_cnn_converts_within_5_points_of_its_ann_at_32_steps(
    trained_ann, data, percentile
):
    ann = copy.deepcopy(trained_ann)
    session = attach(ann, [ANNConversion(percentile=percentile)])
    with torch.no_grad():
        for x_seq, _ in data.train:
            ann(x_seq)
    snn = session.finalize().eval()
    ann_acc = _accuracy(trained_ann, data, 1)
    assert ann_acc > 0.9  # the ANN learned the task
    at2, at32 = _accuracy(snn, data, 2), _accuracy(snn, data, 32)
    assert at32 >= ann_acc - 0.05  # rate coding converges to the ANN
    assert at32 > at2 + 0.3  # and needs the steps to do so


def test_sew_additions_share_one_threshold_and_scale_the_layer_that_reads_them(data):
    torch.manual_seed(0)
    ann = build("sew_resnet", in_channels=1, input_size=8, classes=10, widths=[4, 8],
                blocks=[1, 1], spiking=False).eval()
    weights = {k: v.clone() for k, v in ann.state_dict().items()}
    method = ANNConversion(percentile=90.0)
    session = attach(ann, [method])
    with torch.no_grad():
        for x_seq, _ in data.train:
            ann(x_seq)
    pct = method.percentiles()
    snn = session.finalize()
    modules = dict(snn.named_modules())
    th = {n: float(m.v_threshold) for n, m in modules.items() if hasattr(m, "v_threshold")}
    # stage 0 adds the stem's spikes to its block's: one threshold, the larger percentile
    tied = ["features.stem.act", "features.stage0.0.act2"]
    assert th[tied[0]] == th[tied[1]] == pytest.approx(max(pct[n] for n in tied))
    assert th["features.stage0.0.act1"] == pytest.approx(pct["features.stage0.0.act1"])
    for layer, source in [("features.stem.conv", None),  # reads the input, not spikes
                          ("features.stage0.0.conv2", "features.stage0.0.act1"),
                          ("features.stage1.0.conv1", tied[0]),
                          ("features.stage1.0.downsample.conv", tied[0]),
                          ("classifier.fc", "features.stage1.0.act2")]:
        scale = 1.0 if source is None else th[source]
        expected = weights[f"{layer}.weight"] * scale
        assert torch.allclose(modules[layer].weight, expected, rtol=1e-6), layer


def test_an_identity_shortcut_into_a_neuron_is_refused():
    ann = build("resnet", in_channels=1, input_size=8, classes=10, widths=[4, 8],
                blocks=[1, 1], hidden=[], spiking=False)
    with pytest.raises(ValueError, match="cannot convert features.stage0.0.act2"):
        attach(ann, [ANNConversion()])


def test_evaluations_during_a_training_stage_do_not_calibrate(data):
    torch.manual_seed(0)
    ann = build("conv_net", in_channels=1, input_size=8, classes=10, widths=[4, 8],
                pool="avg", spiking=False)
    method = ANNConversion(percentile=99.0)
    attach(ann, [method])
    x_seq = next(iter(data.train))[0]
    with torch.no_grad():
        ann.train()(x_seq)
        trained = method.percentiles()
        ann.eval()(x_seq * 100)  # an evaluation pass (e.g. on the test set) between epochs
    assert method.percentiles() == trained
    assert method.evals_  # kept apart: they count only in a calibration without training
