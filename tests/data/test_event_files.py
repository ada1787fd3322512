"""Local event recordings (N-MNIST, DVS Gesture, events .npz): small synthetic files written here,
frames checked against a brute-force count of the same events."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from spikecompress.data import DataConfig, DataError, load_data
from spikecompress.data import api as api_mod
from spikecompress.data import event_binning as eb
from spikecompress.data import event_files as ef
from spikecompress.data import event_recordings as er


# -- writers and the brute-force reference --------------------------------------------------------
def encode_nmnist(x, y, t, p) -> bytes:
    """N-MNIST's 40-bit events, written byte by byte from the format description."""
    out = bytearray()
    for xi, yi, ti, pi in zip(x, y, t, p, strict=True):
        out += bytes([xi, yi, (pi << 7) | ((ti >> 16) & 0x7F), (ti >> 8) & 0xFF, ti & 0xFF])
    return bytes(out)


def random_events(rng, n, W, H, t_max):
    t = np.sort(rng.integers(0, t_max, n))
    return (rng.integers(0, W, n), rng.integers(0, H, n), t, rng.integers(0, 2, n))


def brute_frames(events, T, W, H, d=1):
    """[T, 2, ceil(H/d), ceil(W/d)] counts, one event at a time: window (t - t0) * T // span."""
    x, y, t, p = (np.asarray(v).tolist() for v in events)
    out = np.zeros((T, 2, -(-H // d), -(-W // d)), np.int64)
    if t:
        t0, span = min(t), max(t) - min(t) + 1
        for xi, yi, ti, pi in zip(x, y, t, p, strict=True):
            out[(ti - t0) * T // span, pi, yi // d, xi // d] += 1
    return out


def make_nmnist(root, per_class=(2, 1), classes=(0, 3, 9), seed=0):
    """<root>/{Train,Test}/<digit>/<id>.bin; returns {split: [(label, events)]} in sorted order."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, folder, n in (("train", "Train", per_class[0]), ("test", "Test", per_class[1])):
        out[split] = []
        for label in classes:
            (root / folder / str(label)).mkdir(parents=True)
            for i in range(n):
                ev = random_events(rng, int(rng.integers(5, 40)), 34, 34, 2**23)
                (root / folder / str(label) / f"{i:05d}.bin").write_bytes(encode_nmnist(*ev))
                out[split].append((label, ev))
    return out


def make_gesture(root, seed=0):
    """<root>/ibmGesture{Train,Test}/user<NN>_<light>/<label>.npy, columns x, y, p, t (ms)."""
    rng = np.random.default_rng(seed)
    plan = {"train": [("user01_fluorescent", (0, 4, 10)), ("user02_led", (0, 4, 10))],
            "test": [("user24_led", (0, 4, 10))]}
    out = {}
    for split, users in plan.items():
        folder = root / ("ibmGestureTrain" if split == "train" else "ibmGestureTest")
        out[split] = []
        for u, (user, labels) in enumerate(users):
            (folder / user).mkdir(parents=True)
            for label in labels:
                x, y, t_ms, p = random_events(rng, int(rng.integers(5, 60)), 128, 128, 6000)
                arr = np.stack([x, y, p, t_ms], axis=1)
                if u == 1 and label == 4:  # a float file with fractional ms, as tonic reads
                    arr = arr.astype(np.float64)
                    arr[:, 3] += 0.25
                np.save(folder / user / f"{label}.npy", arr)
                t_us = np.floor(arr[:, 3] * 1000).astype(np.int64)
                out[split].append((label, (x, y, t_us, p)))
    return out


def pack(samples):
    """Concatenate [(label, (x, y, t, p))] into the events .npz arrays."""
    evs = [ev for _, ev in samples]
    offsets = np.concatenate([[0], np.cumsum([len(ev[0]) for ev in evs])])
    cat = {k: np.concatenate([ev[i] for ev in evs]) for i, k in enumerate("xytp")}
    return {**cat, "offsets": offsets, "labels": np.array([label for label, _ in samples])}


def npz_samples(rng, n, W=7, H=5, classes=3):
    return [(i % classes, random_events(rng, int(rng.integers(0, 25)), W, H, 10**6))
            for i in range(n)]


def assert_frames(x, samples, T, W, H, d=1):
    x = x.numpy()
    assert x.dtype == np.float32 and x.shape[1] == T
    expected = np.stack([brute_frames(ev, T, W, H, d) for _, ev in samples])
    assert np.array_equal(x, expected)  # exact integer counts
    assert x.sum() == sum(len(ev[0]) for _, ev in samples)  # no event lost


def one_line_error(match, fn):
    with pytest.raises(DataError, match=match) as err:
        fn()
    assert "\n" not in str(err.value)
    return str(err.value)


# -- N-MNIST ---------------------------------------------------------------------------------------
def test_nmnist_bits_round_trip(tmp_path):
    # the layout by hand: x=5, y=7, ON, t=0x123456 -> 05 07 (0x80|0x12) 34 56
    assert encode_nmnist([5], [7], [0x123456], [1]) == bytes([0x05, 0x07, 0x92, 0x34, 0x56])
    x = np.array([0, 33, 5, 17, 33])
    y = np.array([0, 33, 7, 2, 0])
    t = np.array([0, 1, 0x123456, 2**16 + 255, 2**23 - 1])
    p = np.array([0, 1, 1, 0, 1])
    (tmp_path / "a.bin").write_bytes(encode_nmnist(x, y, t, p))
    got = er.read_nmnist_bin(tmp_path / "a.bin")
    for a, b in zip(got, (x, y, t, p), strict=True):
        assert np.array_equal(a, b)


def _tonic_io():
    spec = importlib.util.find_spec("tonic")  # tonic's package import needs importRosbag: load
    if spec is None or not spec.submodule_search_locations:  # io.py alone, by path
        return None
    path = Path(spec.submodule_search_locations[0]) / "io.py"
    io_spec = importlib.util.spec_from_file_location("_tonic_io_for_test", path)
    module = importlib.util.module_from_spec(io_spec)
    io_spec.loader.exec_module(module)
    return module


def test_nmnist_decoder_agrees_with_tonics_reader(tmp_path):
    tonic_io = _tonic_io()
    if tonic_io is None:  # tonic is GPL and optional (not in the oracle install): this cross-check
        # runs where a user has it; the bit layout is pinned regardless by the round-trip test
        pytest.skip("tonic is not installed")
    ev = random_events(np.random.default_rng(1), 300, 34, 34, 2**23)
    (tmp_path / "b.bin").write_bytes(encode_nmnist(*ev))
    dtype = np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])
    theirs = tonic_io.read_mnist_file(str(tmp_path / "b.bin"), dtype=dtype)
    ours = er.read_nmnist_bin(tmp_path / "b.bin")
    for name, a in zip("xytp", ours, strict=True):
        assert np.array_equal(theirs[name], a)


@pytest.mark.parametrize("tonic_layout", [False, True])
def test_nmnist_frames_labels_split(tmp_path, tonic_layout):
    root = tmp_path / "NMNIST" if tonic_layout else tmp_path  # tonic's save_to holds NMNIST/
    samples = make_nmnist(root)
    data = load_data(DataConfig("nmnist", root=str(tmp_path), T=3, batch_size=4))
    assert data.input_shape == (2, 34, 34) and data.classes == 10 and data.name == "nmnist"
    assert data.train.num_samples == 6 and data.test.num_samples == 3
    for loader, split in ((data.train, "train"), (data.test, "test")):
        assert loader.y.tolist() == [label for label, _ in samples[split]]
        assert_frames(loader.x, samples[split], 3, 34, 34)
    x_seq, y = next(iter(data.test))
    assert x_seq.shape == (3, 3, 2, 34, 34) and y.tolist() == [0, 3, 9]


def test_nmnist_downsample_sum_pools_and_chunks_agree(tmp_path, monkeypatch):
    samples = make_nmnist(tmp_path, seed=2)
    cfg = DataConfig("nmnist", root=str(tmp_path), T=5, downsample=4)
    data = load_data(cfg)
    assert data.input_shape == (2, 9, 9)  # ceil(34 / 4)
    assert_frames(data.train.x, samples["train"], 5, 34, 34, d=4)
    monkeypatch.setattr(eb, "CHUNK_CELLS", 1)  # one recording per chunk
    assert np.array_equal(load_data(cfg).train.x.numpy(), data.train.x.numpy())


# -- DVS Gesture -----------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [1, 8])
def test_dvs_gesture_frames_labels_split(tmp_path, d):
    samples = make_gesture(tmp_path / "DVSGesture")  # tonic's save_to layout
    data = load_data(DataConfig("dvs_gesture", root=str(tmp_path), T=4, downsample=d))
    assert data.input_shape == (2, 128 // d, 128 // d) and data.classes == 11
    assert data.train.num_samples == 6 and data.test.num_samples == 3
    for loader, split in ((data.train, "train"), (data.test, "test")):
        assert loader.y.tolist() == [label for label, _ in samples[split]]
        assert_frames(loader.x, samples[split], 4, 128, 128, d)


# -- events .npz -----------------------------------------------------------------------------------
def test_events_npz_single_file_with_split(tmp_path):
    rng = np.random.default_rng(3)
    samples = npz_samples(rng, 9)
    samples[4] = (samples[4][0], tuple(v[:0] for v in samples[4][1]))  # an empty recording
    split = np.array([0, 0, 0, 1, 0, 1, 0, 0, 1])
    np.savez(tmp_path / "ev.npz", **pack(samples), sensor=np.array([7, 5]), split=split)
    data = load_data(DataConfig("events_npz", root=str(tmp_path / "ev.npz"), T=6))
    assert data.input_shape == (2, 5, 7) and data.classes == 3
    train = [s for s, k in zip(samples, split, strict=True) if k == 0]
    test = [s for s, k in zip(samples, split, strict=True) if k == 1]
    assert data.train.y.tolist() == [label for label, _ in train]
    assert_frames(data.train.x, train, 6, 7, 5)
    assert_frames(data.test.x, test, 6, 7, 5)


def test_events_npz_seeded_split_and_folder(tmp_path):
    rng = np.random.default_rng(4)
    samples = npz_samples(rng, 20, W=3, H=4, classes=2)
    np.savez(tmp_path / "all.npz", **pack(samples), sensor=np.array([3, 4]))
    data = load_data(DataConfig("events_npz", root=str(tmp_path / "all.npz"), T=2, seed=1))
    assert data.train.num_samples == 16 and data.test.num_samples == 4
    expected = {tuple(brute_frames(ev, 2, 3, 4).ravel()) for _, ev in samples}
    got = np.concatenate([data.train.x.numpy(), data.test.x.numpy()]).reshape(20, -1)
    assert {tuple(row) for row in got.astype(np.int64)} == expected
    assert sorted(data.test.y.tolist()) == [0, 0, 1, 1]  # stratified

    folder = tmp_path / "folder"
    folder.mkdir()
    np.savez(folder / "train.npz", **pack(samples[:14]), sensor=np.array([3, 4]))
    np.savez(folder / "test.npz", **pack(samples[14:]), sensor=np.array([3, 4]))
    data = load_data(DataConfig("events_npz", root=str(folder), T=3))
    assert_frames(data.train.x, samples[:14], 3, 3, 4)
    assert_frames(data.test.x, samples[14:], 3, 3, 4)


# -- bad input: one line, naming the file or folder and the field ---------------------------------
def _npz(tmp_path, **change):
    rng = np.random.default_rng(5)
    arrays = {**pack(npz_samples(rng, 6)), "sensor": np.array([7, 5])}
    arrays.update({k: v(arrays) if callable(v) else v for k, v in change.items()})
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return lambda: load_data(DataConfig("events_npz", root=str(path), T=2))


def test_bad_nmnist_input(tmp_path):
    one_line_error("nmnist: missing folder .*Train", lambda: load_data(
        DataConfig("nmnist", root=str(tmp_path))))
    make_nmnist(tmp_path)
    load = lambda: load_data(DataConfig("nmnist", root=str(tmp_path)))  # noqa: E731
    bad = tmp_path / "Train" / "3" / "00000.bin"
    bad.write_bytes(bad.read_bytes()[:-2])
    msg = one_line_error("5-byte N-MNIST events", load)
    assert str(bad) in msg
    bad.write_bytes(encode_nmnist([40], [1], [5], [1]))  # x beyond the 34-pixel sensor
    msg = one_line_error(r"'x' is 40 at event 0, outside the sensor width 34", load)
    assert str(bad) in msg
    bad.unlink()
    (tmp_path / "Test" / "10").mkdir()
    one_line_error(r"Test.10: unknown label folder '10'", load)
    (tmp_path / "Test" / "10").rmdir()
    for f in (tmp_path / "Test").rglob("*.bin"):
        f.unlink()
    one_line_error(r"no \.bin recordings under .*Test", load)


def test_bad_gesture_input(tmp_path):
    make_gesture(tmp_path)
    load = lambda: load_data(DataConfig("dvs_gesture", root=str(tmp_path)))  # noqa: E731
    user = tmp_path / "ibmGestureTest" / "user24_led"
    np.save(user / "11.npy", np.zeros((3, 4), np.int64))
    one_line_error(r"11\.npy: unknown label file '11\.npy'", load)
    np.save(user / "11.npy", np.zeros((3, 4), np.int64))
    (user / "11.npy").rename(tmp_path / "ibmGestureTest" / "x.npy")  # a stray file: ignored
    np.save(user / "2.npy", np.zeros((3, 3), np.int64))
    one_line_error(r"2\.npy: expected an \[E, 4\] array", load)
    np.save(user / "2.npy", np.array([[1, 128, 0, 5]]))
    one_line_error(r"2\.npy: column 'y' is 128 at event 0, outside the sensor height 128", load)
    np.save(user / "2.npy", np.array([[1, 2, 2, 5]]))
    one_line_error(r"2\.npy: column 'p' is 2 at event 0; polarity must be 0", load)
    np.save(user / "2.npy", np.array([["a", "b", "c", "d"]]))
    one_line_error(r"2\.npy: events must be numbers", load)
    np.save(user / "2.npy", np.array([[1, 2, 0, 5]], dtype=object), allow_pickle=True)
    one_line_error(r"2\.npy: events must be numbers", load)  # never unpickled
    (user / "2.npy").unlink()
    (tmp_path / "ibmGestureTrain" / "nobody").mkdir()
    one_line_error(r"nobody: unknown folder 'nobody'; expected user<NN>_<lighting>", load)


@pytest.mark.parametrize("change, match", [
    ({"offsets": None}, r"bad\.npz: missing array 'offsets'"),
    ({"x": np.zeros(100, np.int64)}, r"'y' has \d+ events but 'x' has 100"),
    ({"offsets": lambda a: a["offsets"][[0, 2, 1, 3, 4, 5, 6]]}, r"'offsets' must be non-decr"),
    ({"offsets": lambda a: a["offsets"][[0, 2, 1, 3, 4, 5, 6]].astype(np.uint32)},
     r"'offsets' must be non-decr"),  # unsigned: np.diff would wrap around
    ({"offsets": lambda a: a["offsets"][:-1]}, r"'offsets' must start at 0 and end at the event"),
    ({"labels": np.array([0, 1, 2, 0, 1, -2])}, r"'labels' must be 1-D non-negative integer"),
    ({"sensor": np.array([7])}, r"'sensor' must be \(W, H\)"),
    ({"split": np.array([0, 0, 0, 0, 0, 0])}, r"'split' leaves no test sample"),
    ({"classes": np.array(2)}, r"'labels' holds 2 \(sample 2\), out of range for 'classes' 2"),
    ({"t": np.zeros(3, np.float64)}, r"'t' must hold integers"),
    ({"extra": np.zeros(1)}, r"unexpected array 'extra'"),
])
def test_bad_events_npz_fields(tmp_path, change, match):
    one_line_error(match, _npz(tmp_path, **change))


def test_bad_events_npz_values_name_the_field(tmp_path):
    base = pack(npz_samples(np.random.default_rng(5), 6))
    for key, index, value, match in [
        ("x", 3, 7, r"'x' is 7 at event 3, outside the sensor width 7"),
        ("y", 1, -1, r"'y' is -1 at event 1, outside the sensor height 5"),
        ("p", 2, 2, r"'p' is 2 at event 2; polarity must be 0 \(OFF\) or 1 \(ON\)"),
        ("t", 0, -5, r"'t' is -5 at event 0"),
    ]:
        arr = base[key].copy()
        arr[index] = value
        msg = one_line_error(match, _npz(tmp_path, **{key: arr}))
        assert "bad.npz" in msg
    t = base["t"].copy()
    first = int(np.flatnonzero(np.diff(base["offsets"]) >= 2)[0])  # a sample with 2+ events
    a = int(base["offsets"][first])
    t[a], t[a + 1] = 10, 9
    for dtype in (np.int64, np.uint32):  # unsigned: np.diff would wrap around
        one_line_error(rf"'t' goes back in time at event {a + 1} \(sample {first}: 10 -> 9\)",
                       _npz(tmp_path, t=t.astype(dtype)))


def test_events_npz_declared_classes(tmp_path):
    rng = np.random.default_rng(6)
    samples = npz_samples(rng, 8, classes=2)  # labels 0, 1 only
    folder = tmp_path / "f"
    folder.mkdir()
    np.savez(folder / "train.npz", **pack(samples[:6]), sensor=np.array([7, 5]),
             classes=np.array(4))
    np.savez(folder / "test.npz", **pack(samples[6:]), sensor=np.array([7, 5]))
    assert load_data(DataConfig("events_npz", root=str(folder), T=2)).classes == 4
    arrays = pack(samples[6:])
    arrays["labels"][1] = 4
    np.savez(folder / "test.npz", **arrays, sensor=np.array([7, 5]))
    one_line_error(r"'test.npz labels' holds 4 \(sample 1\), out of range for 'classes' 4",
                   lambda: load_data(DataConfig("events_npz", root=str(folder), T=2)))


def test_bad_events_npz_files(tmp_path):
    one_line_error(r"events_npz: missing .*nope\.npz", lambda: load_data(
        DataConfig("events_npz", root=str(tmp_path / "nope.npz"))))
    one_line_error(r"events_npz: DataConfig.root must be", lambda: load_data(
        DataConfig("events_npz")))
    one_line_error(r"events_npz: missing .*train\.npz", lambda: load_data(
        DataConfig("events_npz", root=str(tmp_path))))
    np.savez(tmp_path / "obj.npz", x=np.array([1, "a"], dtype=object))
    one_line_error(r"cannot read .*obj\.npz", lambda: load_data(  # never unpickled
        DataConfig("events_npz", root=str(tmp_path / "obj.npz"))))


# -- settings and memory ---------------------------------------------------------------------------
def test_downsample_setting_is_checked():
    with pytest.raises(ValueError, match="data.downsample applies to nmnist"):
        DataConfig("digits", downsample=2)
    with pytest.raises(ValueError, match="data.downsample must be an integer >= 1"):
        DataConfig("nmnist", downsample=0)


def test_memory_is_checked_from_the_listing_before_reading(tmp_path, monkeypatch):
    make_nmnist(tmp_path)
    assert ef.event_files_shape("nmnist", str(tmp_path), 2) == (6, 9, (2, 17, 17))
    monkeypatch.setattr(api_mod, "physical_memory", lambda: 2**20)

    def refuse(*args, **kwargs):
        raise AssertionError("read a recording before the memory check")

    monkeypatch.setattr(er, "read_nmnist_bin", refuse)
    one_line_error(r"data.T 100: .* more than 50% of this machine", lambda: load_data(
        DataConfig("nmnist", root=str(tmp_path), T=100)))
