import subprocess
import sys

CODE = """
import time, sys
import torch
t0 = time.perf_counter()
import spikecompress
t1 = time.perf_counter()
import spikecompress.compress
t2 = time.perf_counter()
import spikecompress.cli, spikecompress.run, spikecompress.report
heavy = [m for m in ("matplotlib", "nir", "tonic", "spikingjelly", "snntorch", "mnist1d", "sklearn")
         if m in sys.modules]
print(t1 - t0, t2 - t1, ",".join(heavy))
"""


def test_import_is_lean_and_lazy():
    """The design's budgets: the root under 0.3 s after torch, every method at most 0.3 s more;
    no optional or data-only dependency is imported by the CLI's modules."""
    best = (float("inf"), float("inf"))
    for _ in range(3):  # the best of three fresh processes: a busy machine only slows a run down
        out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                             check=True)
        root, methods, *heavy = out.stdout.split()
        assert heavy == [], f"imported eagerly: {heavy}"
        best = min(best, (float(root), float(methods)))
    assert best[0] < 0.3, f"import spikecompress took {best[0]:.3f} s"
    assert best[1] < 0.3, f"import spikecompress.compress added {best[1]:.3f} s"


def test_root_names_are_the_public_api():
    import spikecompress as sc
    from spikecompress.compress import METHODS, attach
    from spikecompress.measurement.metrics import measure
    from spikecompress.run import Recipe, run_recipe

    assert sc.attach is attach and sc.METHODS is METHODS and sc.measure is measure
    assert sc.Recipe is Recipe and sc.run_recipe is run_recipe
    for name in sc.__all__:
        assert getattr(sc, name) is not None, name
    assert callable(sc.measure) and callable(sc.evaluate) and callable(sc.reset_state)


def test_every_method_class_is_importable_by_its_class_name():
    import spikecompress.compress as compress

    for name, cls in compress.METHODS.items():
        assert getattr(compress, cls.__name__) is cls, name
        assert cls.__name__ in compress.__all__, name
