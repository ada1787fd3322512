"""Models from other frameworks in (SpikingJelly, snnTorch, Norse), exactly; NIR in and out.

Every converter returns a ``models.LayerGraph`` (spec name "layers") whose neurons are ours with
the foreign update reproduced operation for operation (``snn.semantics``), so ``measure``, ``save``,
every compression method and surgery work on it. The frameworks are optional: each is imported
inside the function that needs it.
"""

from spikecompress.interop.norse import from_norse
from spikecompress.interop.snntorch import from_snntorch
from spikecompress.interop.spikingjelly import from_spikingjelly

__all__ = ["from_norse", "from_snntorch", "from_spikingjelly"]
