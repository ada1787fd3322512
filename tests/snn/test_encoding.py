import pytest
import torch

from spikecompress.snn import encode


def test_direct_repeats_the_input():
    x = torch.rand(2, 1, 4, 4)
    x_seq = encode(x, 5, "direct")
    assert x_seq.shape == (5, 2, 1, 4, 4)
    assert all(torch.equal(x_seq[t], x) for t in range(5))


def test_poisson_rate_matches_intensity_and_is_seeded():
    x = torch.tensor([[0.0, 0.25, 0.5, 1.0]]).expand(2000, 4)
    g = torch.Generator().manual_seed(3)
    x_seq = encode(x, 8, "poisson", generator=g)
    assert set(x_seq.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(
        x_seq.mean((0, 1)), torch.tensor([0.0, 0.25, 0.5, 1.0]), atol=0.01, rtol=0
    )
    again = encode(x, 8, "poisson", generator=torch.Generator().manual_seed(3))
    assert torch.equal(x_seq, again)


def test_latency_fires_once_earlier_for_brighter_inputs():
    x = torch.tensor([[1.0, 0.5, 0.01, 0.0]])
    x_seq = encode(x, 5, "latency")  # [T=5, B=1, 4]
    assert x_seq.sum(0).tolist() == [[1.0, 1.0, 1.0, 0.0]]
    first = x_seq[:, 0, :3].argmax(0).tolist()
    assert first == [0, 2, 4]


def test_unknown_encoding_and_bad_T():
    with pytest.raises(ValueError, match="unknown encoding 'rate'"):
        encode(torch.rand(2, 3), 4, "rate")
    with pytest.raises(ValueError, match="T must be"):
        encode(torch.rand(2, 3), 0)
