"""Time-to-first-spike (TTFS) coding: the neuron, max pooling, read-out and input of a TTFS network.

Rueckauer & Liu, "Conversion of analog to spiking neural networks using sparse temporal coding",
ISCAS 2018; reference implementation: snn_toolbox's ``INI_ttfs`` simulator (facts read there: the
refractory period is the whole simulation, so a neuron spikes at most once; once a neuron has
spiked it sends a constant current (dt) to its targets at every later step; a target integrates
it and spikes when V >= V_th). An activation is an instantaneous rate, the inverse of the time to
the first spike.

Events. A neuron layer's output is [T, B, ...] in {0, 1} with at most one 1 per neuron and sample
(its first and only spike). A conv / linear layer reading it computes ``ΔI[t] = W s[t]``: a spike
costs one weight read and one addition per synapse, once per sample (``measurement.count`` counts
them as SOPs: at most one synaptic event per synapse). The target keeps the sum in its current
register ``I``, and every step ``V += I``: a spike at step t_j adds ``w (t − t_j + 1)`` to V at
step t >= t_j, the sum of ramps ``Σ_j w_j (t − t_j)`` of the toolbox (which recomputes
``W · held spikes`` every step: the same arithmetic, spec quant-kd §4.3 costs the register).

Input (``ttfs_input``): the network's input is an analog current switched on at step 0: a static
input (the same at every step, ``data.encoding: direct``) and its onset (x at step 0, zero after,
``data.encoding: ttfs``, ``snn.encoding.ttfs``) give the same events, the onset. The first layer's
``ΔI[0] = W x``, so its neurons integrate the constant current ``z = W x + b``; the first layer's
synaptic operations are MACs, once per sample.

Schedules (``window``):

* ``window == 0``, concurrent (Rueckauer & Liu): all layers run at once over the T steps. ``I``
  starts at the bias b (a constant current from step 0), ``V[t] = Σ_{τ<=t} I[τ]``; the neuron
  spikes at the first step t with ``V[t] >= v_threshold`` and never again. For the first layer
  ``V[t] = (t + 1) z``, so its spike time ``t_first = t + 1`` (steps, counted to the end of the
  step, dt = 1) is the first integer >= V_th / z: ``1 / t_first`` is ``relu(z) / V_th`` within one
  step, and z <= 0 never fires. Deeper layers are the paper's approximation: after a spike the ramp
  grows by the full weight per step whatever the spike time (a rate neuron's count would grow by
  w / t_j), so late inputs weigh more than the ANN's; short T cuts them off.
* ``window == W > 0``, layered (one window of W steps per neuron layer: the phases of Stanojevic
  et al., Nat. Commun. 2024; our reconstruction [D], not read in code): neuron layer ``k``
  (``layer``, 1..L) integrates during window k − 1, the steps [(k − 1) W, k W): at its end
  ``V_end = Σ_{t<kW} I[t]`` (the bias a current during that window only: ``+ W b``). In its own
  window k the synaptic current no longer counts and the membrane rises by 1 per step,
  ``V[kW + u] = V_end + u + 1``; spike at the first u with ``V >= v_threshold`` (W + 1/2 after
  conversion), none after the window. That spike feeds the next layer for ``q = W − u`` steps of
  window k: a linear code, ``q = round(V_end)`` clipped to [0, W], so a layer passes its value on
  exactly up to rounding (V_end <= 1/2, in particular z <= 0, never fires).

Max pooling (``TTFSMaxPool``): the max of the values is the earliest spike in both codes; pooling
the "has fired" states (cumulative sum) and differencing over time gives that one spike. Average
pooling is not a spike time and is not provided. Read-out (``TTFSReadout``): the last layer's
membrane, integrated like a neuron without a threshold over all T steps (concurrent) or over the
last window (layered, which needs T >= (L + 1) W); it is emitted at the last step only, scaled so
that the mean over the T steps (what ``evaluate`` decodes) is ``V / steps integrated``: the
logits, up to the code's rounding.

No surrogate gradient: a TTFS network is converted (``compress.coding.ttfs``), not trained. Every
forward is one whole presentation from step 0; ``v`` holds the last forward's membrane (the
concurrent neuron's at the last step, the layered one's at the end of its integration window).
"""

from __future__ import annotations

import torch
from torch import nn

from spikecompress.snn.layers import check_x_seq


