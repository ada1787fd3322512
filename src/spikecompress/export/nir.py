"""Export a model to NIR (the Neuromorphic Intermediate Representation, ``nir`` 1.0.7+).

    graph = export_nir(model, "model.nir", dt=1e-4)      # writes the file atomically

``nir`` (and ``h5py``) are the optional extra ``spikecompress[nir]``, imported on first use.
The graph describes the model in eval mode, one NIR evaluation per time step of x_seq [T, B, ...]
(NIR shapes exclude T and B). docs/nir.md has the full conventions and the measured agreement
with snnTorch, SpikingJelly and Norse.

Walk. A ``LayerGraph`` gives its node list; any other model (our builders' ``Network``, a plain
``nn.Sequential``, SEW / Spiking ResNet blocks) is traced with ``torch.fx``, our layers, neurons,
BatchNorms and every ``torch.nn`` module being leaves; an addition of two traced values (a
residual) becomes an ``Add``. Every other operation is refused by name.

Node mapping (ours → NIR):

    Linear (bias / no bias)       → Affine / Linear
    Conv1d, Conv2d                → Conv1d, Conv2d (tuple stride / padding / dilation, input_shape;
                                    a zero bias when the layer has none, metadata ``bias`` false)
    BatchNorm after a conv/linear → folded into it, exactly as ``models.bn_fold`` does (float64,
                                    rounded once; the BN is then an identity); any other BN refused
    AvgPool2d                     → AvgPool2d (no ceil_mode, no divisor_override, padding only
                                    with count_include_pad)
    AdaptiveAvgPool2d             → AvgPool2d (kernel = stride = input / output, when it divides)
    Flatten                       → Flatten(start_dim 0, end_dim −1, input_type)
    Dropout, Identity             → nothing (eval mode: identity)
    Add                           → edges: each summand's node feeds every consumer of the sum
                                    (NIR sums the edges that enter a node's input). Two summands
                                    are bit-exact (a + b = b + a); three or more only when every
                                    summand is a spike train (integers), else refused
    LIF, PLIF (hard reset)        → LIF, IF → IF, per-neuron float32 arrays shaped like the layer
    MaxPool, BNTT, ReLU, soft reset, integer membranes, anything else → a one-line ValueError

Neurons. Our update ``H = k(V − V_r) + V_r + aX`` is NIR's ``τ dv/dt = (v_leak − v) + R·I``
under forward Euler with step ``dt``: ``k = 1 − dt/τ_N`` and ``a = dt·R/τ_N``. So a LIF of time
constant τ (in steps) is ``τ_N = τ·dt``, ``R = 1`` (decay_input) or ``τ`` (not), ``v_leak =
v_reset``; a ``leak`` override k gives ``τ_N = dt/(1 − k)``, ``R = a/(1 − k)``; PLIF uses
τ = 1/sigmoid(w); snnTorch's Leaky (semantics "snntorch", β in ``leak``) is written as snnTorch
writes it, ``τ_N = dt/(1 − β)``, ``R = τ_N/dt``, ``v_leak = v_reset = 0``; IF is ``R = 1/dt`` (the
Euler step of ``dv/dt = R·I`` adds ``dt·R·I = I``; SpikingJelly's convention). NIR fires on
``v > θ``, ours on ``H ≥ θ`` (snnTorch semantics: ``>``); the node metadata says which. A neuron
with a ``spike_mask`` exports θ = +inf where the mask is 0 (that neuron never fires: exact). Soft
reset (v_reset None) is refused: NIR resets to ``v_reset`` only. Integer membranes
(``membrane_bits``) and integer-mode layers (``input_scale``) are refused: their rounding has no
NIR counterpart (``sc.to_integer`` exports them).

Compressed models. A channel-pruned model exports its real (smaller) shapes. A weight with zeros
(unstructured pruning, baked or under a ``Mask`` parametrization) records ``weight_mask`` (uint8,
the weight's shape) and ``weight_density``. A weight-quantized layer (``weight_scale`` buffer,
e.g. after ``uniform_quant``'s finalize) exports its weight exactly as the model holds it,
``codes · weight_scale`` (values on the integer grid), and records ``weight_codes`` (int8),
``weight_scale`` (float32, [] or [C_out]), ``weight_bits`` (the width of the codes, ``b`` with
``2^(b−1) − 1 ≥ max|code|``, as the artifact codec stores them) and ``quantization``
("uniform_symmetric"). A quantized layer followed by a BatchNorm is refused: folding would move
its weights off the grid.

Metadata (NIR has no field for any of it). Graph: ``format`` ("spikecompress-nir/1"),
``generator``, ``dt``, ``time_step``, ``fire``. Every node: ``module`` (our node type), ``path``
(the module's path in the model). Neurons: ``describe`` (JSON of our node description, the one a
``LayerGraph`` spec holds: τ, θ, v_reset, decay_input, semantics, leak, surrogate), ``dt``,
``charge``, ``fire``, ``reset`` ("hard"), ``semantics``, and ``spike_mask`` / ``plif_w`` when set.
Conv / linear: ``bias``, ``folded_bn`` (the BN's path) and the pruning / quantization keys above.
``spikecompress.interop.nir.import_nir`` reads them back and rebuilds the model bit for bit.
"""

