"""SpikingJelly 2.0 models in, exactly: ``from_spikingjelly(model, example)`` → a ``LayerGraph``.

    from spikecompress.interop.spikingjelly import from_spikingjelly
    ours = from_spikingjelly(sj_net, x_seq)                     # multi-step: x_seq [T, B, ...]
    ours = from_spikingjelly(sj_net, x, state_dict="net.pth")   # single-step: x [B, ...]

The model is traced with ``torch.fx`` and every node is mapped one to one
(``interop.spikingjelly_trace``): SpikingJelly's LIF / IF / PLIF neurons and their surrogates to
ours (``interop.spikingjelly_neurons``), its layers and torch's to our time-folded twins, ``+`` to
an ``Add`` node and a flatten of one sample's dimensions to ``Flatten``; anything else is a
one-line ValueError naming the module path and its class.

Step modes: a multi-step ('m') model takes x_seq [T, B, ...] as ours do. A single-step ('s')
model is called by its user once per time step (``functional.reset_net`` before each sample); the
converted model runs all T steps of x_seq [T, B, ...] at once and equals
``torch.stack([sj_model(x_seq[t]) for t in range(T)])`` (its layers run on all T·B samples at
once: the same floats, as the check below confirms for the model at hand). ``step_mode=None``
reads the mode from the model's neurons (a neuron inside a ``MultiStepContainer`` runs
multi-step); a model mixing the two is refused.

The conversion is checked before it is returned: both models run on ``example`` (for a
single-step model, on ``example`` repeated over 4 time steps), in eval mode and from a reset
state, and their outputs must be equal (``torch.equal``); otherwise a ValueError names the first
layer whose outputs differ. The SpikingJelly model is left as it was (modes restored, state
reset). Two semantic notes, both outside what the check sees: in training mode, BatchNorm in a
single-step SpikingJelly model normalises each time step's batch on its own, ours all T·B samples
together (as SpikingJelly's multi-step BatchNorm does); and a torch ``nn.Dropout`` draws a new mask
every step in SpikingJelly, ours one mask per sample for all steps (SpikingJelly's own
``layer.Dropout`` rule, which converts exactly).

``state_dict`` (a path or a dict, or SpikingJelly's tutorial checkpoint ``{"net": state_dict,
...}``) is loaded into the SpikingJelly model (strict, ``weights_only``) before the conversion.
The result is a ``LayerGraph`` (spec name "layers") in the model's train / eval mode, on its
device, with node names ``qualified(module path)`` (``layer1.0.conv1`` → ``layer1_0_conv1``).
"""

from __future__ import annotations

import torch
from torch import nn

from spikecompress.interop.common import check_and_load, first_line
from spikecompress.interop.spikingjelly_neurons import FRAMEWORK
from spikecompress.interop.spikingjelly_trace import _Converter, _step_mode, _trace
from spikecompress.models.layer_graph import LayerGraph
from spikecompress.snn import layers as seq

CHECK_STEPS = 4  # time steps a single-step model is checked over


def _sj():
    try:
        from spikingjelly.activation_based import base, functional, layer, neuron, surrogate
    except ImportError as e:  # pragma: no cover - the oracle install has it
        raise ImportError(f"from_spikingjelly needs SpikingJelly 2.0 (pip install "
                          f"spikingjelly): {e}") from None
    return base, functional, layer, neuron, surrogate


# ----------------------------------------------------------------------------- the check


def _device(model: nn.Module, example: torch.Tensor) -> torch.device:
    t = next(iter(model.state_dict().values()), None)
    return t.device if t is not None else example.device


def _sj_outputs(sj, model: nn.Module, x_seq: torch.Tensor, mode: str) -> torch.Tensor:
    functional = sj[1]
    functional.reset_net(model)
    try:
        if mode == "m":
            return model(x_seq)
        return torch.stack([model(x) for x in x_seq.unbind(0)])
    finally:
        functional.reset_net(model)


