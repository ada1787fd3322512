"""Temporal-Switch Coding (TSC): the neuron, max pooling and read-out of a TSC network.

Han & Roy, "Deep Spiking Neural Network: Energy Efficiency Through Time based Coding", ECCV 2020.
No code was released. The input side follows the abstract: every value is two spikes whose
interval is proportional to it, and every synapse costs at most two weight reads and two additions
for the whole inference. The hidden neuron's output rule is a reconstruction (spec quant-kd §4.4,
[D]), not read in the paper: check its Sec. 3 before relying on the details.

Events. One tensor [T, B, ...] in {−1, 0, +1} carries a layer's events: +1 is an ON spike, −1 an
OFF spike, on the channel of the neuron that emits them (``snn.encoding.tsc`` for the input). A
window has ``Tw = T − 1`` steps: ON at step 0, OFF at step ``k`` (1 <= k <= Tw), the value
``k / Tw``; a neuron whose interval is 0 emits nothing, so every neuron emits 0 or 2 spikes.
A conv / linear layer reading these events computes ``ΔI[t] = W s[t]``: each event costs one weight
read and one addition per synapse (the "switch": ON adds w to the target's current register, OFF
subtracts it), so a synapse costs at most 2 of each whatever Tw is. ``measurement.count`` classifies
such input as ternary and counts every event (ON or OFF) as one SOP per non-zero weight; a TSC
neuron's ``signed_events`` makes it count every spike, ON or OFF, as one.

Neuron (``TSCNeuron``), over the window: the current register ``I[t] = Σ_{τ<=t} ΔI[τ] + b``
(the bias b is a current switched on at step 0 and off at Tw), every step ``V += I``, so after the
window ``V = Σ_{t<Tw} I[t] = Tw · (W x + b)`` for inputs x = k / Tw (exactly, in exact arithmetic).
Reconstructed output rule: at the window's end emit ON if ``V > 0``, then drain V by θ per step and
emit OFF at the first step where ``V <= 0``: the interval is ``ceil(V / θ)``, proportional to
relu(W x + b); it is cut at Tw (the OFF is forced at the window's end: values above θ saturate).

Pipelining. A layer's output window starts where its input window ends, so a network of L neuron
layers answers after (L + 1) · Tw steps; each layer's events are written on the same local axis of
T = Tw + 1 steps (layer ``l``'s step ``t`` is the global step ``l · Tw + t``). The tensors of every
layer therefore have the input's T, and counts per step are per window.

Max pooling (``TSCMaxPool``): all ON spikes of a layer fall on the same step, so the max of the
intervals is the OR of the "active" states (ON seen, OFF not yet): exact. Average pooling is not a
spike pair and is not provided. Read-out (``TSCReadout``): the last layer's current register,
integrated like a neuron without output; its mean over the T steps is ``V / Tw``, the logits.
"""

from __future__ import annotations

import torch
from torch import nn

from spikecompress.snn.encoding import tsc as tsc_encode
from spikecompress.snn.layers import check_x_seq


def _window(x_seq: torch.Tensor, who: str) -> int:
    """The window Tw = T − 1 of a [T, B, ...] input (T >= 2)."""
    if x_seq.shape[0] < 2:
        raise ValueError(f"{who}: TSC needs T >= 2 steps (the window is T - 1), got "
                         f"T={x_seq.shape[0]}")
    return x_seq.shape[0] - 1


