"""The contract suite: every registered method × tiny MLP, conv net and SEW-ResNet."""

import pytest
import torch

from spikecompress.compress import METHODS
from spikecompress.compress.contract import TINY_MODELS as TINY
from spikecompress.compress.contract import check_method
from spikecompress.data import DataConfig, load_data
from spikecompress.models import build


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


@pytest.mark.parametrize("model_name", list(TINY))
@pytest.mark.parametrize("method_name", list(METHODS))
def test_method_contract(method_name, model_name, data):
    torch.manual_seed(0)
    spiking = method_name not in ("ann_conversion", "tsc", "ttfs")  # they convert the ANN twin
    options = dict(getattr(METHODS[method_name], "MODEL_OPTIONS", {}))  # e.g. a BNTT student
    if options.get("norm") == "bntt":
        options["steps"] = 2  # the data's T
    model = build(classes=10, spiking=spiking, **{**TINY[model_name], **options})
    check_method(METHODS[method_name], model, data)
