"""NIR neuron nodes as our neurons, under each import convention (see ``interop.nir``): our own
graphs rebuilt from their metadata, and foreign LIF / IF nodes read as SpikingJelly or snnTorch
read them. Also the importer's error and metadata-text helpers."""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from spikecompress.export.nir_nodes import _f32, neuron_fields
from spikecompress.models.layer_graph import NODE_TYPES
from spikecompress.snn.neuron import IF, LIF, PLIF, set_spike_mask_


def refuse(name: str, node, why: str) -> ValueError:
    """The importer's one-line error naming the node and its NIR type."""
    return ValueError(f"import_nir: node {name!r} (nir.{type(node).__name__}): {why}")


def text(v) -> str | None:
    """A NIR metadata value as text (bytes and 1-element string arrays decoded), else None."""
    if isinstance(v, bytes):
        return v.decode("utf8")
    if isinstance(v, np.ndarray) and v.dtype.kind in "SO" and v.size == 1:
        return text(v.item())
    return v if isinstance(v, str) else None


def _per_channel(arr, name: str, node, what: str) -> torch.Tensor:
    """A per-neuron array [C, ...] (or [N]) as a scalar or [C] tensor, if it is one."""
    a = np.asarray(arr, dtype=np.float64)
    if a.size and bool((a == a.reshape(-1)[0]).all()):
        return torch.tensor(float(a.reshape(-1)[0]))
    if a.ndim == 1:
        return torch.tensor(a, dtype=torch.float32)
    flat = a.reshape(a.shape[0], -1)
    if bool((flat == flat[:, :1]).all()):
        return torch.tensor(flat[:, 0], dtype=torch.float32)
    raise refuse(name, node, f"{what} differs within a channel; our neurons hold one value per "
                              f"channel")


def _scalar(arr, name: str, node, what: str) -> float:
    a = np.asarray(arr, dtype=np.float64).reshape(-1)
    if a.size == 0 or not bool((a == a[0]).all()):
        raise refuse(name, node, f"{what} must be one value for all neurons")
    return float(a[0])


def _close(a, b) -> bool:
    return bool(np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                            rtol=1e-6, atol=1e-12))


def neuron_ours(nir, name: str, node, meta: dict, dt: float) -> nn.Module:
    """Our neuron rebuilt from its spikecompress metadata; its NIR fields must be what our
    exporter writes from that metadata."""
    kind = text(meta.get("module"))
    if kind not in ("lif", "if", "plif") or text(meta.get("describe")) is None:
        raise refuse(name, node, "spikecompress metadata without a neuron description")
    module = NODE_TYPES[kind][1](json.loads(text(meta["describe"])))
    if isinstance(module, PLIF):
        with torch.no_grad():
            module.w.copy_(torch.as_tensor(np.asarray(meta["plif_w"]), dtype=module.w.dtype))
    if "spike_mask" in meta:
        set_spike_mask_(module, torch.as_tensor(np.asarray(meta["spike_mask"])))
    shape = tuple(np.asarray(node.v_threshold).shape)
    want = neuron_fields(module, shape, dt, name)
    if want.pop("type") != type(node).__name__ or any(
            not np.array_equal(_f32(v), _f32(getattr(node, k))) for k, v in want.items()):
        raise refuse(name, node, "its NIR parameters differ from its spikecompress metadata "
                                  "(edited after export?)")
    return module


def neuron_spikingjelly(name: str, node, dt: float) -> nn.Module:
    """A NIR LIF / IF as SpikingJelly 2.0 imports it (forward Euler with step ``dt``)."""
    v_reset = _scalar(node.v_reset, name, node, "v_reset")
    v_th = _per_channel(node.v_threshold, name, node, "v_threshold")
    if type(node).__name__ == "IF":
        if not _close(node.r, 1 / dt):
            raise refuse(name, node, f"r must be 1/dt = {1 / dt:g} (the Euler step dt·r·I adds "
                                      f"I) under the spikingjelly convention")
        return IF(v_threshold=v_th, v_reset=v_reset, semantics="spikingjelly")
    tau = np.asarray(node.tau, dtype=np.float64) / dt
    if not bool((np.isfinite(tau) & (tau > 1)).all()):
        raise refuse(name, node, f"tau/dt must be finite and > 1 (dt = {dt:g})")
    if _close(node.r, 1.0):
        decay_input = True
    elif _close(node.r, tau):
        decay_input = False
    else:
        raise refuse(name, node, "r must be 1 or tau/dt under the spikingjelly convention")
    if not _close(node.v_leak, v_reset):
        raise refuse(name, node, "v_leak must equal v_reset under the spikingjelly convention")
    return LIF(tau=_per_channel(tau, name, node, "tau"), v_threshold=v_th, v_reset=v_reset,
               decay_input=decay_input, semantics="spikingjelly")


def neuron_snntorch(name: str, node, dt: float) -> nn.Module:
    """A NIR LIF as snnTorch 1.0 imports it (a Leaky, reset to zero)."""
    if type(node).__name__ == "IF":
        raise refuse(name, node, "snnTorch imports NIR IF as a leaky Leaky(beta=0.9), which we "
                                  "will not reproduce; use the spikingjelly convention")
    if not np.allclose(node.v_leak, 0.0):
        raise refuse(name, node, "v_leak must be 0 under the snntorch convention")
    tau = np.asarray(node.tau)
    beta = 1 - (dt / tau)  # snnTorch's expressions, in the graph's dtype
    vthr = np.asarray(node.v_threshold)
    w_scale = np.asarray(node.r) * dt / tau
    if not np.allclose(w_scale, 1.0):
        if np.unique(w_scale).size != 1:
            raise refuse(name, node, "w_scale = r·dt/tau differs between neurons (snnTorch would "
                                      "silently use its smallest value)")
        vthr = vthr / np.unique(w_scale)[0]
    theta = _scalar(vthr, name, node, "v_threshold (after snnTorch's w_scale)")
    if not bool(((beta > 0) & (beta < 1)).all()):
        raise refuse(name, node, "beta = 1 − dt/tau must be in (0, 1)")
    steps = np.asarray(tau, dtype=np.float64) / dt
    module = LIF(tau=_per_channel(steps, name, node, "tau") if bool((steps > 1).all()) else 2.0,
                 v_threshold=float(np.float32(theta)), v_reset=0.0, decay_input=False,
                 semantics="snntorch")
    module.leak = _per_channel(beta.astype(np.float32), name, node, "beta")
    return module