def _channels(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel [C] tensor viewed to broadcast against x [..., B, C, *rest] (C = dim −len)."""
    rest = x.dim() - 3  # [T, B, C, ...]
    return p.to(x.dtype).view(-1, *([1] * rest))


def _events(on: torch.Tensor, k: torch.Tensor, T: int) -> torch.Tensor:
    """ON +1 at step 0 and OFF −1 at step k where ``on`` [B, ...] (0/1) is set: [T, B, ...]."""
    s = on.new_zeros(T, *on.shape)
    s[0] = on
    return s.scatter_add_(0, k.unsqueeze(0), -on.unsqueeze(0))


class TSCNeuron(nn.Module):
    """TSC neuron over the synaptic increments ``ΔI`` [T, B, C, ...] → events [T, B, C, ...].

    ``v_threshold`` θ (a scalar buffer): the drain per step, the value of a full window; ``bias``
    [C] (a buffer): the current switched on for the window (a folded BN's shift). After a forward
    ``v`` holds the membrane at the window's end [B, C, ...] (detached). No surrogate gradient: a
    TSC network is converted, not trained.
    """

    signed_events = True  # ON +1 and OFF −1: the counters count |s|

    def __init__(self, channels: int, v_threshold: float = 1.0) -> None:
        super().__init__()
        if not v_threshold > 0:
            raise ValueError(f"v_threshold must be > 0, got {v_threshold}")
        self.register_buffer("v_threshold", torch.tensor(float(v_threshold)))
        self.register_buffer("bias", torch.zeros(int(channels)))
        self.v = None
        self.record_v = False  # the state convention of snn.reset_state
        self.v_seq = self.h_seq = None

    def forward(self, d_seq: torch.Tensor) -> torch.Tensor:
        check_x_seq(d_seq, "[T, B, C, ...]", min_dim=3)
        Tw = _window(d_seq, type(self).__name__)
        if d_seq.shape[2] != self.bias.numel():
            raise ValueError(f"TSCNeuron has {self.bias.numel()} channels, the input "
                             f"{tuple(d_seq.shape)} has {d_seq.shape[2]} (dim 2)")
        current = torch.cumsum(d_seq[:Tw], 0) + _channels(self.bias, d_seq)  # [Tw, B, C, ...]
        v = current.sum(0)  # every step V += I: the membrane after the window
        k = torch.ceil(v / self.v_threshold.to(v.dtype)).clamp_(0, Tw)  # drain steps to V <= 0
        self.v = v.detach()
        return _events((k > 0).to(d_seq.dtype), k.long(), Tw + 1)

    def extra_repr(self) -> str:
        return f"channels={self.bias.numel()}, v_threshold={self.v_threshold.item():.4g}"


class TSCMaxPool(nn.Module):
    """Max pooling of TSC events: ``pool`` (a time-folded max pool) over the active states
    (cumulative sum of the events), back to events by a difference over time. Exact when all ON
    spikes share a step, as every layer's do."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, s_seq: torch.Tensor) -> torch.Tensor:
        active = self.pool(torch.cumsum(s_seq, 0))  # [T, B, C, ...'] in {0, 1}
        return torch.diff(active, dim=0, prepend=torch.zeros_like(active[:1]))


class TSCReadout(nn.Module):
    """The read-out after the last conv / linear layer: its current register ``I`` (plus
    ``bias`` [K], switched on for the window) per step, scaled by T / Tw and 0 at the last step,
    so that the mean over the T steps is ``V / Tw`` (``V = Σ_{t<Tw} I[t]``), the logits; ``v``
    holds V after a forward."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.register_buffer("bias", torch.zeros(int(classes)))
        self.v = None
        self.record_v = False
        self.v_seq = self.h_seq = None

    def forward(self, d_seq: torch.Tensor) -> torch.Tensor:
        check_x_seq(d_seq, "[T, B, K]", min_dim=3)
        Tw = _window(d_seq, type(self).__name__)
        current = torch.cumsum(d_seq[:Tw], 0) + _channels(self.bias, d_seq)  # [Tw, B, K]
        self.v = current.sum(0).detach()
        out = torch.zeros_like(d_seq)
        out[:Tw] = current * ((Tw + 1) / Tw)
        return out


def is_tsc_events(x_seq: torch.Tensor) -> bool:
    """True when x_seq [T, B, ...] is TSC events: ON (+1) only at step 0, OFF (−1) only later,
    each element's events summing to 0 (so 0 or 2 events per element)."""
    if x_seq.shape[0] < 2:
        return False
    first, rest = x_seq[0], x_seq[1:]
    return bool(((first == 0) | (first == 1)).all() and ((rest == 0) | (rest == -1)).all()
                and (x_seq.sum(0) == 0).all())


def tsc_input(x_seq: torch.Tensor) -> torch.Tensor:
    """The events a TSC network reads from its input x_seq [T, B, ...]: TSC events as they are
    (``data.encoding: tsc``), or a static input in [0, 1] (the same at every step: ``direct``)
    encoded with window T − 1. Both give the same events: a non-negative input is TSC events only
    when it is all zero. One-line ValueError for anything else."""
    check_x_seq(x_seq, "[T, B, ...]", min_dim=2)
    _window(x_seq, "TSC network")
    if not bool(torch.isfinite(x_seq).all()):
        raise ValueError("TSC network: the input has NaN or infinite values")
    if bool((x_seq < 0).any()):
        if not is_tsc_events(x_seq):
            raise ValueError("TSC network: an input with negative values must be TSC events "
                             "(+1 at step 0, one -1 later, data.encoding: tsc)")
        return x_seq
    if not bool((x_seq == x_seq[:1]).all()):
        raise ValueError("TSC network: the input changes over time; give a static input "
                         "(data.encoding: direct) or TSC events (data.encoding: tsc)")
    if bool((x_seq[0] > 1).any()):
        raise ValueError(f"TSC network: a static input must lie in [0, 1], got values up to "
                         f"{x_seq[0].max().item():.4g}")
    return tsc_encode(x_seq[0], x_seq.shape[0])


def tsc_decode(s_seq: torch.Tensor) -> torch.Tensor:
    """The value of TSC events [T, B, ...]: the interval over the window, k / Tw [B, ...]."""
    Tw = _window(s_seq, "tsc_decode")
    return torch.cumsum(s_seq[:Tw], 0).sum(0) / Tw
