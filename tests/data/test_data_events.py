import numpy as np
import pytest

from spikecompress.data import (
    NMNIST_DTYPE,
    SENSOR_SIZE,
    DataConfig,
    event_digits_events,
    event_digits_packed,
    load_data,
    to_frames,
)
from spikecompress.data import events as events_mod

N = 20


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("events")
    ev, labels = event_digits_events(seed=0, root=root, num_digits=N)
    return root, ev, labels


def test_events_dtype_ranges_and_order(generated):
    _, ev, labels = generated
    assert len(ev) == N and labels.shape == (N,)
    W, H, _ = SENSOR_SIZE
    for e in ev:
        assert e.dtype == NMNIST_DTYPE
        assert np.all(np.diff(e["t"]) >= 0)
        assert e["t"].min() >= 0 and e["t"].max() < events_mod.DURATION_US
        assert e["x"].max() < W and e["y"].max() < H and set(np.unique(e["p"])) == {0, 1}


def test_event_statistics_are_sane(generated):
    _, ev, _ = generated
    counts = np.array([len(e) for e in ev])
    assert 3000 < counts.mean() < 6000 and counts.min() > 1500
    on = np.concatenate([e["p"] for e in ev]).mean()
    assert 0.45 < on < 0.55


def test_generation_is_deterministic_from_the_seed(generated, tmp_path):
    _, ev, _ = generated
    again, _ = event_digits_events(seed=0, root=tmp_path, num_digits=N)
    other, _ = event_digits_events(seed=1, root=tmp_path, num_digits=N)
    assert all(np.array_equal(a, b) for a, b in zip(ev, again, strict=True))
    same = [len(a) == len(b) and np.array_equal(a, b) for a, b in zip(ev, other, strict=True)]
    assert not all(same)


def test_cache_round_trip_is_identical_and_compact(generated, monkeypatch):
    root, ev, labels = generated
    files = list(root.glob("event_digits_*.npz"))
    assert len(files) == 1 and not list(root.glob("*.tmp"))

    def refuse(*args, **kwargs):
        raise AssertionError("regenerated instead of reading the cache")

    monkeypatch.setattr(events_mod, "generate_events", refuse)
    packed, labels2 = event_digits_packed(seed=0, root=root, num_digits=N)
    assert packed.x.dtype == np.uint8 and packed.t.dtype == np.int32
    assert np.array_equal(labels, labels2)
    assert all(np.array_equal(a, b) for a, b in zip(ev, packed.to_list(), strict=True))


def test_corrupt_cache_is_regenerated(tmp_path):
    ev, _ = event_digits_events(seed=0, root=tmp_path, num_digits=3)
    (path,) = tmp_path.glob("event_digits_*.npz")
    path.write_bytes(b"not a zip")
    again, _ = event_digits_events(seed=0, root=tmp_path, num_digits=3)
    assert all(np.array_equal(a, b) for a, b in zip(ev, again, strict=True))


@pytest.mark.parametrize("T", [1, 4, 7])
def test_to_frames_counts_every_event_per_polarity(generated, T):
    _, ev, _ = generated
    frames = to_frames(ev, T)
    assert frames.shape == (N, T, 2, 22, 22)
    for i, e in enumerate(ev):
        for p in (0, 1):
            assert frames[i, :, p].sum() == np.sum(e["p"] == p)
    t = ev[0]["t"]
    per_bin = np.bincount(t * T // events_mod.DURATION_US, minlength=T)
    assert frames[0].sum(axis=(1, 2, 3)).tolist() == per_bin.tolist()


def test_to_frames_matches_tonic(generated):
    tonic_transforms = pytest.importorskip("tonic.transforms")
    _, ev, _ = generated
    dur = events_mod.DURATION_US
    for T in (3, 4):
        frames = to_frames(ev, T)
        to_frame = tonic_transforms.ToFrame(
            SENSOR_SIZE, time_window=dur / T, start_time=0, end_time=dur
        )
        for i, e in enumerate(ev):
            assert np.array_equal(to_frame(e.copy()), frames[i])


def test_to_frames_rejects_events_outside_the_sensor():
    e = np.zeros(1, NMNIST_DTYPE)
    e["x"] = 22
    with pytest.raises(ValueError, match="'x'"):
        to_frames([e], 4)


def test_bad_dt_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="dt_ms"):
        event_digits_events(root=tmp_path, dt_ms=3.0, num_digits=2)


@pytest.mark.slow
def test_full_event_digits(tmp_path):
    data = load_data(DataConfig("event_digits", T=4, batch_size=16, root=str(tmp_path)))
    assert data.train.num_samples == 1437 and data.test.num_samples == 360
    assert data.input_shape == (2, 22, 22) and data.classes == 10
    x_seq, y = next(iter(data.train))
    assert x_seq.shape == (4, 16, 2, 22, 22) and x_seq.dtype.is_floating_point
    packed, _ = event_digits_packed(seed=0, root=tmp_path)
    assert 4000 < packed.counts().mean() < 5000
    assert 0.48 < packed.p.mean() < 0.53


def test_to_frames_drops_events_outside_the_window_and_merges_single_polarity():
    e = np.zeros(4, NMNIST_DTYPE)
    e["t"] = [-5, 0, 299_999, 300_000]
    e["p"] = [1, 0, 1, 1]
    frames = to_frames([e, e[:0]], 2)
    assert frames.shape == (2, 2, 2, 22, 22)
    assert frames[0, 0, 0, 0, 0] == 1 and frames[0, 1, 1, 0, 0] == 1 and frames.sum() == 2
    single = to_frames([e], 2, sensor_size=(22, 22, 1))
    assert single.shape == (1, 2, 1, 22, 22) and single.sum() == 2
