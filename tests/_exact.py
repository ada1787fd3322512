"""Exact-by-construction test models: every float32 sum a forward does is exact in any order.

Two different computations of one function (a model before and after channel surgery, a gated vs
a physically removed channel, a sliced vs a full network) agree bit for bit only where nothing
rounds: a float32 sum of arbitrary values depends on the reduction order, and that order changes
with the kernel (MKL or oneDNN code path, CPU model, blocking) and with the thread count. A test
that asserts ``torch.equal`` between two such computations builds its model with ``dyadic_``:

* weights, biases, BN affine terms, running means, thresholds and leaks are rounded to ``bits``
  significant bits of the largest magnitude: a grid of 2^(e - bits), e = floor(log2 max|t|).
  With {0, 1} spike inputs a conv or linear output is then an integer number of grid steps below
  n · 2^(bits + 1) (n terms), far below 2^24: every partial sum is exact, in any order.
* BN (and BNTT) running variances become 4^j − eps with float32(var + eps) = 4^j exactly
  (j in [-3, 1]), so 1/sqrt(var + eps) = 2^-j exactly and eval BN is (x − mean) · 2^-j · γ + β
  on short dyadics.
* LIF τ becomes a power of two ≥ 2 (1/τ and 1 − 1/τ dyadic); PLIF w becomes 0 or 40, whose
  sigmoid is exactly 1/2 or exactly 1 in any implementation (exp(-40) < 2^-54), so the decay and
  the gain are dyadic whichever kernel evaluates the sigmoid.

The neuron charge ``k·v + a·x`` then stays dyadic as well, and the threshold comparison sees the
same bits in both computations. (The neurons' elementwise IEEE operations would round identically
on any path even without this; what dyadic values remove is the dependence on summation order.)
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from spikecompress.snn import BNTT, reset_state
from spikecompress.snn.neuron import LIF, PLIF

_PLIF_ONE = 40.0  # sigmoid(40) = 1 / (1 + 4e-18) rounds to exactly 1 in float32 and float64


def dyadic(t: torch.Tensor, bits: int = 3, positive: bool = False) -> torch.Tensor:
    """``t`` rounded to ``bits`` significant bits of its largest magnitude (a dyadic grid).

    With ``positive`` the values are kept at least one grid step (thresholds). Integer-valued
    tensors (masks, counters, hand-set integers) are exact already and returned unchanged."""
    t = t.detach()
    if not t.numel() or bool((t == t.round()).all()):
        return t.clone()
    peak = float(t.abs().max())
    step = 2.0 ** (math.floor(math.log2(peak)) - bits)
    out = torch.round(t / step) * step
    return out.clamp_min(step) if positive else out


def power_of_four_var(var: torch.Tensor, eps: float, lo: int = -3, hi: int = 1) -> torch.Tensor:
    """Running variances v with float32(v + eps) = 4^j exactly, j = round(log4(var + eps))."""
    j = torch.round(torch.log2(var.detach().double().clamp_min(1e-12) + eps) / 2).clamp(lo, hi)
    target = torch.pow(4.0, j).to(var.dtype)
    eps_t = torch.tensor(eps, dtype=var.dtype)
    out = target - eps_t
    for _ in range(4):  # nudge by an ulp where v + eps misses 4^j
        miss = (out + eps_t) != target
        if not bool(miss.any()):
            return out
        out = torch.where(miss & (out + eps_t > target), torch.nextafter(out, -target), out)
        out = torch.where(miss & (out + eps_t < target), torch.nextafter(out, target), out)
    raise AssertionError("no float32 variance v with v + eps a power of 4")


@torch.no_grad()
def dyadic_(model: nn.Module, bits: int = 3) -> nn.Module:
    """Make every floating parameter and buffer of ``model`` dyadic (see the module docstring),
    in place; returns ``model``. Call it after randomising the model and before copying it."""
    for module in model.modules():
        is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm | BNTT)
        for name, t in list(module._parameters.items()) + list(module._buffers.items()):
            if t is None or not t.is_floating_point():
                continue
            if is_bn and name == "running_var":
                t.copy_(power_of_four_var(t, module.eps))
            elif isinstance(module, LIF) and name == "tau":  # 2, 4, 8, ...
                t.copy_(torch.exp2(torch.round(torch.log2(t)).clamp_min(1.0)))
            elif isinstance(module, PLIF) and name == "w":
                t.copy_(torch.where(t > 0, _PLIF_ONE, 0.0))  # PLIF: 1/τ = 1 or 1/2
            else:
                t.copy_(dyadic(t, bits, positive=name == "v_threshold"))
    return model


@torch.no_grad()
def rounding_modules(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the modules whose float32 output on ``x`` differs from a float64 twin's: empty
    when nothing in the forward rounds (the check that a ``dyadic_`` model is exact). The twin's
    BNs take float32(var + eps) as their variance and eps 0, which is what float32 computes."""
    twin = copy.deepcopy(model).double()
    for m in twin.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm | BNTT) and m.running_var is not None:
            m.running_var.copy_(m.running_var.float() + torch.tensor(m.eps))
            m.eps = 0.0
    outs: dict[str, list[list[torch.Tensor]]] = {}
    hooks = []
    for net in (model, twin):
        for name, m in net.named_modules():
            def hook(_m, _i, out, name=name):
                if isinstance(out, torch.Tensor):
                    outs.setdefault(name, [[], []])[out.dtype == torch.float64].append(out)
            hooks.append(m.register_forward_hook(hook))
    try:
        for net, inp in ((model, x), (twin, x.double())):
            reset_state(net)
            net(inp)
            reset_state(net)
    finally:
        for h in hooks:
            h.remove()
    return [name for name, (a, b) in outs.items() if len(a) != len(b)
            or not all(torch.equal(u.double(), v) for u, v in zip(a, b, strict=True))]
