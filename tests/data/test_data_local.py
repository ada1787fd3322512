import gzip
import hashlib
import pickle

import numpy as np
import pytest

from spikecompress.data import DataConfig, DataError, load_data, read_idx
from spikecompress.data import local as local_mod


def write_idx(path, arr):
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes()
    path.write_bytes(head + arr.tobytes())


def test_read_idx_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", arr)
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    (tmp_path / "a.gz").write_bytes(gzip.compress((tmp_path / "a").read_bytes()))
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4, 2), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(DataError, match="short.*does not match"):
        read_idx(tmp_path / "short")


def make_mnist_tree(root, folder, n_train=30, n_test=10):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_torchvision_layout(tmp_path, name, folder):
    make_mnist_tree(tmp_path, folder)
    data = load_data(DataConfig(name, root=str(tmp_path), batch_size=8, encoding="latency"))
    assert data.train.num_samples == 30 and data.test.num_samples == 10
    assert data.input_shape == (1, 28, 28) and data.classes == 10
    x_seq, y = next(iter(data.test))
    assert x_seq.shape == (4, 8, 1, 28, 28) and y.tolist() == list(range(8))


def test_mnist_missing_file_names_path_and_layout(tmp_path):
    make_mnist_tree(tmp_path, "KMNIST")
    missing = tmp_path / "KMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    missing.unlink()
    with pytest.raises(DataError) as err:
        load_data(DataConfig("kmnist", root=str(tmp_path)))
    msg = str(err.value)
    assert str(missing) in msg and "torchvision layout" in msg and "\n" not in msg


def test_local_dataset_without_root_is_a_clear_error():
    with pytest.raises(DataError, match="root"):
        load_data(DataConfig("cifar10"))


def test_cifar_missing_and_corrupt_files(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    with pytest.raises(DataError, match="batches.meta") as err:
        load_data(DataConfig("cifar10", root=str(tmp_path)))
    assert "\n" not in str(err.value)
    base.mkdir()
    # a hostile pickle: must be refused by the md5 check before anything is unpickled
    (base / "batches.meta").write_bytes(b"cos\nsystem\n(S'touch pwned'\ntR.")
    with pytest.raises(DataError, match=r"batches\.meta: md5 .* does not match"):
        load_data(DataConfig("cifar10", root=str(tmp_path)))
    assert not (tmp_path / "pwned").exists()


def write_fake_cifar(base, n_per_batch=4):
    rng = np.random.default_rng(0)
    md5 = {}
    base.mkdir()
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for f in files:
        batch = {"data": rng.integers(0, 256, (n_per_batch, 3072)).astype(np.uint8),
                 "labels": list(range(n_per_batch))}
        (base / f).write_bytes(pickle.dumps(batch, protocol=2))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a"] * 10}, protocol=2))
    for path in base.iterdir():
        md5[f"{base.name}/{path.name}"] = hashlib.md5(path.read_bytes()).hexdigest()
    return md5


def test_cifar_happy_path_with_patched_md5_table(tmp_path, monkeypatch):
    md5 = write_fake_cifar(tmp_path / "cifar-10-batches-py")
    monkeypatch.setattr(local_mod, "CIFAR_MD5", md5)
    data = load_data(DataConfig("cifar10", root=str(tmp_path), batch_size=5, encoding="poisson"))
    assert data.train.num_samples == 20 and data.test.num_samples == 4
    assert data.input_shape == (3, 32, 32) and data.classes == 10
    x_seq, y = next(iter(data.train))
    assert x_seq.shape == (4, 5, 3, 32, 32) and y.dtype.is_floating_point is False
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())["data"]
    first = raw[0].reshape(3, 32, 32) / 255.0
    assert np.allclose(data.test.x[0].numpy(), first)


def test_restricted_unpickler_refuses_foreign_globals(tmp_path, monkeypatch):
    path = tmp_path / "x"
    path.write_bytes(pickle.dumps({"data": np.zeros(2), "f": print}))
    digest = hashlib.md5(path.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="refused global builtins.print"):
        local_mod.load_verified_pickle(path, digest, "layout")
    ok = tmp_path / "ok"
    ok.write_bytes(pickle.dumps({"data": np.arange(3)}))
    out = local_mod.load_verified_pickle(ok, hashlib.md5(ok.read_bytes()).hexdigest(), "layout")
    assert out["data"].tolist() == [0, 1, 2]


def test_npz_with_and_without_test_split(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((50, 3)).astype(np.float32), np.arange(50) % 5
    np.savez(tmp_path / "own.npz", x=x, y=y)
    data = load_data(DataConfig("npz", root=str(tmp_path / "own.npz"), batch_size=8))
    assert data.train.num_samples == 40 and data.test.num_samples == 10
    assert np.bincount(data.test.y.numpy()).tolist() == [2] * 5
    assert data.input_shape == (3,) and data.classes == 5
    np.savez(tmp_path / "both.npz", x=x, y=y, x_test=x[:7], y_test=y[:7])
    data = load_data(DataConfig("npz", root=str(tmp_path / "both.npz")))
    assert data.train.num_samples == 50 and data.test.num_samples == 7


def test_npz_errors_name_the_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(DataError, match=str(path)):
        load_data(DataConfig("npz", root=str(path)))
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((4, 2)))
    with pytest.raises(DataError, match="missing array 'y'"):
        load_data(DataConfig("npz", root=str(tmp_path / "nolabels.npz")))
    np.savez(tmp_path / "float.npz", x=np.zeros((4, 2)), y=np.zeros(4))
    with pytest.raises(DataError, match="integer labels"):
        load_data(DataConfig("npz", root=str(tmp_path / "float.npz")))
    np.save(tmp_path / "obj.npy", np.array([{}], dtype=object))
    (tmp_path / "obj.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read"):
        load_data(DataConfig("npz", root=str(tmp_path / "obj.npz")))
