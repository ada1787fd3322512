"""spikecompress: compression for deep spiking neural networks, measured honestly.

    import spikecompress as sc
    session = sc.attach(model, [sc.METHODS["magnitude"](sparsity=0.8)])   # or the class itself:
    from spikecompress.compress import MagnitudePruning                    # every method by name
    metrics = sc.measure(model, data); sc.save(model, "out/artifact")
    sc.run_recipe(sc.load_recipe("magnitude_qat"), "runs/a")

The public API, re-exported explicitly. The compression methods and the stage runner
(``attach``, ``METHODS``, ``Session``, ``Recipe``, ``Stage``, ``load_recipe``, ``run_recipe``) are
imported on first use, so that ``import spikecompress`` stays light: importing every method
costs about as much again (``tests/test_import.py`` holds both budgets). Optional dependencies
(matplotlib, nir, tonic, spikingjelly, snntorch) are imported only inside the functions that
need them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from spikecompress._version import __version__
from spikecompress.data import Data, DataConfig, load_data
from spikecompress.export import load, save
from spikecompress.measurement import Metrics, count, evaluate, measure
from spikecompress.models import MODELS, build, from_spec
from spikecompress.snn import IF, LIF, PLIF, encode, reset_state
from spikecompress.train import TrainConfig, Trainer

if TYPE_CHECKING:  # the names below are real imports for type checkers and completion
    from spikecompress import interop  # noqa: F401
    from spikecompress.compress import METHODS, Session, attach
    from spikecompress.export import to_integer
    from spikecompress.export.nir import export_nir
    from spikecompress.interop.nir import import_nir
    from spikecompress.run import Recipe, Stage, load_recipe, run_recipe

_ON_FIRST_USE = {
    "METHODS": "spikecompress.compress",
    "Session": "spikecompress.compress",
    "attach": "spikecompress.compress",
    "Recipe": "spikecompress.run",
    "Stage": "spikecompress.run",
    "load_recipe": "spikecompress.run",
    "run_recipe": "spikecompress.run",
    "to_integer": "spikecompress.export",
    "export_nir": "spikecompress.export.nir",
    "import_nir": "spikecompress.interop.nir",
}
_SUBPACKAGES = ("interop",)  # ``sc.interop.from_spikingjelly(...)``, imported on first use


def __getattr__(name: str):
    """The names of ``_ON_FIRST_USE``, imported the first time they are asked for (PEP 562)."""
    if name in _ON_FIRST_USE:
        value = getattr(importlib.import_module(_ON_FIRST_USE[name]), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"spikecompress.{name}")
    raise AttributeError(f"module 'spikecompress' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "IF", "LIF", "METHODS", "MODELS", "PLIF", "Data", "DataConfig", "Metrics", "Recipe",
    "Session", "Stage", "TrainConfig", "Trainer", "__version__", "attach", "build", "count",
    "encode", "evaluate", "export_nir", "from_spec", "import_nir", "interop", "load",
    "load_data", "load_recipe", "measure", "reset_state", "run_recipe", "save", "to_integer",
]
