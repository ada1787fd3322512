import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _pin_threads_and_seed():
    """Small nets run best on one thread, and a shared machine oversubscribes badly at two."""
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    torch.manual_seed(0)
    yield
