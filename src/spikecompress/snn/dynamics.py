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

from spikecompress.snn.surrogate import ATan, Surrogate


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
    return t.device.type == "cpu" and bool((t == 1).all())


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


class MultiStepNeuron(torch.autograd.Function):
    """Fused forward over T steps and its exact BPTT backward with the surrogate derivative.

    The forward rounds exactly as ``step`` (so the spikes are identical) and saves only the charge
    H, or with ``need_h=False`` the input x (H is then not returned and the backward recomputes it
    per slice, bit for bit). The backward recomputes the spikes and the surrogate derivative from
    H. On CPU both loops run per slice of the batch (all T steps of one slice, then the next) in
    preallocated buffers; a scalar decay k is applied lazily (``dL/dV[t-1] = k · dL/dH[t]`` is
    folded into the ops that use it). The gradient of the returned H is supported.
    """

    @staticmethod
    def forward(ctx, x_seq, v0, k, a, v_th, reset: Reset, surrogate: Surrogate, need_h=True):
        ctx.set_materialize_grads(False)
        s_seq = torch.empty_like(x_seq)
        v_last = torch.empty_like(x_seq[0])
        v0 = v0.expand_as(v_last)
        a_one = _is_one(a)
        chunks = _chunks(x_seq)
        h_seq = torch.empty_like(x_seq) if need_h else None
        # without h_seq the charge of a slice lives in a small buffer, recomputed in backward
        h_buf = None if need_h else torch.empty_like(x_seq[:, chunks[0]])
        ax_buf = None if a_one else torch.empty_like(x_seq[0, chunks[0]])
        for sl in chunks:
            v_buf = v_last[sl]  # the running membrane; holds V[T-1] at the end
            n = v_buf.shape[0]
            hs = h_seq[:, sl] if need_h else h_buf[:, :n]
            ax = None if a_one else ax_buf[:n]
            _charge_fire(x_seq[:, sl], v0[sl], hs, s_seq[:, sl], v_buf, ax, k, a, v_th, reset)
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
        h_seq, v0, k, a, v_th, x_seq = ctx.saved_tensors
        reset, sg = ctx.reset, ctx.surrogate
        vc, vr = reset.v_c, reset.v_reset
        soft = vr is None
        need_x, need_v0, need_k, need_a, need_th = ctx.needs_input_grad[:5]
        recompute = h_seq is None  # forward ran with need_h=False: recompute H and S per slice
        ref = x_seq if recompute else h_seq
        T = ref.shape[0]
        chunks = _chunks(ref)

        def buf() -> torch.Tensor:
            return torch.empty_like(ref[0, chunks[0]])

        if recompute:
            h_rec, s_rec = torch.empty_like(ref[:, chunks[0]]), torch.empty_like(ref[:, chunks[0]])
            v_rec = buf()
            ax_rec = None if _is_one(a) else buf()
        g_x_seq = torch.empty_like(ref) if need_x else None
        g_v0 = torch.empty_like(ref[0]) if need_v0 else None
        a_one = need_x and _is_one(a)
        k_val = _scalar(k)  # scalar decay: dL/dV[t-1] = k_val · g_h, never materialised
        gv_buf = buf() if k_val is None else None
        # g_h goes straight into g_x when a = 1 (and stays valid as the next step's dL/dV);
        # otherwise into two alternating buffers (the previous g_h must survive one step)
        gh_bufs = None if a_one else (buf(), buf())
        g_buf, d_buf = buf(), buf()  # total spike gradient → surrogate term; derivative
        ns_buf = None if soft else buf()  # 1 - S as floats
        vp_buf = buf() if need_k else None
        atan = type(sg) is ATan
        if atan:  # (2/α)(1 + u²) with u = c h − c v_th, c = π α / 2: g' = 1 / that
            c, two_a = math.pi / 2 * sg.alpha, 2 / sg.alpha
            minus_c_th = v_th * -c
            two_a_t = torch.full((), two_a, dtype=ref.dtype, device=ref.device)
        params = {"k": (need_k, k), "a": (need_a, a), "th": (need_th, v_th)}
        acc = {n: buf() for n, (need, _) in params.items() if need}  # per-slice sums
        totals: dict[str, torch.Tensor] = {}
        for sl in chunks:
            n = ref[0, sl].shape[0]
            if recompute:
                hr, sr = h_rec[:, :n], s_rec[:, :n]
                ax = None if ax_rec is None else ax_rec[:n]
                _charge_fire(x_seq[:, sl], v0[sl], hr, sr, v_rec[:n], ax, k, a, v_th, reset)
                hs = hr.unbind(0)
            else:
                hs = h_seq[:, sl].unbind(0)
            for b in acc.values():
                b[:n].zero_()
            g_ss = None if g_s_seq is None else g_s_seq[:, sl].unbind(0)
            g_xs = g_x_seq[:, sl].unbind(0) if need_x else None
            # dL/dV[t] = kk · gvt (gvt None: zero)
            gvt, kk = (None, 1.0) if g_v_last is None else (g_v_last[sl], 1.0)
            for t in range(T - 1, -1, -1):
                h = hs[t]
                g_s = None if g_ss is None else g_ss[t]
                # total gradient of the spike: direct + through the (non-detached) reset
                if gvt is None or reset.detach:
                    g_st = g_s
                else:
                    g_st = g_buf[:n]
                    dvds = v_th if soft else h  # dV/dS = -v_th (soft), v_reset - h (hard)
                    if g_s is None:
                        torch.mul(gvt, dvds, out=g_st).mul_(-kk)
                    else:
                        torch.addcmul(g_s, gvt, dvds, value=-kk, out=g_st)
                    if not soft and vr != 0:
                        g_st.add_(gvt, alpha=kk * vr)
                # surrogate term gsd = g_st · g'(h - v_th)
                gsd = None
                if g_st is not None:
                    gsd = g_buf[:n]
                    if atan:
                        den = torch.add(minus_c_th, h, alpha=c, out=d_buf[:n])
                        torch.addcmul(two_a_t, den, den, value=two_a, out=den)
                        torch.div(g_st, den, out=gsd)
                    else:
                        torch.mul(g_st, sg.derivative(h - v_th), out=gsd)
                # g_h = dV/dH · dL/dV + gsd (+ a direct gradient of H); dV/dH = 1 - S (hard)
                if a_one:
                    g_h = g_xs[t]
                elif gh_bufs is not None:
                    g_h = gh_bufs[t % 2][:n]
                if gvt is None:
                    if gsd is None:
                        g_h.zero_()
                    else:
                        g_h.copy_(gsd)
                elif soft:
                    if gsd is None:
                        torch.mul(gvt, kk, out=g_h)
                    else:
                        torch.add(gsd, gvt, alpha=kk, out=g_h)
                else:
                    not_s = torch.lt(h, v_th, out=ns_buf[:n])
                    if gsd is None:
                        torch.mul(gvt, not_s, out=g_h).mul_(kk)
                    else:
                        torch.addcmul(gsd, gvt, not_s, value=kk, out=g_h)
                if g_h_seq is not None:
                    g_h.add_(g_h_seq[t, sl])
                if need_th:  # dS/dv_th = -g', and for soft reset dV/dv_th = -S
                    if gsd is not None:
                        acc["th"][:n].sub_(gsd)
                    if soft and gvt is not None:
                        acc["th"][:n].sub_(gvt * (h >= v_th).to(h.dtype), alpha=kk)
                if need_k:  # dH/dk = V[t-1] - vc, V[t-1] rebuilt from H[t-1] in vp_buf
                    if t == 0:
                        v_prev = v0[sl] - vc if vc != 0 else v0[sl]
                    else:
                        h_p, v_prev = hs[t - 1], vp_buf[:n]
                        s_p = torch.ge(h_p, v_th, out=d_buf[:n])
                        torch.addcmul(h_p, v_th if soft else h_p, s_p, value=-1, out=v_prev)
                        if not soft and vr != 0:  # + v_reset S - vc, with vc = v_reset
                            v_prev.add_(s_p, alpha=vr).sub_(vr)
                    acc["k"][:n].addcmul_(g_h, v_prev)
                if need_a:
                    acc["a"][:n].addcmul_(g_h, x_seq[t, sl])
                if need_x and not a_one:
                    torch.mul(g_h, a, out=g_xs[t])
                if k_val is None:  # materialise dL/dV[t-1] = k · g_h
                    gvt, kk = torch.mul(g_h, k, out=gv_buf[:n]), 1.0
                else:
                    gvt, kk = g_h, k_val
            if need_v0:
                torch.mul(gvt, kk, out=g_v0[sl])
            for name, b in acc.items():
                part = _reduce_to(b[:n], params[name][1])
                totals[name] = part.clone() if name not in totals else totals[name].add_(part)
        return (
            g_x_seq,
            g_v0,
            totals.get("k"),
            totals.get("a"),
            totals.get("th"),
            None,
            None,
            None,
        )


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
    return MultiStepNeuron.apply(x_seq, v0, k, a, v_th, reset, surrogate, need_h)
