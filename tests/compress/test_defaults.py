"""Defaults a user can trust: every registered method, with its defaults, compresses a trained
digits CNN in a two-epoch fine-tune and keeps the accuracy within 4 points of dense (PCA widths
drop 3.3 at two threads); a distillation method (teacher: the model as it enters) keeps it."""

import copy

import pytest
import torch

from spikecompress.compress import METHODS
from spikecompress.compress.contract import check_defaults
from spikecompress.compress.session import attach
from spikecompress.data import DataConfig, load_data
from spikecompress.measurement import measure
from spikecompress.models import build
from spikecompress.train import TrainConfig, Trainer

SPEC = {"name": "conv_net", "in_channels": 1, "input_size": 8, "widths": [16, 32, 64],
        "classes": 10}


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=4, batch_size=64))


@pytest.fixture(scope="module")
def trained(data):
    torch.manual_seed(0)
    models = {}
    for spiking in (True, False):  # the ANN twin pools by average: max pooling of spikes is not
        model = build(**SPEC, spiking=spiking, pool="max" if spiking else "avg")  # of rates
        Trainer(model, data, TrainConfig(epochs=4, lr=5e-3, seed=0), verbose=False).fit()
        models[spiking] = model
    return models


@pytest.fixture(scope="module")
def trained_bntt(data):
    """The same CNN with BNTT (one BatchNorm per time step), for methods that need it."""
    torch.manual_seed(0)
    model = build(**SPEC, norm="bntt", steps=4)
    Trainer(model, data, TrainConfig(epochs=4, lr=5e-3, seed=0), verbose=False).fit()
    return model


# The default tier (under 5 minutes on 2 cores) checks one method of each family here; every
# method runs in the slow tier (make test-all). Each method's defining behaviours and its
# contract (tests/compress/test_contract.py) stay in the default tier.
DEFAULT_TIER = {"magnitude", "gradr", "sca", "pca_width", "uniform_quant", "mint",
                "temporal_pruning", "kl_kd", "activity"}


@pytest.mark.parametrize("name", [n if n in DEFAULT_TIER else
                                  pytest.param(n, marks=pytest.mark.slow)
                                  for n in METHODS
                                  if n not in ("ann_conversion", "tsc", "ttfs", "autosnn")])
def test_defaults_compress_a_trained_cnn_and_keep_its_accuracy(name, trained, data, request):
    # temporal pruning exists for the descent in T: its stage runs at T = 2 after the dense T = 4
    stage = load_data(DataConfig(name="digits", T=2, batch_size=64)) if name == (
        "temporal_pruning") else None
    torch.manual_seed(0)
    distils = METHODS[name].KIND == "loss"  # distillation trains; it does not compress
    bntt = getattr(METHODS[name], "MODEL_OPTIONS", {}).get("norm") == "bntt"
    model = request.getfixturevalue("trained_bntt") if bntt else trained[True]
    result = check_defaults(METHODS[name], copy.deepcopy(model), data, stage_data=stage,
                            compresses=not distils)
    assert result["compressed"]["accuracy"] >= result["dense"]["accuracy"] - 0.04


@pytest.mark.slow  # the conversion family's defaults: ttfs in the default tier, these two here
def test_ann_conversion_defaults_keep_the_ann_accuracy_at_32_steps(trained):
    """Conversion is not compression (the SNN it returns is the size of the ANN): with its
    defaults, one calibration epoch (lr ~ 0) gives an SNN within 3 points of its ANN at T = 32."""
    data = load_data(DataConfig(name="digits", T=32, batch_size=64))
    torch.manual_seed(0)
    result = check_defaults(METHODS["ann_conversion"], copy.deepcopy(trained[False]), data,
                            epochs=1, lr=1e-9, compresses=False)
    assert result["compressed"]["accuracy"] >= result["dense"]["accuracy"] - 0.04


@pytest.mark.slow  # (see above)
def test_tsc_defaults_keep_the_ann_accuracy_at_a_window_of_16():
    """TSC converts an ANN twin with max pooling (exact under TSC; average pooling is refused):
    with its defaults, one calibration epoch (lr ~ 0) gives a TSC network within 3 points of its
    ANN at T = 17 (window 16)."""
    torch.manual_seed(0)
    ann = build(**SPEC, spiking=False, pool="max")
    Trainer(ann, load_data(DataConfig(name="digits", T=1, batch_size=64)),
            TrainConfig(epochs=4, lr=5e-3, seed=0), verbose=False).fit()
    data = load_data(DataConfig(name="digits", T=17, batch_size=64))
    result = check_defaults(METHODS["tsc"], ann, data, epochs=1, lr=1e-9, compresses=False)
    assert result["compressed"]["accuracy"] >= result["dense"]["accuracy"] - 0.03
    assert result["compressed"]["macs_per_sample"] == 0  # every layer reads ON / OFF events


def test_ttfs_defaults_keep_the_ann_accuracy_at_10_steps():
    """TTFS converts an ANN twin with max pooling (the earliest spike; average pooling is refused):
    with its defaults (the concurrent schedule of Rueckauer & Liu), one calibration epoch gives a
    TTFS network within 5 points of its ANN at T = 10, under one spike per neuron and sample.
    Measured (1 thread): ANN 98.33 %, TTFS 95.83 %, 0.43 spikes per neuron."""
    torch.manual_seed(0)
    ann = build(**SPEC, spiking=False, pool="max")
    Trainer(ann, load_data(DataConfig(name="digits", T=1, batch_size=64)),
            TrainConfig(epochs=4, lr=5e-3, seed=0), verbose=False).fit()
    data = load_data(DataConfig(name="digits", T=10, batch_size=64))
    result = check_defaults(METHODS["ttfs"], ann, data, epochs=1, lr=1e-9, compresses=False)
    assert result["compressed"]["accuracy"] >= result["dense"]["accuracy"] - 0.05
    neurons = 16 * 64 + 32 * 64 + 64 * 16  # the three neuron layers of one sample
    assert result["compressed"]["spikes_per_sample"] / neurons < 1


@pytest.mark.slow  # a supernet, a search and a retraining: 8 s
def test_autosnn_defaults_find_a_sparser_architecture_that_trains_to_dense_accuracy(trained, data):
    """AutoSNN is a search, not a fine-tune: its stage (defaults; 4 epochs of supernet training,
    the entering CNN only gives the input shape and neuron) returns a new architecture which,
    trained like dense (4 epochs), stays within 4 points of dense and fires fewer spikes per
    sample. Measured (1 thread): dense 97.8 %, 1171 spikes; found [[skip], [srb_k5, skip]]
    97.2 %, 717 spikes."""
    dense = measure(trained[True], data, latency_repeats=1)
    model = copy.deepcopy(trained[True])
    torch.manual_seed(0)
    session = attach(model, [METHODS["autosnn"]()])
    Trainer(model, data, TrainConfig(epochs=4, lr=5e-3, seed=0), session=session,
            verbose=False).fit()
    found = session.finalize()
    assert found.spec["name"] == "autosnn_net"
    Trainer(found, data, TrainConfig(epochs=4, lr=5e-3, seed=0), verbose=False).fit()
    got = measure(found, data, latency_repeats=1)
    assert got.accuracy >= dense.accuracy - 0.04
    assert got.spikes_per_sample < dense.spikes_per_sample