def _collect(modules: dict[str, nn.Module]):
    """Forward hooks keeping the outputs of every module in ``modules`` (cloned, per call)."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
    handles = [m.register_forward_hook(
        lambda _m, _i, out, n=n: seen[n].append(out.detach().clone())
        if isinstance(out, torch.Tensor) else None) for n, m in modules.items()]
    return seen, handles


def _first_difference(sources, theirs, ours, order) -> str:
    for name in order:
        if name not in sources or not theirs.get(name) or not ours.get(name):
            continue
        mine = ours[name][0]
        seq_ = theirs[name]
        t = (torch.stack(seq_) if len(seq_) > 1 else seq_[0])
        if t.numel() != mine.numel() or not torch.equal(t.reshape(mine.shape), mine):
            return f"; the first layer that differs is {name!r}"
    return ""


def _check(sj, model: nn.Module, graph: LayerGraph, sources: dict[str, nn.Module],
           x_seq: torch.Tensor, mode: str) -> None:
    """Both models on x_seq in eval mode: equal outputs, or a ValueError naming where not."""
    flags = {m: m.training for m in model.modules()}
    theirs, h1 = _collect(sources)
    ours, h2 = _collect(dict(graph.nodes.items()))
    try:
        model.eval()
        graph.eval()
        with torch.no_grad():
            try:
                expected = _sj_outputs(sj, model, x_seq, mode)
            except Exception as e:
                raise ValueError(f"{FRAMEWORK}: {type(model).__name__} does not run on the "
                                 f"example of shape {list(x_seq.shape)}: "
                                 f"{first_line(e)}") from None
            seq.reset_state(graph)
            got = graph(x_seq)
            seq.reset_state(graph)
    finally:
        for h in h1 + h2:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    if not isinstance(expected, torch.Tensor) or expected.shape != got.shape or \
            not torch.equal(expected, got):
        if isinstance(expected, torch.Tensor) and expected.shape == got.shape:
            diff = f"max |difference| {(expected - got).abs().max().item():.3g}"
        else:
            diff = f"shape {list(getattr(expected, 'shape', []))} against {list(got.shape)}"
        where = _first_difference(sources, theirs, ours, list(graph.nodes))
        raise ValueError(f"{FRAMEWORK}: the converted model does not reproduce "
                         f"{type(model).__name__} on the example ({diff}){where}")


# ----------------------------------------------------------------------------- entry point


def from_spikingjelly(model: nn.Module, example: torch.Tensor, *, state_dict=None,
                      step_mode: str | None = None) -> LayerGraph:
    """The SpikingJelly 2.0 ``model`` as an equivalent ``LayerGraph`` (see the module docstring).

    Args:
        model: a SpikingJelly (``activation_based``) network; left as it was, except that
            ``state_dict`` is loaded into it.
        example: one input the model takes: x_seq [T, B, ...] for a multi-step model, x [B, ...]
            for a single-step one; it gives ``in_shape`` and the conversion is checked on it.
        state_dict: a path (``torch.load(..., weights_only=True)``) or a dict, loaded (strict)
            into ``model`` first; SpikingJelly's tutorial checkpoints ({"net": ...}) too.
        step_mode: 's' or 'm'; None reads it from the model's neurons.

    Raises a one-line ValueError naming the module (path and class) that does not convert, the
    state dict that does not load or fit, or the first layer whose outputs differ on ``example``.
    """
    sj = _sj()
    check_and_load(model, example, state_dict, FRAMEWORK, "net")
    mode = _step_mode(sj, model, step_mode)
    lead = 2 if mode == "m" else 1
    if example.dim() < lead + 1:
        raise ValueError(f"{FRAMEWORK}: a {'multi' if mode == 'm' else 'single'}-step model's "
                         f"example is {'x_seq [T, B, ...]' if mode == 'm' else 'x [B, ...]'}, "
                         f"got shape {list(example.shape)}")
    converter = _Converter(sj, model, mode)
    converter.run(_trace(sj, model))
    graph = LayerGraph(converter.nodes, tuple(example.shape[lead:]))
    graph.to(_device(model, example))
    x_seq = example if mode == "m" else example.unsqueeze(0).repeat(
        CHECK_STEPS, *([1] * example.dim()))
    _check(sj, model, graph, converter.sources, x_seq, mode)
    return graph.train(model.training)