def _channels(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel [C] tensor viewed to broadcast against x [T, B, C, *rest]."""
    return p.to(x.dtype).view(-1, *([1] * (x.dim() - 3)))


def _check_window(window: int, layer: int, who: str) -> None:
    for name, value, low in (("window", window, 0), ("layer", layer, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{who}: {name} must be an integer >= {low}, got {value!r}")


def first_spikes(above: torch.Tensor) -> torch.Tensor:
    """The first True over time of ``above`` [T, B, ...] as 0/1 (bool in, bool out)."""
    return above & (torch.cumsum(above, 0) == 1)


def _ramps(d_seq: torch.Tensor, end: int) -> torch.Tensor:
    """``Σ_{t<end} I[t]`` for ``I[t] = Σ_{τ<=t} d[τ]``: every increment at step τ counts for the
    ``end − τ`` steps up to ``end`` (d_seq [T, B, ...], T >= end) → [B, ...]."""
    steps = torch.arange(end, 0, -1, device=d_seq.device, dtype=d_seq.dtype)  # end − τ
    return torch.tensordot(steps, d_seq[:end], dims=1)


class TTFSNeuron(nn.Module):
    """TTFS neuron over the synaptic increments ``ΔI`` [T, B, C, ...] → spikes [T, B, C, ...]
    (at most one per neuron and sample).

    ``v_threshold`` (a scalar buffer) and ``bias`` [C] (a buffer: the layer's bias as a constant
    current). ``window`` 0: the concurrent schedule; W > 0: the layered one, the neuron's layer
    being ``layer`` (1 for the first neuron layer). See the module docstring.
    """

    def __init__(
        self, channels: int, v_threshold: float = 1.0, window: int = 0, layer: int = 1
    ) -> None:
        super().__init__()
        if not v_threshold > 0:
            raise ValueError(f"v_threshold must be > 0, got {v_threshold}")
        _check_window(window, layer, type(self).__name__)
        self.register_buffer("v_threshold", torch.tensor(float(v_threshold)))
        self.register_buffer("bias", torch.zeros(int(channels)))
        self.window, self.layer = window, layer
        self.v = None
        self.record_v = False  # the state convention of snn.reset_state
        self.v_seq = self.h_seq = None

    def forward(self, d_seq: torch.Tensor) -> torch.Tensor:
        check_x_seq(d_seq, "[T, B, C, ...]", min_dim=3)
        if d_seq.shape[2] != self.bias.numel():
            raise ValueError(f"TTFSNeuron has {self.bias.numel()} channels, the input "
                             f"{tuple(d_seq.shape)} has {d_seq.shape[2]} (dim 2)")
        T, th = d_seq.shape[0], self.v_threshold.to(d_seq.dtype)
        b = _channels(self.bias, d_seq)
        if self.window == 0:
            v = torch.cumsum(torch.cumsum(d_seq, 0) + b, 0)  # [T, B, C, ...]
            self.v = v[-1].detach()
            return first_spikes(v >= th).to(d_seq.dtype)
        W, start = self.window, self.layer * self.window  # own window: [start, start + W)
        s = d_seq.new_zeros(d_seq.shape)
        if T <= start:  # its window begins after the last step: silent
            self.v = None
            return s
        v_end = _ramps(d_seq, start) + W * b  # [B, C, ...]
        self.v = v_end.detach()
        u = torch.ceil(th - 1 - v_end).clamp_(min=0)  # first u with v_end + u + 1 >= th
        fire = (u < W) & (start + u < T)
        index = (start + u).clamp_(max=T - 1).long().unsqueeze(0)
        return s.scatter_(0, index, fire.to(d_seq.dtype).unsqueeze(0))

    def extra_repr(self) -> str:
        return (f"channels={self.bias.numel()}, v_threshold={self.v_threshold.item():.4g}, "
                f"window={self.window}, layer={self.layer}")


class TTFSMaxPool(nn.Module):
    """Max pooling of TTFS spikes: ``pool`` (a time-folded max pool) over the "has fired" states
    (cumulative sum of the spikes), back to spikes by a difference over time: the earliest spike of
    each window, the max of the values in either code. On the analog onset of the input it is the
    onset of the max."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, s_seq: torch.Tensor) -> torch.Tensor:
        held = self.pool(torch.cumsum(s_seq, 0))  # [T, B, C, ...']
        return torch.diff(held, dim=0, prepend=torch.zeros_like(held[:1]))


class TTFSReadout(nn.Module):
    """The read-out after the last conv / linear layer: its membrane, integrated like a neuron
    without a threshold (``bias`` [K]: a constant current), over all T steps (``window`` 0) or
    over window ``layer − 1`` (layered: the last neuron layer's window; needs T >= layer · window).
    Output [T, B, K]: 0 except at the last step, where it is ``V · T / steps integrated``, so that
    the mean over the T steps is ``V / steps``, the logits; ``v`` holds V after a forward."""

    def __init__(self, classes: int, window: int = 0, layer: int = 1) -> None:
        super().__init__()
        _check_window(window, layer, type(self).__name__)
        self.register_buffer("bias", torch.zeros(int(classes)))
        self.window, self.layer = window, layer
        self.v = None
        self.record_v = False
        self.v_seq = self.h_seq = None

    def forward(self, d_seq: torch.Tensor) -> torch.Tensor:
        check_x_seq(d_seq, "[T, B, K]", min_dim=3)
        T = d_seq.shape[0]
        b = _channels(self.bias, d_seq)
        if self.window == 0:
            steps, v = T, _ramps(d_seq, T) + T * b
        else:
            end = self.layer * self.window
            if T < end:
                raise ValueError(f"TTFS read-out: the layered schedule ({self.layer - 1} neuron "
                                 f"layers, window {self.window}) needs T >= {end} steps, got "
                                 f"T={T}; raise data.T (or the stage's T)")
            steps, v = self.window, _ramps(d_seq, end) + self.window * b
        self.v = v.detach()
        out = torch.zeros_like(d_seq)
        out[-1] = v * (T / steps)
        return out

    def extra_repr(self) -> str:
        return f"classes={self.bias.numel()}, window={self.window}, layer={self.layer}"


def ttfs_input(x_seq: torch.Tensor) -> torch.Tensor:
    """The onset a TTFS network reads from its input x_seq [T, B, ...]: an onset as it is (x at
    step 0, zero after: ``data.encoding: ttfs``), a static input (the same at every step:
    ``direct``) turned into its onset. One-line ValueError for anything else (spike trains,
    event frames: their values change over time) and for NaN or infinite values."""
    check_x_seq(x_seq, "[T, B, ...]", min_dim=2)
    if not bool(torch.isfinite(x_seq).all()):
        raise ValueError("TTFS input: the input has NaN or infinite values")
    if x_seq.shape[0] == 1 or not bool(x_seq[1:].any()):
        return x_seq  # an onset (T = 1: either)
    if not bool((x_seq == x_seq[:1]).all()):
        raise ValueError("TTFS input: the input changes over time; give a static input "
                         "(data.encoding: direct) or its onset (data.encoding: ttfs)")
    onset = torch.zeros_like(x_seq)
    onset[0] = x_seq[0]
    return onset