from __future__ import annotations

import copy
import io
import json
import math
import operator
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from spikecompress._version import __version__
from spikecompress.atomic import atomic_writer
from spikecompress.export.scaled_codes import code_bits, to_codes
from spikecompress.models.bn_fold import fold_batchnorm_
from spikecompress.models.layer_graph import INPUT, NODE_TYPES, Add, LayerGraph, node_type
from spikecompress.snn import layers as seq
from spikecompress.snn.bntt import BNTT
from spikecompress.snn.neuron import IF, LIF, PLIF
from spikecompress.snn.quantized import NEURON_BUFFERS

FORMAT = "spikecompress-nir/1"
NEURON_TYPES = (LIF, IF, PLIF)
_IDENTITY = (nn.Identity, nn.Dropout)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
# model extras (``models.EXTRAS``) that change what the model computes beyond its layers
_EXTRAS = {
    "exit_policy": "an early-exit policy (a per-sample stopping rule over time steps)",
    "time_stages": "time stages (per-stage time steps and transformers)",
    "tsc": "a TSC conversion (two-phase neurons)",
    "ttfs": "a TTFS conversion (time-to-first-spike coding)",
}
CHARGE = "H[t] = k*(V[t-1] - v_reset) + v_reset + a*X[t]; k = 1 - dt/tau, a = dt*r/tau"

Triple = tuple[str, nn.Module, list[str]]


def qualified(path: str) -> str:
    """A NIR node name from a module path: ``features.0.conv`` → ``features_0_conv``."""
    return path.replace(".", "_") or "root"


def _nir():
    try:
        import nir
    except ImportError as e:  # pragma: no cover - the extra is installed in CI
        raise ImportError("NIR export needs the optional extra: pip install "
                          "'spikecompress[nir]' (nir>=1.0.7, h5py)") from e
    return nir


def _refuse(what: str) -> ValueError:
    return ValueError(f"export_nir: {what}")


# --------------------------------------------------------------------------------------------
# the walk: (name, module, inputs) in execution order, and which node is the output


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, nn.Sequential | nn.ModuleList | nn.ModuleDict):
            return False
        if isinstance(m, (*NEURON_TYPES, Add, BNTT, nn.modules.batchnorm._BatchNorm)):
            return True
        return type(m).__module__.startswith(("torch.nn", "spikecompress.snn"))


