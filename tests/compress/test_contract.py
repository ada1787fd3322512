"""The contract suite: every registered method × tiny MLP, conv net and SEW-ResNet."""

import pytest
import torch

from spikecompress.compress import METHODS
from spikecompress.compress.contract import TINY_MODELS as TINY
from spikecompress.compress.contract import check_method, tiny_model
from spikecompress.data import DataConfig, load_data


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


@pytest.mark.parametrize("model_name", list(TINY))
@pytest.mark.parametrize("method_name", list(METHODS))
def test_method_contract(method_name, model_name, data):
    torch.manual_seed(0)
    check_method(METHODS[method_name], tiny_model(method_name, model_name), data)
