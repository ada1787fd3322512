"""The shared leaky integrate-and-fire dynamics behind IF, LIF and PLIF (survey eqs. 2–5).

All three neurons are one affine charge, a threshold and a reset:

    H[t] = k · (V[t-1] − V_c) + V_c + a · X[t]         charge   (k: decay, a: input gain)
    S[t] = Θ(H[t] − V_th)                              fire     (ties fire)
    V[t] = H[t] (1 − S[t]) + V_reset S[t]              hard reset
    V[t] = H[t] − V_th S[t]                            soft reset (v_reset=None)

with ``V_c = V_reset`` for hard reset and 0 for soft reset. LIF: ``k = 1 − 1/τ`` and
``a = 1/τ`` (decay_input) or 1; IF: ``k = a = 1``. ``k``, ``a`` and ``V_th`` are tensors that
broadcast against one step ``x`` of shape [B, ...] (scalars or per-channel [C, 1, ...]).

``multistep`` runs all T steps in one autograd node with a hand-written BPTT backward: only the
charge H[T, B, ...] is saved (or, with ``need_h=False``, the input, from which H is recomputed),
which keeps memory and time near a plain activation function. ``step`` is the same update in plain
autograd ops, the reference the fused kernel is tested against: the fused forward gives identical
spikes, the backward the same gradients up to rounding.

CPU performance notes (measured with benchmarks/engine_speed.py, 2 threads): the kernel is bound by
memory traffic and by first-touch page faults of its freshly allocated [T, B, ...] outputs, not by
Python overhead. So it allocates nothing per step (preallocated slice buffers, ``out=``), uses float
spikes with ``addcmul``/``lt`` instead of bool masks, ``where`` or ``masked_fill`` (3–10× slower on
CPU), folds a scalar decay k into the ops of the next step instead of materialising dL/dV, and uses
one fused ``add(alpha=k)`` for the charge when k is a power of two (then k·V is exact and the
rounding equals ``step``'s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spikecompress.snn.surrogate import Surrogate


@dataclass(frozen=True)
class Reset:
    """How a neuron resets: ``v_reset`` (None = soft reset) and whether the reset is detached."""

    v_reset: float | None
    detach: bool

    @property
    def v_c(self) -> float:
        return 0.0 if self.v_reset is None else self.v_reset


def step(
    x: torch.Tensor,
    v: torch.Tensor,
    k: torch.Tensor,
    a: torch.Tensor,
    v_th: torch.Tensor,
    reset: Reset,
    surrogate: Surrogate,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One time step in plain autograd ops. Shapes: x, v [B, ...]. Returns (spike, v_next, h)."""
    h = k * (v - reset.v_c) + reset.v_c + a * x
    s = surrogate(h - v_th)
    s_r = s.detach() if reset.detach else s
    if reset.v_reset is None:
        v_next = h - v_th * s_r
    else:
        v_next = h * (1 - s_r) + reset.v_reset * s_r
    return s, v_next, h


