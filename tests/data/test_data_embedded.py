import random
import socket
import urllib.request

import numpy as np
import pytest

from spikecompress.data import DataConfig, digits_arrays, load_data, mnist1d_arrays


def test_digits_split_sizes_range_and_shape():
    a = digits_arrays(seed=0)
    assert a.x_train.shape == (1437, 1, 8, 8) and a.x_test.shape == (360, 1, 8, 8)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert a.x_train.min() == 0.0 and a.x_train.max() == 1.0
    assert a.classes == 10


def test_digits_split_is_stratified_and_seeded():
    a, b, c = digits_arrays(0), digits_arrays(0), digits_arrays(1)
    total = np.bincount(np.concatenate([a.y_train, a.y_test]), minlength=10)
    test = np.bincount(a.y_test, minlength=10)
    assert np.all(np.abs(test - 0.2 * total) <= 1)
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_test, c.x_test)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the network fails loudly."""
    import requests

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_mnist1d_small_generation_offline_cached_and_rng_neutral(tmp_path, no_network, monkeypatch):
    random.seed(5)
    np.random.seed(5)
    before = (random.random(), np.random.rand())
    random.seed(5)
    np.random.seed(5)
    a = mnist1d_arrays(root=tmp_path, num_samples=500)
    assert (random.random(), np.random.rand()) == before  # global RNGs untouched
    assert a.x_train.shape == (400, 1, 40) and a.x_test.shape == (100, 1, 40)
    assert a.x_train.dtype == np.float32 and a.y_test.dtype == np.int64
    assert set(np.unique(a.y_train)) == set(range(10))
    assert len(list(tmp_path.glob("mnist1d_*.npz"))) == 1

    import mnist1d.data

    def refuse(*args, **kwargs):
        raise AssertionError("regenerated instead of reading the cache")

    monkeypatch.setattr(mnist1d.data, "make_dataset", refuse)
    b = mnist1d_arrays(root=tmp_path, num_samples=500)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)


def test_mnist1d_cache_dir_from_environment(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("SPIKECOMPRESS_CACHE", str(tmp_path / "env_cache"))
    mnist1d_arrays(num_samples=100)
    assert len(list((tmp_path / "env_cache").glob("mnist1d_*.npz"))) == 1


@pytest.mark.slow
def test_mnist1d_published_split(tmp_path, no_network):
    data = load_data(DataConfig("mnist1d", root=str(tmp_path), batch_size=100))
    assert data.train.num_samples == 4000 and data.test.num_samples == 1000
    assert data.input_shape == (1, 40) and data.classes == 10


def test_load_data_digits_with_limit_is_class_balanced():
    data = load_data(DataConfig("digits", T=3, batch_size=32, limit=50))
    assert data.train.num_samples == 50 and data.test.num_samples == 360
    assert np.bincount(data.train.y.numpy(), minlength=10).tolist() == [5] * 10
    x_seq, y = next(iter(data.train))
    assert x_seq.shape == (3, 32, 1, 8, 8) and y.shape == (32,)
    assert data.input_shape == (1, 8, 8) and data.name == "digits"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"name": "imagenet"}, "data.name"),
        ({"name": "digits", "T": 0}, "data.T"),
        ({"name": "digits", "batch_size": 0}, "data.batch_size"),
        ({"name": "digits", "encoding": "events"}, "data.encoding"),
        ({"name": "event_digits", "encoding": "poisson"}, "data.encoding"),
        ({"name": "digits", "seed": -1}, "data.seed"),
        ({"name": "digits", "limit": 0}, "data.limit"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        DataConfig(**kwargs)
