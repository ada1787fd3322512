import pytest
import torch
from torch import nn

from spikecompress import snn


def test_folded_conv_equals_per_step_conv():
    conv = snn.Conv2d(2, 4, 3, padding=1)
    x_seq = torch.rand(3, 5, 2, 6, 6)  # [T, B, C, H, W]
    out = conv(x_seq)
    assert out.shape == (3, 5, 4, 6, 6)
    for t in range(3):
        torch.testing.assert_close(out[t], nn.Conv2d.forward(conv, x_seq[t]))


def test_batchnorm_statistics_span_time_and_batch():
    bn = snn.BatchNorm2d(3)
    x_seq = torch.randn(4, 2, 3, 5, 5) * 3 + 1
    y = bn(x_seq)
    per_channel = y.transpose(0, 2).flatten(1)  # [C, T*B*H*W]
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "layer,shape,out_shape",
    [
        (snn.Conv1d(1, 3, 5, stride=2, padding=1), (4, 2, 1, 40), (4, 2, 3, 19)),
        (snn.BatchNorm1d(3), (4, 2, 3, 19), (4, 2, 3, 19)),
        (snn.BatchNorm1d(7), (4, 2, 7), (4, 2, 7)),
        (snn.MaxPool2d(2), (4, 2, 3, 8, 8), (4, 2, 3, 4, 4)),
        (snn.AvgPool2d(2), (4, 2, 3, 8, 8), (4, 2, 3, 4, 4)),
        (snn.MaxPool1d(2), (4, 2, 3, 8), (4, 2, 3, 4)),
        (snn.AvgPool1d(2), (4, 2, 3, 8), (4, 2, 3, 4)),
        (snn.AdaptiveAvgPool2d(1), (4, 2, 3, 8, 8), (4, 2, 3, 1, 1)),
        (snn.Flatten(), (4, 2, 3, 2, 2), (4, 2, 12)),
        (snn.Linear(12, 5), (4, 2, 12), (4, 2, 5)),
        (snn.SeqWrap(nn.Upsample(scale_factor=2)), (4, 2, 3, 2, 2), (4, 2, 3, 4, 4)),
    ],
)
def test_layers_take_and_return_time_major_sequences(layer, shape, out_shape):
    assert layer(torch.rand(*shape)).shape == out_shape


def test_shape_check_names_expected_and_actual_shape():
    with pytest.raises(
        ValueError, match=r"expected x_seq of shape \[T, B, C, H, W\], got \(4, 3, 32\)"
    ):
        snn.Conv2d(3, 8, 3)(torch.rand(4, 3, 32))


def test_dropout_mask_is_shared_over_time():
    drop = snn.Dropout(0.5).train()
    y = drop(torch.ones(6, 4, 50))
    assert torch.equal(y, y[:1].expand_as(y))
    assert 0 < (y[0] == 0).float().mean() < 1
    assert torch.equal(drop.eval()(torch.ones(6, 4, 50)), torch.ones(6, 4, 50))


def test_reset_state_clears_every_neuron_and_returns_model():
    model = nn.Sequential(snn.Linear(4, 4), snn.LIF(), snn.Linear(4, 2), snn.IF())
    model(torch.rand(3, 2, 4))
    assert all(m.v is not None for m in model if hasattr(m, "v"))
    assert snn.reset_state(model) is model
    assert all(m.v is None for m in model if hasattr(m, "v"))


def test_fold_unfold_round_trip():
    x_seq = torch.rand(3, 4, 5)
    assert snn.fold(x_seq).shape == (12, 5)
    assert torch.equal(snn.unfold(snn.fold(x_seq), 3), x_seq)