def _reduce_to(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum a broadcast gradient [B, ...] back to the shape of a scalar or per-channel parameter."""
    if grad.shape == like.shape:
        return grad
    lead = grad.dim() - like.dim()
    grad = grad.sum(dim=tuple(range(lead))) if lead > 0 else grad
    dims = tuple(i for i, n in enumerate(like.shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(dim=dims, keepdim=True) if dims else grad


def after_reset(h: torch.Tensor, s: torch.Tensor, v_th: torch.Tensor, reset: Reset) -> torch.Tensor:
    """Membrane after the reset, from the charge h and the spikes s (any matching shapes)."""
    if reset.v_reset is None:
        return h - v_th * s
    return torch.where(s.bool(), torch.full_like(h, reset.v_reset), h)


# Elements per chunk of the CPU kernel: the time loop runs on slices of the batch, all T steps of
# one slice before the next, so the step's temporaries stay in cache.
CHUNK_ELEMENTS = 1 << 16


def _chunks(x_seq: torch.Tensor) -> list[slice]:
    """Slices of the batch dimension (dim 1 of x_seq) that the kernel processes one at a time."""
    B = x_seq.shape[1]
    if x_seq.device.type != "cpu" or B <= 1:
        return [slice(0, B)]
    per_sample = max(1, x_seq[0, 0].numel())
    nb = max(1, CHUNK_ELEMENTS // per_sample)
    return [slice(b, min(b + nb, B)) for b in range(0, B, nb)]


def _is_one(t: torch.Tensor) -> bool:
    """True if ``t`` is all ones (checked only on CPU, where it costs no device sync)."""
    if t.device.type != "cpu":
        return False
    return t.item() == 1 if t.dim() == 0 else bool((t == 1).all())


def _scalar(t: torch.Tensor) -> float | None:
    """``t`` as a Python float if it is a single CPU value (no device sync), else None."""
    return float(t) if t.numel() == 1 and t.device.type == "cpu" else None


def _pow2(t: torch.Tensor) -> float | None:
    """``t`` as a Python float if it is a single CPU value that is a power of two (0.5, 1, ...)."""
    val = _scalar(t)
    if val is None or val <= 0:
        return None
    mantissa, _ = math.frexp(val)
    return val if mantissa == 0.5 else None


def _charge_fire(x_seq, v, h_seq, s_seq, v_buf, ax, k, a, v_th, reset: Reset) -> None:
    """The forward recurrence on one slice: fills h_seq, s_seq [T, n, ...]; V[T-1] → v_buf.

    Rounds as ``step`` (the same elementwise operations in the same order; a fused multiply-add
    only where the product is exact). ``ax`` is a scratch buffer for a·x, or None when a is 1.
    """
    vc, vr = reset.v_c, reset.v_reset
    k_pow2 = _pow2(k) if vc == 0 else None
    for h, s, x in zip(h_seq.unbind(0), s_seq.unbind(0), x_seq.unbind(0), strict=True):
        # h = k (v - vc) + vc + a x
        ax_t = x if ax is None else torch.mul(x, a, out=ax)
        if k_pow2 is not None:  # k v is exact, so the fused a x + k v rounds like step's
            torch.add(ax_t, v, alpha=k_pow2, out=h)
        else:
            if vc == 0:
                torch.mul(v, k, out=h)
            else:
                torch.sub(v, vc, out=h).mul_(k).add_(vc)
            h.add_(ax_t)
        torch.ge(h, v_th, out=s)
        if vr is None:  # soft: v = h - v_th s
            torch.addcmul(h, v_th, s, value=-1, out=v_buf)
        else:  # hard: v = h (1 - s) + v_reset s  (exact: s is 0 or 1)
            torch.addcmul(h, h, s, value=-1, out=v_buf)
            if vr != 0:
                v_buf.add_(s, alpha=vr)
        v = v_buf


def _forward(x_seq, v0, k, a, v_th, reset: Reset, need_h: bool):
    """The forward over T steps, slice by slice of the batch: (s_seq, v_last, h_seq or None)."""
    s_seq = torch.empty_like(x_seq)
    v_last = torch.empty_like(x_seq[0])
    v0 = v0.expand_as(v_last)
    a_one = _is_one(a)
    chunks = _chunks(x_seq)
    h_seq = torch.empty_like(x_seq) if need_h else None
    # without h_seq the charge of a slice lives in a small buffer (recomputed in backward)
    h_buf = None if need_h else torch.empty_like(x_seq[:, chunks[0]])
    ax_buf = None if a_one else torch.empty_like(x_seq[0, chunks[0]])
    if len(chunks) == 1:  # one slice: no slicing ops (they cost more than small steps)
        hs = h_seq if need_h else h_buf
        _charge_fire(x_seq, v0, hs, s_seq, v_last, ax_buf, k, a, v_th, reset)
        return s_seq, v_last, h_seq
    for sl in chunks:
        v_buf = v_last[sl]  # the running membrane; holds V[T-1] at the end
        n = v_buf.shape[0]
        hs = h_seq[:, sl] if need_h else h_buf[:, :n]
        ax = None if a_one else ax_buf[:n]
        _charge_fire(x_seq[:, sl], v0[sl], hs, s_seq[:, sl], v_buf, ax, k, a, v_th, reset)
    return s_seq, v_last, h_seq


class MultiStepNeuron(torch.autograd.Function):
    """Fused forward over T steps and its exact BPTT backward with the surrogate derivative.

    The forward rounds exactly as ``step`` (so the spikes are identical) and saves only the charge
    H, or with ``need_h=False`` the input x (H is then not returned and the backward recomputes it
    per slice, bit for bit). The backward recomputes the spikes and the surrogate derivative from
    H. On CPU both loops run per slice of the batch (all T steps of one slice, then the next) in
    preallocated buffers; a scalar decay k is applied lazily (``dL/dV[t-1] = k · dL/dH[t]`` is
    folded into the ops that use it). The gradient of the returned H is supported. The backward's
    steps are the helpers of ``_Backward``; the surrogate term is ``Surrogate.grad_kernel``.
    """

    @staticmethod
    def forward(ctx, x_seq, v0, k, a, v_th, reset: Reset, surrogate: Surrogate, need_h=True):
        ctx.set_materialize_grads(False)
        s_seq, v_last, h_seq = _forward(x_seq, v0, k, a, v_th, reset, need_h)
        v0 = v0.expand_as(v_last)
        need_k, need_a = ctx.needs_input_grad[2:4]  # dL/dk needs V[-1] = v0, dL/da needs x
        ctx.save_for_backward(
            h_seq,
            v0 if need_k or not need_h else None,
            k,
            a,
            v_th,
            x_seq if need_a or not need_h else None,
        )
        ctx.reset, ctx.surrogate = reset, surrogate
        return s_seq, v_last, h_seq

    @staticmethod
    def backward(ctx, g_s_seq, g_v_last, g_h_seq):
        bp = _Backward(ctx)  # buffers for the largest slice, reused by every slice
        for sl in bp.chunks:
            bp.run_slice(sl, g_s_seq, g_v_last, g_h_seq)
        t = bp.totals
        return bp.g_x_seq, bp.g_v0, t.get("k"), t.get("a"), t.get("th"), None, None, None


class _Backward:
    """One ``MultiStepNeuron.backward`` call: its constants, slice buffers and per-step helpers.

    Shapes: ``ref`` (H, or x when H was not stored) [T, B, ...]; every buffer is [n, ...] for the
    largest slice, used as ``buf[:n]``. The gradient of the membrane V[t] is carried lazily as
    ``kk · gv`` (gv None: zero): with a scalar decay, dL/dV[t-1] = k · dL/dH[t] is never
    materialised (kk = k); with a tensor decay it is, into gv_buf (kk = 1).
    """

    def __init__(self, ctx):
        self.h_seq, self.v0, self.k, self.a, self.v_th, self.x_seq = ctx.saved_tensors
        self.reset, self.soft, self.vr = ctx.reset, ctx.reset.v_reset is None, ctx.reset.v_reset
        self.need_x, self.need_v0, self.need_k, self.need_a, self.need_th = ctx.needs_input_grad[:5]
        # forward ran with need_h=False: recompute H (and S) per slice from x and v0
        self.ref = ref = self.x_seq if self.h_seq is None else self.h_seq
        self.chunks = _chunks(ref)
        self.g_x_seq = torch.empty_like(ref) if self.need_x else None
        self.g_v0 = torch.empty_like(ref[0]) if self.need_v0 else None
        self.a_one = self.need_x and _is_one(self.a)  # then dL/dx = dL/dH: g_h written into g_x
        self.k_val = _scalar(self.k)
        self.sg_term = ctx.surrogate.grad_kernel(self.v_th, ref)
        self.params = {"k": self.k, "a": self.a, "th": self.v_th}
        needs = {"k": self.need_k, "a": self.need_a, "th": self.need_th}
        self.totals: dict[str, torch.Tensor] = {}
        self._alloc(needs)

    def _buf(self) -> torch.Tensor:
        return torch.empty_like(self.ref[0, self.chunks[0]])

    def _alloc(self, needs: dict[str, bool]) -> None:
        """The slice buffers [n, ...] (and [T, n, ...] for the recomputed H and S)."""
        buf = self._buf
        if self.h_seq is None:
            self.h_rec = torch.empty_like(self.ref[:, self.chunks[0]])
            self.s_rec = torch.empty_like(self.ref[:, self.chunks[0]])
            self.v_rec = buf()
            self.ax_rec = None if _is_one(self.a) else buf()
        self.gv_buf = buf() if self.k_val is None else None
        # g_h goes straight into g_x when a = 1 (and stays valid as the next step's dL/dV);
        # otherwise into two alternating buffers (the previous g_h must survive one step)
        self.gh_bufs = None if self.a_one else (buf(), buf())
        self.g_buf, self.d_buf = buf(), buf()  # total spike gradient → surrogate term; scratch
        self.ns_buf = None if self.soft else buf()  # 1 - S as floats
        self.vp_buf = buf() if self.need_k else None  # V[t-1] - v_c
        self.acc = {name: buf() for name, need in needs.items() if need}  # per-slice param sums

    def run_slice(self, sl: slice, g_s_seq, g_v_last, g_h_seq) -> None:
        """BPTT over all T steps of one batch slice, last step first, into g_x, g_v0 and totals."""
        n = self.ref[0, sl].shape[0]
        hs = self._charges(sl, n)
        for b in self.acc.values():
            b[:n].zero_()
        g_ss = None if g_s_seq is None else g_s_seq[:, sl].unbind(0)
        g_xs = self.g_x_seq[:, sl].unbind(0) if self.need_x else None
        gv, kk = (None if g_v_last is None else g_v_last[sl]), 1.0  # dL/dV[T-1]
        for t in range(len(hs) - 1, -1, -1):
            h = hs[t]
            g_st = self._spike_grad(None if g_ss is None else g_ss[t], gv, kk, h, n)
            gsd = None if g_st is None else self.sg_term(g_st, h, self.g_buf[:n], self.d_buf[:n])
            g_h = g_xs[t] if self.a_one else self.gh_bufs[t % 2][:n]
            self._charge_grad(g_h, gsd, gv, kk, h, n)
            if g_h_seq is not None:  # H[t] is also an output
                g_h.add_(g_h_seq[t, sl])
            self._param_grads(t, sl, n, hs, g_h, gsd, gv, kk)
            if self.need_x and not self.a_one:
                torch.mul(g_h, self.a, out=g_xs[t])
            if self.k_val is None:  # dL/dV[t-1] = k · g_h
                gv, kk = torch.mul(g_h, self.k, out=self.gv_buf[:n]), 1.0
            else:
                gv, kk = g_h, self.k_val
        if self.need_v0:
            torch.mul(gv, kk, out=self.g_v0[sl])
        for name, b in self.acc.items():
            part = _reduce_to(b[:n], self.params[name])
            tot = self.totals.get(name)
            self.totals[name] = part.clone() if tot is None else tot.add_(part)

    def _charges(self, sl: slice, n: int) -> tuple[torch.Tensor, ...]:
        """H of one slice as T views [n, ...]: stored, or recomputed bit for bit from x and v0."""
        if self.h_seq is not None:
            return self.h_seq[:, sl].unbind(0)
        hr, sr = self.h_rec[:, :n], self.s_rec[:, :n]
        ax = None if self.ax_rec is None else self.ax_rec[:n]
        x, v0 = self.x_seq[:, sl], self.v0[sl]
        _charge_fire(x, v0, hr, sr, self.v_rec[:n], ax, self.k, self.a, self.v_th, self.reset)
        return hr.unbind(0)

    def _spike_grad(self, g_s, gv, kk, h, n) -> torch.Tensor | None:
        """Total dL/dS[t] [n, ...]: the direct g_s plus the path through the (non-detached) reset.

        dV[t]/dS[t] = −v_th (soft) or v_reset − h (hard). Written into g_buf; None means zero.
        """
        if gv is None or self.reset.detach:
            return g_s
        g_st = self.g_buf[:n]
        dvds = self.v_th if self.soft else h  # the −h part; + v_reset below
        if g_s is None:
            torch.mul(gv, dvds, out=g_st).mul_(-kk)
        else:
            torch.addcmul(g_s, gv, dvds, value=-kk, out=g_st)
        if not self.soft and self.vr != 0:
            g_st.add_(gv, alpha=kk * self.vr)
        return g_st

    def _charge_grad(self, g_h, gsd, gv, kk, h, n) -> None:
        """dL/dH[t] into g_h: dV/dH · dL/dV[t] + the surrogate term gsd (None: zero).

        dV/dH = 1 (soft) or 1 − S (hard, as floats: h < v_th), so no bool mask is needed.
        """
        if gv is None:
            if gsd is None:
                g_h.zero_()
            else:
                g_h.copy_(gsd)
        elif self.soft:
            if gsd is None:
                torch.mul(gv, kk, out=g_h)
            else:
                torch.add(gsd, gv, alpha=kk, out=g_h)
        else:
            not_s = torch.lt(h, self.v_th, out=self.ns_buf[:n])
            if gsd is None:
                torch.mul(gv, not_s, out=g_h).mul_(kk)
            else:
                torch.addcmul(gsd, gv, not_s, value=kk, out=g_h)

    def _param_grads(self, t, sl, n, hs, g_h, gsd, gv, kk) -> None:
        """Add step t's contributions to the per-slice sums of dL/dv_th, dL/dk, dL/da [n, ...]."""
        if self.need_th:  # dS/dv_th = -g', and for soft reset dV/dv_th = -S
            th = self.acc["th"][:n]
            if gsd is not None:
                th.sub_(gsd)
            if self.soft and gv is not None:
                h = hs[t]
                th.sub_(gv * (h >= self.v_th).to(h.dtype), alpha=kk)
        if self.need_k:  # dH[t]/dk = V[t-1] - v_c
            self.acc["k"][:n].addcmul_(g_h, self._prev_membrane(t, sl, n, hs))
        if self.need_a:  # dH[t]/da = x[t]
            self.acc["a"][:n].addcmul_(g_h, self.x_seq[t, sl])

    def _prev_membrane(self, t, sl, n, hs) -> torch.Tensor:
        """V[t-1] − v_c [n, ...]: v0 at t = 0, else rebuilt from H[t-1] into vp_buf."""
        vc, vr = self.reset.v_c, self.vr
        if t == 0:
            return self.v0[sl] - vc if vc != 0 else self.v0[sl]
        h_p, v_prev = hs[t - 1], self.vp_buf[:n]
        s_p = torch.ge(h_p, self.v_th, out=self.d_buf[:n])
        torch.addcmul(h_p, self.v_th if self.soft else h_p, s_p, value=-1, out=v_prev)
        if not self.soft and vr != 0:  # + v_reset S - v_c, with v_c = v_reset
            v_prev.add_(s_p, alpha=vr).sub_(vr)
        return v_prev


def multistep(
    x_seq: torch.Tensor,
    v0: torch.Tensor,
    k: torch.Tensor,
    a: torch.Tensor,
    v_th: torch.Tensor,
    reset: Reset,
    surrogate: Surrogate,
    need_h: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run T steps. Shapes: x_seq [T, B, ...], v0 [B, ...] (or broadcastable to it).

    Returns (s_seq, v_last, h_seq). With ``need_h=False`` h_seq is None: the charge is not stored
    (one [T, B, ...] tensor less to allocate and write) and the backward recomputes it from the
    saved input, bit for bit; gradients are identical.
    """
    if not torch.is_grad_enabled():  # inference: the same forward, no autograd node to build
        return _forward(x_seq, v0, k, a, v_th, reset, need_h)
    return MultiStepNeuron.apply(x_seq, v0, k, a, v_th, reset, surrogate, need_h)
