import pytest
import torch

from spikecompress.data import Loader


def make(n=23, encoding="direct", **kwargs):
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n) % 3
    args = dict(T=5, batch_size=4, shuffle=True, encoding=encoding, seed=0)
    args.update(kwargs)
    return Loader(x, y, **args)


def test_batches_are_time_major_and_typed():
    loader = make()
    batches = list(loader)
    assert len(batches) == len(loader) == 6
    x_seq, y = batches[0]
    assert x_seq.shape == (5, 4, 1, 4, 4) and x_seq.dtype == torch.float32
    assert y.shape == (4,) and y.dtype == torch.int64
    assert batches[-1][0].shape == (5, 3, 1, 4, 4)
    assert len(make(drop_last=True)) == 5


def test_set_epoch_makes_shuffling_deterministic_and_resumable():
    a, b = make(), make()
    a.set_epoch(3)
    b.set_epoch(3)
    assert torch.equal(a.indices(), b.indices())
    b.set_epoch(4)
    assert not torch.equal(a.indices(), b.indices())
    assert sorted(a.indices().tolist()) == list(range(23))
    assert make(shuffle=False).indices().tolist() == list(range(23))


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_rank_shards_are_disjoint_equal_and_cover(world_size):
    shards = []
    for rank in range(world_size):
        loader = make(rank=rank, world_size=world_size)
        loader.set_epoch(2)
        shards.append(loader.indices().tolist())
        assert loader.num_samples == -(-23 // world_size)
    assert all(len(s) == len(shards[0]) for s in shards)
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(23))
    padding = len(flat) - 23
    assert len(flat) - len(set(flat)) == padding  # only the wrap-around padding repeats


def test_encoding_ranges():
    loader = make(shuffle=False)
    x_direct, _ = next(iter(loader))
    assert torch.equal(x_direct[2], loader.x[:4])
    x_lat, _ = next(iter(make(encoding="latency")))
    assert set(x_lat.unique().tolist()) <= {0.0, 1.0} and x_lat.sum(0).max() <= 1
    pois = make(encoding="poisson")
    pois.set_epoch(1)
    x_p1 = next(iter(pois))[0]
    assert set(x_p1.unique().tolist()) <= {0.0, 1.0}
    again = make(encoding="poisson")
    again.set_epoch(1)
    assert torch.equal(next(iter(again))[0], x_p1)
    again.set_epoch(2)
    assert not torch.equal(next(iter(again))[0], x_p1)


def test_event_frames_are_transposed():
    frames = torch.randint(0, 5, (6, 3, 2, 4, 4)).float()  # [N, T, 2, H, W]
    loader = Loader(frames, torch.zeros(6, dtype=torch.long), T=3, batch_size=4, shuffle=False,
                    encoding="events", seed=0)
    x_seq, _ = next(iter(loader))
    assert x_seq.shape == (3, 4, 2, 4, 4)
    assert torch.equal(x_seq[1, 2], frames[2, 1])


@pytest.mark.parametrize(
    "kwargs, match",
    [({"encoding": "rate"}, "encoding"), ({"rank": 2, "world_size": 2}, "rank"),
     ({"batch_size": 0}, "batch_size"), ({"encoding": "events"}, "events")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_holdout_sets_training_samples_aside():
    from spikecompress.data import DataConfig, load_data

    full = load_data(DataConfig(name="digits", T=1, batch_size=512))
    data = load_data(DataConfig(name="digits", T=1, batch_size=512, holdout=0.2))
    rows = {  # every training sample lands in exactly one split
        split: {tuple(x[0, i].flatten().tolist()) for x, _ in loader for i in range(x.shape[1])}
        for split, loader in (("all", full.train), ("train", data.train), ("held", data.holdout))
    }
    assert rows["train"].isdisjoint(rows["held"]) and rows["train"] | rows["held"] == rows["all"]
    held = sum(len(y) for _, y in data.holdout)
    assert held == round(0.2 * sum(len(y) for _, y in full.train))
    assert full.holdout is None
