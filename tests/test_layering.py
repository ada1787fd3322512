"""The floors of the design hold: no back-edge, no cycle, no undocumented lazy import of the
package's own modules (``tools/import_graph.py`` prints the whole graph)."""

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "import_graph.py"


def _tool():
    spec = importlib.util.spec_from_file_location("import_graph", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_module_imports_a_higher_floor_or_a_cycle():
    assert _tool().check() == []


def test_the_checker_sees_a_back_edge_and_a_cycle():
    g = _tool()
    edges = [("spikecompress.snn.neuron", "spikecompress.measurement.spikes", False),
             ("spikecompress.measurement.spikes", "spikecompress.snn.neuron", False),
             ("spikecompress.models.mlp", "spikecompress.snn.layers", True)]
    assert g.back_edges(edges) == [("spikecompress.snn.neuron", "spikecompress.measurement.spikes")]
    assert g.cycles(edges) == [["spikecompress.measurement.spikes", "spikecompress.snn.neuron"]]
    assert g.undocumented_lazy(edges) == [("spikecompress.models.mlp", "spikecompress.snn.layers")]


def test_no_method_file_imports_a_sibling_method_file():
    """Shared machinery lives in helper modules (the channel driver, masks, soft thresholds),
    never in another method's file."""
    import inspect

    from spikecompress.compress import METHODS

    g = _tool()
    method_files = {inspect.getmodule(cls).__name__ for cls in METHODS.values()}
    edges = g.imports(g.all_modules())
    assert [(a, b) for a, b, _ in edges if a in method_files and b in method_files] == []
