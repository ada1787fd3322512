import atexit
import os
import shutil
import tempfile

import pytest
import torch

# The suite writes nothing under the user's $HOME: generated-data caches, matplotlib's config
# and anything else that defaults to ~ go to one temporary folder per test session (subprocesses
# of the CLI tests inherit it).
_SCRATCH = tempfile.mkdtemp(prefix="spikecompress-tests-")
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
for _var, _sub in (("HOME", "home"), ("SPIKECOMPRESS_CACHE", "cache"), ("MPLCONFIGDIR", "mpl"),
                   ("XDG_CACHE_HOME", "xdg-cache")):
    os.environ[_var] = os.path.join(_SCRATCH, _sub)
    os.makedirs(os.environ[_var], exist_ok=True)


@pytest.fixture(autouse=True)
def _pin_threads_and_seed():
    """Small nets run best on one thread, and a shared machine oversubscribes badly at two."""
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    torch.manual_seed(0)
    yield