class _Chain(nn.Module):
    """A ``Network`` without its input checks: ``classifier(features(x))`` (traceable)."""

    def __init__(self, features: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features, self.classifier = features, classifier

    def forward(self, x):
        return self.classifier(self.features(x))


_ADDS = (operator.add, operator.iadd, torch.add)


def _traced(root: nn.Module) -> tuple[list[Triple], str, dict[str, str]]:
    try:
        graph = _Tracer().trace(root)
    except Exception as e:  # fx raises many types; the message names the cause
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _refuse(f"cannot trace {type(root).__name__} with torch.fx ({first}); "
                      f"build it as a LayerGraph") from None
    names: dict[fx.Node, str] = {}
    paths: dict[str, str] = {}
    triples: list[Triple] = []
    used: set[str] = {INPUT}
    out = None
    for n in graph.nodes:
        if n.op == "placeholder":
            if INPUT in names.values():
                raise _refuse("the model takes more than one input")
            names[n] = INPUT
            continue
        if n.op == "output":
            out = n.args[0]
            if not isinstance(out, fx.Node):
                raise _refuse("the model's output is not a single tensor")
            break
        args = list(n.args)
        tensors = not n.kwargs and args and all(isinstance(a, fx.Node) for a in args)
        if n.op == "call_module" and tensors:
            module = root.get_submodule(n.target)
            name = qualified(n.target)
            if name in used:
                raise _refuse(f"module {n.target!r} is called twice (shared weights): NIR nodes "
                              f"are called once per step")
        elif n.op == "call_function" and n.target in _ADDS and len(args) == 2 and tensors:
            module, name = Add(), n.name
            while name in used:
                name += "_"
        else:
            target = getattr(n.target, "__name__", n.target)
            raise _refuse(f"operation {target!r} ({n.op} {n.name!r}, on "
                          f"{'tensors' if tensors else 'non-tensor arguments'}) has no NIR "
                          f"counterpart")
        used.add(name)
        names[n] = name
        paths[name] = n.target if n.op == "call_module" else name
        triples.append((name, module, [names[a] for a in args]))
    return triples, names[out], paths


def _walk(model: nn.Module) -> tuple[list[Triple], str, dict[str, str]]:
    """(name, module, inputs) in execution order, the output's name, {name: module path}."""
    if isinstance(model, LayerGraph):
        triples = [(name, m, list(model.inputs[name])) for name, m in model.nodes.items()]
        return triples, triples[-1][0], {name: name for name, _, _ in triples}
    if hasattr(model, "features") and hasattr(model, "classifier") and hasattr(model, "in_shape"):
        return _traced(_Chain(model.features, model.classifier))
    return _traced(model)


def _check_extras(model: nn.Module) -> None:
    spec = getattr(model, "spec", None)
    spec = spec if isinstance(spec, dict) else {}
    for key, what in _EXTRAS.items():
        if spec.get(key) is not None or getattr(model, key, None) is not None:
            raise _refuse(f"the model has {what} ({key}): NIR has no node for it; export the "
                          f"network without it")


# --------------------------------------------------------------------------------------------
# shapes and BN folding


@torch.no_grad()
def _shapes(triples: list[Triple], x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """One sample's output shape per node (the modules run once on x [1, 1, *in_shape])."""
    outs = {INPUT: x}
    for name, module, inputs in triples:
        try:
            outs[name] = module(*(outs[r] for r in inputs))
        except Exception as e:
            raise _refuse(f"node {name!r} ({type(module).__name__}) failed on the example input: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    seq.reset_state(nn.ModuleList([m for _, m, _ in triples]))
    return {k: tuple(v.shape[2:]) for k, v in outs.items()}


def _fold_bns(triples: list[Triple], consumers: dict[str, list[str]]) -> dict[str, str]:
    """Fold every BN into the conv / linear before it, in place (the triples hold copies);
    returns {layer name: BN name}."""
    kinds = {name: m for name, m, _ in triples}
    folded = {}
    for i, (name, module, inputs) in enumerate(triples):
        if isinstance(module, BNTT):
            raise _refuse(f"{name}: {type(module).__name__} (one BatchNorm per time step) cannot "
                          f"be folded into one weight")
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        if module.running_mean is None:
            raise _refuse(f"{name}: a BatchNorm without running statistics cannot be folded")
        src = inputs[0]
        layer = kinds.get(src)
        if not isinstance(layer, _LAYERS) or consumers[src] != [name]:
            raise _refuse(f"{name}: a BatchNorm that does not directly follow a conv or linear "
                          f"layer (its only consumer) has no NIR counterpart")
        if getattr(layer, "weight_scale", None) is not None:
            raise _refuse(f"{name}: folding this BatchNorm would move the quantized weights of "
                          f"{src!r} off their integer grid; fold BN before quantizing")
        pair = nn.Sequential(layer, module)
        fold_batchnorm_(pair)
        triples[i] = (name, nn.Identity(), inputs)
        folded[src] = name
    return folded


# --------------------------------------------------------------------------------------------
# node conversion


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _full(value: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """A scalar or per-channel [C] tensor broadcast to one sample's shape [C, ...] (float64)."""
    v = value.detach().double().cpu()
    if v.dim() == 1:
        v = v.view(-1, *([1] * (len(shape) - 1)))
    return np.broadcast_to(v.numpy(), shape).copy()


def _check_neuron(name: str, m: nn.Module) -> None:
    kind = type(m).__name__
    if m.reset.v_reset is None:
        raise _refuse(f"{name}: {kind} with soft reset (v_reset None) has no NIR counterpart "
                      f"(a NIR neuron resets to v_reset)")
    if any(getattr(m, b, None) is not None for b in NEURON_BUFFERS):
        raise _refuse(f"{name}: {kind} with an integer membrane (membrane_bits) has no NIR "
                      f"counterpart; export the integer program with sc.to_integer")


def neuron_fields(m: nn.Module, shape: tuple[int, ...], dt: float, name: str = "") -> dict:
    """The NIR node type and its parameter arrays for one of our neurons (see the docstring)."""
    _check_neuron(name, m)
    kind = type(m).__name__
    v_r = float(m.reset.v_reset)
    v_th = _full(m.v_threshold, shape)
    if m.spike_mask is not None:
        v_th = np.where(m.spike_mask.detach().cpu().numpy() == 0, np.inf, v_th)
    fields = {"v_threshold": v_th, "v_reset": np.full(shape, v_r)}
    if m.semantics == "snntorch":  # snnTorch's Leaky: H = β V + X, as snnTorch exports it
        beta = _full(m.leak, shape)
        tau = dt / (1 - beta)
        return {"type": "LIF", **fields, "tau": tau, "r": tau / dt, "v_leak": np.zeros(shape)}
    if isinstance(m, PLIF):
        inv = _full(torch.sigmoid(m.w.detach()), shape)
        k, a = 1 - inv, inv if m.decay_input else np.ones(shape)
    elif isinstance(m, LIF):
        tau = _full(m.tau, shape)
        k, a = 1 - 1 / tau, 1 / tau if m.decay_input else np.ones(shape)
    else:
        k, a = np.ones(shape), np.ones(shape)
    if m.leak is not None:
        k = _full(m.leak, shape)
    if bool(((k <= 0) | (k > 1)).any()):
        raise _refuse(f"{name}: {kind} decay k = {float(k.min()):.4g}..{float(k.max()):.4g} is "
                      f"outside (0, 1]: no NIR time constant gives it")
    if bool((k == 1).all()):  # no leak: IF, dv/dt = R·I with dt·R = a
        return {"type": "IF", **fields, "r": a / dt}
    if bool((k == 1).any()):
        raise _refuse(f"{name}: {kind} with a decay of exactly 1 in some channels only")
    if isinstance(m, LIF) and m.leak is None:  # the common case, written as SpikingJelly does
        tau_steps = _full(m.tau, shape)
        r = np.ones(shape) if m.decay_input else tau_steps
        return {"type": "LIF", **fields, "tau": tau_steps * dt, "r": r, "v_leak": fields["v_reset"]}
    tau = dt / (1 - k)
    return {"type": "LIF", **fields, "tau": tau, "r": a * tau / dt, "v_leak": fields["v_reset"]}


def _neuron_node(nir, m: nn.Module, shape, dt: float, name: str, path: str):
    fields = neuron_fields(m, shape, dt, name)
    kind = fields.pop("type")
    meta = {
        "module": node_type(m), "path": path, "dt": float(dt),
        "describe": json.dumps(NODE_TYPES[node_type(m)][2](m)),
        "charge": CHARGE, "fire": ">" if m.semantics == "snntorch" else ">=",
        "reset": "hard", "semantics": m.semantics,
    }
    if m.spike_mask is not None:
        meta["spike_mask"] = m.spike_mask.detach().cpu().numpy().astype(np.uint8)
    if isinstance(m, PLIF):
        meta["plif_w"] = _f32(m.w.detach().cpu())
    arrays = {k: _f32(v) for k, v in fields.items()}
    node = nir.LIF(**arrays, metadata=meta) if kind == "LIF" else nir.IF(**arrays, metadata=meta)
    return node


def _is_mask(p: nn.Module) -> bool:
    """A ``compress.prune.masks.Mask`` (``W ↦ W ⊙ mask``), recognised without importing the
    compress floor: its class name and its {0, 1} ``mask`` buffer."""
    return type(p).__name__ == "Mask" and isinstance(getattr(p, "mask", None), torch.Tensor)


def _weight_meta(name: str, m: nn.Module) -> tuple[torch.Tensor, dict]:
    """The weight to export and its pruning / quantization metadata."""
    meta: dict = {}
    mask = None
    if parametrize.is_parametrized(m, "weight"):  # a pruning mask (compress.prune.masks.Mask)
        chain = list(m.parametrizations.weight)
        others = [p for p in chain if not _is_mask(p)]
        if others:
            raise _refuse(f"{name}: the weight is under a {type(others[0]).__name__} "
                          f"parametrization (training in progress?); finalize the method first")
        mask = chain[0].mask
        for p in chain[1:]:
            mask = mask * p.mask
    w = m.weight.detach().cpu()
    if mask is None and bool((w == 0).any()):
        mask = w != 0
    if mask is not None:
        mask = (mask.detach().cpu() != 0)
        meta["weight_mask"] = mask.numpy().astype(np.uint8)
        meta["weight_density"] = float(mask.float().mean())
    scale = getattr(m, "weight_scale", None)
    if scale is not None:
        codes = to_codes(w, scale.detach().cpu())
        if codes is None:
            raise _refuse(f"{name}: the weight is not codes × weight_scale (not on its integer "
                          f"grid)")
        meta.update(quantization="uniform_symmetric", weight_scale=_f32(scale.cpu()),
                    weight_codes=codes.numpy().astype(np.int8),
                    weight_bits=code_bits(int(codes.abs().max()) if codes.numel() else 0))
    return w, meta


def _pair(v) -> tuple[int, int]:
    return tuple(int(x) for x in v) if isinstance(v, tuple | list) else (int(v), int(v))


def _one(v) -> int:
    return int(v[0]) if isinstance(v, tuple | list) else int(v)


def _layer_node(nir, m: nn.Module, name: str, path: str, in_shape, out_shape, folded: str | None):
    meta: dict = {"module": node_type(m) if type(m) in _OUR_LAYERS else type(m).__name__,
                  "path": path}
    if isinstance(m, nn.Linear):
        w, wm = _weight_meta(name, m)
        meta.update(wm, bias=m.bias is not None)
        if folded:
            meta["folded_bn"] = folded
        if m.bias is None:
            return nir.Linear(weight=_f32(w), metadata=meta)
        return nir.Affine(weight=_f32(w), bias=_f32(m.bias.detach().cpu()), metadata=meta)
    if isinstance(m, nn.Conv1d | nn.Conv2d):
        if m.padding_mode != "zeros":
            raise _refuse(f"{name}: padding_mode {m.padding_mode!r} has no NIR counterpart")
        w, wm = _weight_meta(name, m)
        meta.update(wm, bias=m.bias is not None)
        if folded:
            meta["folded_bn"] = folded
        b = m.bias.detach().cpu() if m.bias is not None else torch.zeros(m.out_channels)
        pad = m.padding
        if isinstance(m, nn.Conv1d):
            return nir.Conv1d(input_shape=int(in_shape[-1]), weight=_f32(w), stride=_one(m.stride),
                              padding=pad if isinstance(pad, str) else _one(pad),
                              dilation=_one(m.dilation), groups=m.groups, bias=_f32(b),
                              metadata=meta)
        return nir.Conv2d(input_shape=tuple(int(s) for s in in_shape[-2:]), weight=_f32(w),
                          stride=tuple(m.stride), padding=pad if isinstance(pad, str) else
                          tuple(pad), dilation=tuple(m.dilation), groups=m.groups, bias=_f32(b),
                          metadata=meta)
    if isinstance(m, nn.AvgPool2d):
        k, s, p = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)
        if m.ceil_mode or m.divisor_override is not None or (any(p) and not m.count_include_pad):
            raise _refuse(f"{name}: AvgPool2d with ceil_mode, divisor_override or padding without "
                          f"count_include_pad has no NIR counterpart")
        return nir.AvgPool2d(kernel_size=np.array(k), stride=np.array(s), padding=np.array(p),
                             metadata=meta)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        (h, w_), (oh, ow) = in_shape[-2:], out_shape[-2:]
        if h % oh or w_ % ow:
            raise _refuse(f"{name}: AdaptiveAvgPool2d from {h}x{w_} to {oh}x{ow} is not one "
                          f"average pool (the sides do not divide)")
        k = (h // oh, w_ // ow)
        return nir.AvgPool2d(kernel_size=np.array(k), stride=np.array(k), padding=np.array((0, 0)),
                             metadata=meta)
    if isinstance(m, nn.Flatten):
        if m.start_dim != 2 or m.end_dim != -1:  # ours: [T, B, ...] -> [T, B, F]
            raise _refuse(f"{name}: a Flatten over [T, B, ...] that does not flatten exactly the "
                          f"sample dimensions (start_dim 2, end_dim -1)")
        return nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1,
                           metadata=meta)
    if isinstance(m, nn.MaxPool1d | nn.MaxPool2d):
        raise _refuse(f"{name}: {type(m).__name__} has no NIR counterpart (NIR has no max "
                      f"pooling); use average pooling")
    raise _refuse(f"{name}: {type(m).__module__}.{type(m).__qualname__} has no NIR counterpart")


_OUR_LAYERS = {cls for cls, _, _ in NODE_TYPES.values()}


# --------------------------------------------------------------------------------------------
# the graph


def to_nir(model: nn.Module, *, dt: float = 1e-4, example: torch.Tensor | None = None):
    """The ``nir.NIRGraph`` of ``model`` (see the module docstring); nothing is written.

    ``example``: an input x_seq [T, B, *in_shape], needed only when the model has no
    ``in_shape`` (it is run once on its first step to find every node's shape)."""
    nir = _nir()
    if not (isinstance(dt, int | float) and math.isfinite(dt) and dt > 0):
        raise _refuse(f"dt must be a finite number > 0, got {dt!r}")
    _check_extras(model)
    in_shape = getattr(model, "in_shape", None)
    if in_shape is None:
        if not isinstance(example, torch.Tensor) or example.dim() < 3:
            raise _refuse("the model has no in_shape: pass example=x_seq [T, B, ...]")
        in_shape = tuple(example.shape[2:])
    in_shape = tuple(int(s) for s in in_shape)
    model = copy.deepcopy(model).eval()  # folding and the shape run leave the caller's intact
    seq.reset_state(model)
    triples, out_name, paths = _walk(model)
    for name, m, _ in triples:  # before the shape run, which an integer model cannot pass
        if isinstance(m, NEURON_TYPES):
            _check_neuron(name, m)
        elif isinstance(m, _LAYERS) and getattr(m, "input_scale", None) is not None:
            raise _refuse(f"{name}: an integer-mode layer (input_scale: the network on the "
                          f"integer grid) has no NIR counterpart; export it with sc.to_integer")
    param = next(model.parameters(), None)
    x = torch.zeros(1, 1, *in_shape, dtype=param.dtype if param is not None else None)
    shapes = _shapes(triples, x)
    consumers: dict[str, list[str]] = {INPUT: []}
    for name, _, inputs in triples:
        consumers[name] = []
        for r in inputs:
            consumers[r].append(name)
    folded = _fold_bns(triples, consumers)

    def node_name(name: str) -> str:
        return f"n_{name}" if name in ("input", "output") else name

    nodes = {"input": nir.Input(input_type={"input": np.array(in_shape)})}
    edges: list[tuple[str, str]] = []
    sources: dict[str, list[str]] = {INPUT: ["input"]}
    spiking: set[str] = set()
    for name, m, inputs in triples:
        if isinstance(m, _IDENTITY):
            sources[name] = sources[inputs[0]]
            continue
        if isinstance(m, Add):
            summed = [s for r in inputs for s in sources[r]]
            if len(set(summed)) != len(summed):
                raise _refuse(f"{name}: a sum that holds one node twice (x + x) is not NIR edges")
            if len(summed) > 2 and not all(s in spiking for s in summed):
                raise _refuse(f"{name}: a sum of {len(summed)} terms that are not all spikes "
                              f"depends on the order of the additions, which NIR leaves open")
            sources[name] = summed
            continue
        own = node_name(name)
        shape = shapes[name]
        if isinstance(m, NEURON_TYPES):
            nodes[own] = _neuron_node(nir, m, shape, dt, name, paths[name])
            spiking.add(own)
        else:
            nodes[own] = _layer_node(nir, m, name, paths[name], shapes[inputs[0]], shape,
                                     folded.get(name))
        edges += [(s, own) for s in sources[inputs[0]]]
        sources[name] = [own]
    nodes["output"] = nir.Output(output_type={"output": np.array(shapes[out_name])})
    edges += [(s, "output") for s in sources[out_name]]
    meta = {"format": FORMAT, "generator": f"spikecompress {__version__}", "dt": float(dt),
            "time_step": "one NIR evaluation is one step of x_seq [T, B, ...]",
            "fire": "v >= v_threshold (ties fire) unless a node's metadata says '>'"}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def write_nir(graph, path: str | Path) -> Path:
    """Write ``graph`` to ``path`` atomically (a reader sees the old file or the new one)."""
    nir = _nir()
    buf = io.BytesIO()
    nir.write(buf, graph)
    path = Path(path)
    with atomic_writer(path) as f:
        f.write(buf.getvalue())
    return path


def export_nir(model: nn.Module, path: str | Path, *, dt: float = 1e-4,
               example: torch.Tensor | None = None):
    """Write ``model`` as a NIR graph to ``path`` (atomically) and return the ``nir.NIRGraph``.

    ``dt``: the time step in seconds the NIR time constants are written for (1e-4: snnTorch's
    and SpikingJelly's convention; Norse imports with its own ``dt`` argument). See the module
    docstring for the mapping, the metadata and what is refused."""
    graph = to_nir(model, dt=dt, example=example)
    write_nir(graph, path)
    return graph
