"""Models from other frameworks in (SpikingJelly, snnTorch, Norse), exactly; NIR in and out.

Every converter returns a ``models.LayerGraph`` (spec name "layers") whose neurons are ours with
the foreign update reproduced operation for operation (``snn.semantics``), so ``measure``, ``save``,
every compression method and surgery work on it. The frameworks are optional: each is imported
inside the function that needs it.
"""

from spikecompress.interop.spikingjelly import from_spikingjelly

__all__ = ["from_spikingjelly"]
