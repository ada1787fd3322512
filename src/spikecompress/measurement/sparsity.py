"""Three different sparsities (the survey distinguishes them), each with its inclusion policy.

* ``weight_sparsity``: zero fraction of the conv and linear **weights** (biases and BatchNorm
  excluded; the first conv and the classifier included, as Grad R and STDS count them).
* ``neuron_sparsity``: fraction of neurons (one sample's neuron positions, every neuron layer)
  whose ``spike_mask`` is 0 (neuron pruning, e.g. SOPs-aware pruning).
* ``connectivity``: Shi et al.'s alive **connections** over dense connections. A connection is a
  (non-zero weight, output position) pair over every in-bounds input, onto an alive neuron: a conv
  weight counts once per output position it is applied at; a synapse onto a pruned neuron does not
  count. Dense = every weight position, every neuron alive (NeuroBench's ``Dense`` per step).

None of them depends on the data: ``x_seq`` only fixes the layers' input shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from spikecompress.measurement.reach import CONVS, SYNAPTIC, alive_outputs, padded, reach_map
from spikecompress.measurement.spikes import is_neuron
from spikecompress.snn.layers import reset_state


def weight_sparsity(model: nn.Module, names: Sequence[str] | None = None) -> float:
    """Zero fraction of the weights of every conv / linear layer (or of the layers ``names``)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, SYNAPTIC)]
    if names is not None:
        missing = set(names) - {n for n, _ in layers}
        if missing:
            raise ValueError(f"names: no conv / linear layer called {sorted(missing)[0]!r}")
        layers = [(n, m) for n, m in layers if n in set(names)]
    total = sum(m.weight.numel() for _, m in layers)
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    return zeros / total if total else 0.0


@torch.no_grad()
def _input_shapes(model: nn.Module, x_seq: torch.Tensor) -> dict[nn.Module, tuple]:
    """Module → one sample's input shape, for every synaptic and neuron layer (one forward of
    one sample of ``x_seq`` [T, B, ...] in eval mode, state reset before and after)."""
    shapes, handles = {}, []

    def hook(module: nn.Module, inputs: tuple) -> None:
        x = inputs[0]
        dims = len(module.kernel_size) + 1 if isinstance(module, CONVS) else None
        if dims is None:  # linear: [..., F]; neuron: [T, B, *sample]
            dims = 1 if isinstance(module, nn.Linear) else x.dim() - 2
        shapes.setdefault(module, tuple(x.shape[-dims:]))

    for m in model.modules():
        if isinstance(m, SYNAPTIC) or is_neuron(m):
            handles.append(m.register_forward_pre_hook(hook))
    was_training = model.training
    try:
        reset_state(model)
        model.eval()
        model(x_seq[:, :1])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        reset_state(model)
    return shapes


def neuron_sparsity(model: nn.Module, x_seq: torch.Tensor) -> float:
    """Pruned neurons (``spike_mask`` 0) over all neurons of one sample, every neuron layer."""
    shapes = _input_shapes(model, x_seq)
    total = pruned = 0
    for m, shape in shapes.items():
        if is_neuron(m):
            n = int(torch.Size(shape).numel())
            mask = getattr(m, "spike_mask", None)
            total += n
            pruned += n - int(mask.sum()) if mask is not None else 0
    return pruned / total if total else 0.0


def connections(model: nn.Module, x_seq: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Per conv / linear layer: (alive connections, dense connections) per sample and step."""
    shapes = _input_shapes(model, x_seq)
    alive = alive_outputs(list(model.named_modules()))
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, SYNAPTIC) or m not in shapes:
            continue
        shape, cache = shapes[m], {}
        reach, dense = reach_map(m, shape, m.weight.detach() != 0, False, cache, alive.get(m))
        real = torch.ones(shape, dtype=torch.float64)
        if reach.shape != real.shape:  # padding other than zeros: weigh the padded grid
            real = padded(m, real[None])[0][0]
        out[name] = (int((reach.to(torch.float64) * real).sum()), int(dense))
    return out


def connectivity(model: nn.Module, x_seq: torch.Tensor) -> float:
    """Alive connections / dense connections over every conv and linear layer (Shi et al.)."""
    pairs = connections(model, x_seq).values()
    dense = sum(d for _, d in pairs)
    return sum(a for a, _ in pairs) / dense if dense else 0.0
