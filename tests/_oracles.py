"""Import an optional framework a test checks against (SpikingJelly, snnTorch, Norse, nir, ...).

Under `make test` (SPIKECOMPRESS_REQUIRE_ORACLES=1) a missing package fails the test instead of
skipping it, so CI cannot pass by skipping the cross-checks.
"""

import importlib
import os

import pytest


def oracle(module: str):
    if os.environ.get("SPIKECOMPRESS_REQUIRE_ORACLES") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)
