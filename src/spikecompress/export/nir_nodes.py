"""One of our modules as one NIR node (``nir`` 1.0.7+, imported on first use): neurons, conv /
linear layers with their pruning and quantization metadata, pooling and flatten, for
``spikecompress.export.nir`` (whose docstring gives the whole mapping and the metadata).

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
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.export.scaled_codes import code_bits, to_codes
from spikecompress.models.layer_graph import NODE_TYPES, node_type
from spikecompress.snn.neuron import IF, LIF, PLIF
from spikecompress.snn.quantized import NEURON_BUFFERS

NEURON_TYPES = (LIF, IF, PLIF)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
CHARGE = "H[t] = k*(V[t-1] - v_reset) + v_reset + a*X[t]; k = 1 - dt/tau, a = dt*r/tau"


def _nir():
    try:
        import nir
    except ImportError as e:  # pragma: no cover - the extra is installed in CI
        raise ImportError("NIR export needs the optional extra: pip install "
                          "'spikecompress[nir]' (nir>=1.0.7, h5py)") from e
    return nir


def _refuse(what: str) -> ValueError:
    return ValueError(f"export_nir: {what}")



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
