"""Surrogate gradients: the spike is a Heaviside step forward, a smooth pseudo-derivative backward.

Every surrogate is a small frozen dataclass with ``derivative(x)`` (the pseudo-derivative g'(x) at
``x = H - V_th``) and ``__call__(x)``, which applies the autograd Function ``SpikeFunction`` whose
backward multiplies the incoming gradient by ``derivative(x)``. The fused neuron kernels use
``grad_kernel`` instead, which a surrogate may override with an allocation-free formula (ATan
does). Each pseudo-derivative integrates to 1 over the real line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


class SpikeFunction(torch.autograd.Function):
    """Forward ``S = Θ(x) = 1[x >= 0]`` (ties fire); backward ``dL/dx = dL/dS · g'(x)``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_spike: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_spike * ctx.surrogate.derivative(x), None


# grad_kernel's product: (g, h, out, scratch) -> out = g · g'(h − v_th); all [n, ...]
GradKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Surrogate:
    """Shared call protocol: ``surrogate(x)`` spikes with the surrogate's backward."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return SpikeFunction.apply(x, self)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def grad_kernel(self, v_th: torch.Tensor, like: torch.Tensor) -> GradKernel:
        """``f(g, h, out, scratch)`` writing out = g · g'(h − v_th), built once per fused backward.

        ``out`` may alias ``g``; ``scratch`` is a free buffer shaped like ``h``; ``like`` gives the
        dtype and device. The default evaluates ``derivative`` (allocating its temporaries).
        """

        def kernel(g, h, out, scratch):
            return torch.mul(g, self.derivative(h - v_th), out=out)

        return kernel


@dataclass(frozen=True)
class ATan(Surrogate):
    """Arctangent surrogate (Fang et al. 2021): ``g'(x) = (α/2) / (1 + (π/2 · α · x)²)``."""

    alpha: float = 2.0

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * x).square())

    def grad_kernel(self, v_th: torch.Tensor, like: torch.Tensor) -> GradKernel:
        # g' = 1 / den, den = (2/α)(1 + u²), u = c·h − c·v_th, c = πα/2: three ops into scratch
        # and out, no temporaries (the constants are built here, once per backward)
        c, two_a = math.pi / 2 * self.alpha, 2 / self.alpha
        minus_c_th = v_th * -c
        two_a_t = torch.full((), two_a, dtype=like.dtype, device=like.device)

        def kernel(g, h, out, scratch):
            den = torch.add(minus_c_th, h, alpha=c, out=scratch)
            torch.addcmul(two_a_t, den, den, value=two_a, out=den)
            return torch.div(g, den, out=out)

        return kernel


@dataclass(frozen=True)
class Sigmoid(Surrogate):
    """Sigmoid surrogate: ``g'(x) = α · σ(αx) · (1 − σ(αx))``."""

    alpha: float = 4.0

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        sg = torch.sigmoid(self.alpha * x)
        return self.alpha * sg * (1 - sg)


@dataclass(frozen=True)
class Triangle(Surrogate):
    """Triangle (piecewise-linear) surrogate: ``g'(x) = α · max(0, 1 − α|x|)``."""

    alpha: float = 1.0

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * (1 - self.alpha * x.abs()).clamp_min(0)


@dataclass(frozen=True)
class Rectangular(Surrogate):
    """Rectangular surrogate (Wu et al. 2018, STBP): ``g'(x) = 1[|x| < w/2] / w``."""

    width: float = 1.0

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return (x.abs() < self.width / 2).to(x.dtype) / self.width


SURROGATES = {"atan": ATan, "sigmoid": Sigmoid, "triangle": Triangle, "rectangular": Rectangular}
