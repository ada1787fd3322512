"""Defaults a user can trust: every registered method, with its defaults, compresses a trained
digits CNN in a two-epoch fine-tune and keeps the accuracy within 4 points of dense (PCA widths
drop 3.3 at two threads); a distillation method (teacher: the model as it enters) keeps it."""

import copy

import pytest
import torch

from spikecompress.compress import METHODS
from spikecompress.compress.contract import check_defaults
from spikecompress.data import DataConfig, load_data
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


@pytest.mark.parametrize("name", [n for n in METHODS if n != "ann_conversion"])
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


def test_ann_conversion_defaults_keep_the_ann_accuracy_at_32_steps(trained):
    """Conversion is not compression (the SNN it returns is the size of the ANN): with its
    defaults, one calibration epoch (lr ~ 0) gives an SNN within 3 points of its ANN at T = 32."""
    data = load_data(DataConfig(name="digits", T=32, batch_size=64))
    torch.manual_seed(0)
    result = check_defaults(METHODS["ann_conversion"], copy.deepcopy(trained[False]), data,
                            epochs=1, lr=1e-9, compresses=False)
    assert result["compressed"]["accuracy"] >= result["dense"]["accuracy"] - 0.04
