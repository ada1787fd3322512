import subprocess
import sys

CODE = """
import time, sys
import torch
t0 = time.perf_counter()
import spikecompress, spikecompress.snn, spikecompress.models, spikecompress.data
import spikecompress.train
import spikecompress.cli
dt = time.perf_counter() - t0
heavy = [m for m in ("matplotlib", "nir", "tonic", "spikingjelly", "snntorch", "mnist1d", "sklearn")
         if m in sys.modules]
print(dt, ",".join(heavy))
"""


def test_import_is_lean_and_lazy():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    seconds, heavy = out.stdout.split()[0], out.stdout.split()[1:]
    assert heavy == [], f"imported eagerly: {heavy}"
    assert float(seconds) < 0.3
