"""Integer-STBP: integer-only training and inference of an SNN (Tan & Wu, ASP-DAC 2023).

Only the paper's abstract is verified (spec quant-kd §2.5): every floating-point operation of STBP
(forward, backward through time, weight update) is replaced by low-bitwidth integer operations.
No code was found. **What follows is our reconstruction**, the spec's integer datapath made
concrete; each choice is ours and named as such.

Lowering (``attach``, float, once). Every conv / linear of the network becomes an int8 weight
tensor ``w`` with a per-layer power-of-two scale 2^-fw (fw the largest exponent that keeps
max |W| within ±127: round to nearest); the BatchNorm after it is folded in with its running
statistics (its scale γ/√(σ²+ε) into the weights, its shift into an int32 bias), so the integer
network has no BN. Every LIF / IF neuron gets a membrane exponent fu (the threshold sits at
2^12: θ_int = round(θ · 2^fu), range ±8 θ in int16), an integer reset value, and its leak as a
shift: τ must be a power of two, 2^k (1 − 1/τ = 1 − 2^-k). PLIF (learnable τ), a ``leak``
override, non-power-of-two τ, residual nets whose addition is into currents (``resnet``), dropout
and ANN twins are refused with a one-line error naming the module; SEW-ResNet (spike addition)
is supported. A synapse that feeds a neuron delivers its current in the neuron's membrane units
(its bias too); the read-out's logits are in units 2^-(fw + 8).

Input (``encode``): the one float op, at the boundary: x → int8 codes ``round(x · 2^fx)``, fx
fixed on the first batch: the smallest exponent that represents that batch exactly (digits, grey
levels k/16: fx = 4; spikes and event counts: fx = 0), else the largest one that fits the codes
in ``input_bits`` (a runtime field, checkpointed).

Forward and backward run the lowered network's integer ops, their equations in ``istbp_ops``;
``istbp_lower`` builds them from the model.

Loss (our choice): the cross-entropy of the mean logits, as the project's float loop uses, with
an integer softmax: base 2 after a fixed-point multiply by log2(e)/T, 2^x by Mitchell's
piecewise-linear shift-and-add (within 6 %), p = (e << 12) // Σ e. The output error is
p − onehot in units 2^-12 (``int_ops.softmax_q12``). The loss this step returns (for logging
only) is the CE of that integer softmax.

Update (stochastic rounding, seeded by ``seed``; the generator state ``rng_`` is checkpointed):

    w ← clamp(w − SR(ΔW · L_m >> s), ±(2^(b−1) − 1))     and the same for b (int32)

with the learning rate as a 16-bit fixed-point multiplier L_m · 2^-s (a host scalar, as a
hardware register would hold it) of ``lr_scale · ctx.lr_at(step)`` (the loop's schedule):
``update="normalized"`` (default) divides each tensor's ΔW by 2^n, n = the bit length of
max |ΔW| (a per-tensor dynamic exponent of the gradient, so the largest step is lr · [0.5, 1)
in weight units: the update scale of the loop's Adam learning rates); ``update="sgd"`` uses the
exact gradient (the exponents and the 1/(T·B) of the mean loss go into L).

Float mirror. After every step (``after_step``) and at ``finalize`` the float model gets the
integer network exactly: weights w · 2^-fw, each folded BN set to an exact per-channel shift
(weight 1, running mean 0, running var 1 − ε: 1/√(var + ε) rounds to 1 in float32, checked) with
bias b · 2^-f, thresholds θ_int · 2^-fu: dyadic values, stored exactly by the artifact, which
rebuilds it from ``model.spec`` + the state dict. The float forward is the same network *without*
the integer datapath's roundings: it agrees with the integer forward except where (a) the current
is rounded into membrane units (when fx + fw > fu, e.g. small first-layer weights), (b) the leak
shift drops a set bit (odd membranes), (c) the int16 membrane saturates (|H| > 8 θ). Measured on
the digits CNN [16, 32, 64] trained in float (T = 4, seed 0), lowered: the spikes of its three
layers differ in 0.008 / 0.019 / 0.125 % of (neuron, step, sample), no membrane saturates, the
test predictions are 100 % equal (θ at 2^10: 5× more spike mismatches; at 2^14: 1.2 % of the
membranes saturate). The float model is never trained: its BN, surrogate and
``detach_reset`` do not take part (the integer path has its own window and detaches the reset).

Recipe: ``{name: istbp}`` (see ``recipes/istbp.yaml``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from spikecompress.collectives import Collectives
from spikecompress.compress.method import Context
from spikecompress.compress.quant.int_ops import bit_length, shift, softmax_q12, stochastic_shift
from spikecompress.compress.quant.istbp_lower import _lower
from spikecompress.compress.quant.istbp_ops import (
    OUT_BITS,
    _back,
    _flat,
    _Neuron,
    _run,
    _Synapse,
)

UPDATES = ("normalized", "sgd")
B32 = 2**30  # bias clamp


def _fixed_point(x: float) -> tuple[int, int]:
    """x ≥ 0 as (mantissa, shift): x ≈ mantissa · 2^-shift with a 16-bit mantissa."""
    if x <= 0 or not math.isfinite(x):
        return 0, 0
    frac, ex = math.frexp(x)  # x = frac · 2^ex, frac in [0.5, 1)
    return round(frac * 2**15), 15 - ex


@dataclass
class IntegerSTBP:
    """Integer-only STBP training of the whole network (a reconstruction; see the module docstring).

    ``weight_bits`` / ``input_bits`` / ``error_bits``: widths of the weights, the input codes and
    the back-propagated errors (2..8, int8 storage); ``window``: width of the rectangular
    surrogate's comparator window in units of the threshold; ``update``: "normalized" (per-tensor
    dynamic gradient exponent) or "sgd" (the exact gradient); ``lr_scale``: multiplies the
    loop's learning rate ``ctx.lr_at(step)``; ``seed``: of the stochastic rounding.
    Distributed: ``train_step`` (no DDP: the integer network is not a float graph) sums every
    rank's integer gradients exactly (aligned to the smallest exponent) and their number of
    terms, so each rank rounds the same global gradient with the same generator state; the
    input exponent is chosen on the first batch of every rank.
    """

    NAME: ClassVar[str] = "istbp"
    PAPER: ClassVar[str] = "Tan & Wu, ASP-DAC 2023 (reconstruction: spec quant-kd §2.5)"
    KIND: ClassVar[str] = "quant"
    REFUSES: ClassVar[tuple[str, ...]] = ("resnet",)  # residuals into currents: not lowered

    weight_bits: int = 8
    input_bits: int = 8
    error_bits: int = 8
    window: float = 1.0
    update: str = "normalized"
    lr_scale: float = 1.0
    seed: int = 0
    weights_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    biases_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    exps_: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    input_exp_: int | None = field(default=None, init=False, repr=False, compare=False)
    rng_: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _ops: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("weight_bits", "input_bits", "error_bits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 8:
                raise ValueError(f"{name} must be an int in [2, 8], got {v!r}")
        for name in ("window", "lr_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf:
                raise ValueError(f"{name} must be a number > 0, got {v!r}")
        if self.update not in UPDATES:
            raise ValueError(f"update must be one of {list(UPDATES)}, got {self.update!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")

    # -- hooks ---------------------------------------------------------------------------------
    @torch.no_grad()
    def attach(self, model: nn.Module, ctx: Context) -> None:
        """Lower the model (float, once): int8 weights, folded BN, integer neurons; then make
        the float model the exact image of the integer one."""
        self._ops = _lower(model, self.window)
        qmax = 2 ** (self.weight_bits - 1) - 1
        exps = []
        for syn in self.synapses():
            w, b = syn.folded()
            top = float(w.abs().max())
            fw = math.floor(math.log2(qmax / top)) if top > 0 else 0
            exps.append(fw)
            if syn.out_exp is None:
                syn.out_exp = fw + OUT_BITS
            self.weights_[syn.name] = torch.round(w * 2.0**fw).clamp(-qmax, qmax).to(
                device=syn.module.weight.device, dtype=torch.int8)
            bias = torch.round(b * 2.0**syn.out_exp).clamp(-B32, B32) if syn.trains_bias else b * 0
            self.biases_[syn.name] = bias.to(device=syn.module.weight.device, dtype=torch.int32)
        self.exps_ = torch.tensor(exps, dtype=torch.int64)
        self.input_exp_ = None
        self.rng_ = torch.Generator().manual_seed(self.seed).get_state()
        self.mirror()

    def train_step(
        self, model: nn.Module, x_seq: torch.Tensor, y: torch.Tensor, ctx: Context
    ) -> tuple[float, torch.Tensor]:
        """One integer step: forward, integer softmax-CE error, BPTT, stochastic-rounding update
        of the integer state (the float model follows in ``after_step``). ``x_seq``: the float
        batch (encoded here, the one float op) or int8 codes from ``encode``. Returns (the CE of
        the integer softmax, the integer logits [T, B, classes] in units 2^-(fw + 8))."""
        if ctx.lr_at is None:
            raise ValueError("istbp: the learning rate comes from the training loop: call "
                             "Session.bind(optimizer, lr_at) first")
        q = self.encode(x_seq, ctx.comm) if x_seq.is_floating_point() else x_seq
        if y.is_floating_point() or y.dim() != 1 or y.shape[0] != q.shape[1]:
            raise ValueError(f"y must be integer labels [B] with B = {q.shape[1]}, got "
                             f"{tuple(y.shape)} {y.dtype}")
        return self._step(q, y, ctx.lr_at(ctx.step) * self.lr_scale, ctx.comm)

    @torch.no_grad()
    def after_step(self, model: nn.Module, ctx: Context) -> None:
        self.mirror()

    @torch.no_grad()
    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """The float model with the integer-trained network (exact dyadic values)."""
        self.mirror()
        return model

    # -- the integer datapath ------------------------------------------------------------------
    def synapses(self) -> list[_Synapse]:
        return [op for op in _flat(self._ops) if isinstance(op, _Synapse)]

    def neurons(self) -> list[_Neuron]:
        return [op for op in _flat(self._ops) if isinstance(op, _Neuron)]

    @torch.no_grad()
    def encode(self, x_seq: torch.Tensor, comm: Collectives | None = None) -> torch.Tensor:
        """The input boundary (the one float op): x → int8 codes round(x · 2^fx); fx is fixed on
        the first batch (``input_exp_``), see the module docstring; with ``comm``, on the first
        batch of every rank."""
        if not x_seq.is_floating_point():
            raise ValueError(f"x_seq: encode takes the float input, got {x_seq.dtype}")
        qmax = 2 ** (self.input_bits - 1) - 1
        if self.input_exp_ is None:
            self.input_exp_ = self._input_exponent(x_seq, qmax, comm)
        return torch.round(x_seq * 2.0**self.input_exp_).clamp(-qmax, qmax).to(torch.int8)

    def _input_exponent(self, x_seq: torch.Tensor, qmax: int, comm: Collectives | None) -> int:
        """The smallest exponent that represents the batch (of every rank of ``comm``) exactly,
        else the largest one whose codes fit ``qmax``."""
        top = x_seq.abs().max().double().nan_to_num(math.inf).reshape(1)  # NaN reaches all
        if comm is not None:
            comm.max_(top)
        if not math.isfinite(float(top)):
            raise ValueError("x_seq holds NaN or inf")
        fmax = math.floor(math.log2(qmax / float(top))) if float(top) > 0 else 0
        tries = range(fmax - 8, fmax + 1)
        inexact = torch.tensor([not torch.equal(torch.round(x_seq * 2.0**f), x_seq * 2.0**f)
                                for f in tries], dtype=torch.int64)
        if comm is not None:
            comm.sum_(inexact)  # exact on every rank
        exact = [f for f, bad in zip(tries, inexact.tolist(), strict=True) if not bad]
        return exact[0] if exact else fmax

    def integer_forward(self, codes: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Integer inference: int8 codes [T, B, ...] → (logits int32 [T, B, classes], f), the
        logits being ``logits · 2^-f``."""
        if codes.is_floating_point() or self.input_exp_ is None:
            raise ValueError("x_seq: integer_forward takes int8 codes from encode")
        self._follow(codes.device)
        return _run(self, self._ops, (codes, self.input_exp_))

    def _step(self, q: torch.Tensor, y: torch.Tensor, lr: float,
              comm: Collectives) -> tuple[float, torch.Tensor]:
        out, f = self.integer_forward(q)
        T, B, K = out.shape
        p = softmax_q12(out.sum(0, dtype=torch.int64), f, T)  # [B, K], units 2^-12
        target = (y.unsqueeze(1) == torch.arange(K, device=y.device)).to(torch.int64) << 12
        g = (p - target).to(torch.int32)
        _back(self, self._ops, (g.unsqueeze(0).expand(T, B, K), -12), False)
        self._update(lr, self._sum_grads(T * B, comm))
        p_y = p.gather(1, y.unsqueeze(1)).flatten().tolist()
        loss = sum(math.log(4096 / max(v, 1)) for v in p_y) / max(len(p_y), 1)
        return loss, out

    def _sum_grads(self, count: int, comm: Collectives) -> int:
        """Replace every synapse's gradient by its sum over the ranks, exactly: each rank shifts
        its mantissas (int64) to the smallest exponent any rank has, then they are added;
        returns the number of (step, sample) terms of all the ranks."""
        syns = self.synapses()
        exps = torch.tensor([-e for s in syns for e in (s.grad[1], s.grad[3])], dtype=torch.int64)
        comm.max_(exps)  # minus the smallest exponent of every tensor
        low = (-exps).tolist()
        total = torch.tensor([count], dtype=torch.int64)
        mantissas = [total]
        for i, syn in enumerate(syns):
            dw, ew, db, eb = syn.grad
            dw = shift(dw.to(torch.int64), ew - low[2 * i])
            db = None if db is None else shift(db.to(torch.int64), eb - low[2 * i + 1])
            syn.grad = (dw, low[2 * i], db, low[2 * i + 1])
            mantissas += [t for t in (dw, db) if t is not None]
        comm.sum_(*mantissas)
        return int(total)

    def _update(self, lr: float, count: int) -> None:
        gen = torch.Generator()  # on the CPU on every device: the same draws everywhere
        gen.set_state(self.rng_)
        qmax = 2 ** (self.weight_bits - 1) - 1
        for syn in self.synapses():
            dw, ew, db, eb = syn.grad
            fw = int(self.exps_[syn.index])
            w = self.weights_[syn.name]
            step = self._scaled(dw, ew, fw, lr, count, gen)
            self.weights_[syn.name] = (w - step).clamp(-qmax, qmax).to(torch.int8)
            if syn.trains_bias:
                b = self.biases_[syn.name]
                step = self._scaled(db, eb, syn.out_exp, lr, count, gen)
                self.biases_[syn.name] = (b - step).clamp(-B32, B32).to(torch.int32)
            syn.grad = None
        self.rng_ = gen.get_state()

    def _scaled(self, g: torch.Tensor, e: int, frac: int, lr: float, count: int, gen):
        """The integer step of a tensor of units 2^-frac for the gradient mantissas ``g`` (units
        2^e): SR(g · lr_fixed), see the module docstring."""
        if self.update == "normalized":
            scale = lr * 2.0 ** (frac - bit_length(g))
        else:
            scale = lr * 2.0 ** (frac + e) / count
        mant, sh = _fixed_point(scale)
        return stochastic_shift(g.to(torch.int64) * mant, sh, gen)

    def _follow(self, device: torch.device) -> None:
        """Keep the integer state on ``device`` (a checkpoint loads it on the CPU)."""
        for d in (self.weights_, self.biases_):
            for k, t in d.items():
                if t.device != device:
                    d[k] = t.to(device)

    # -- the float image -----------------------------------------------------------------------
    @torch.no_grad()
    def mirror(self) -> None:
        """Write the integer network into the float model exactly (module docstring)."""
        for syn in self.synapses():
            mod, fw = syn.module, int(self.exps_[syn.index])
            w = self.weights_[syn.name]
            mod.weight.copy_(w.to(device=mod.weight.device, dtype=mod.weight.dtype) * 2.0**-fw)
            b = self.biases_[syn.name].to(device=mod.weight.device, dtype=mod.weight.dtype)
            b = b * 2.0**-syn.out_exp
            if syn.bn is not None:
                bn = syn.bn
                bn.weight.fill_(1.0)
                bn.bias.copy_(b)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
                if mod.bias is not None:
                    mod.bias.zero_()
            elif mod.bias is not None:
                mod.bias.copy_(b)
        for n in self.neurons():
            th = n.module.v_threshold
            th.copy_((n.theta.to(th.device, th.dtype) * 2.0**-n.exp).expand_as(th))
