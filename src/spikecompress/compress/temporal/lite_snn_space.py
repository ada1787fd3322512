"""LitE-SNN's search space and its cost (the method is ``temporal.lite_snn``): per conv / linear
weight the compression candidates (magnitude-pruned variants W ⊙ M_r, each quantized to b bits)
mixed by architecture logits, the time-step logits, and the Bit-SynOps cost of a choice."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spikecompress.compress.quant.fake_quant import quantize, ste

DENSE_BITS = 32
_CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def pruned_variants(w: torch.Tensor, ratios) -> list[torch.Tensor]:
    """W ⊙ M_r for every ratio r: the round(r · n) smallest |W| zeroed (one stable ranking)."""
    order = torch.argsort(w.abs().flatten(), stable=True)
    out = []
    for r in ratios:
        keep = torch.ones(w.numel(), dtype=w.dtype, device=w.device)
        keep[order[: round(r * w.numel())]] = 0
        out.append(w * keep.view_as(w))
    return out


class CompConv(nn.Module):
    """Parametrization W ↦ Σ_j Σ_k p_j q_k Q_{b_k}(W ⊙ M_{r_j}) (search) or Q_{b*}(W ⊙ M_{r*})
    once ``choice`` (buffer: ratio index, bits index; −1 while searching) is set."""

    def __init__(self, ratios, bits, device) -> None:
        super().__init__()
        self.ratios, self.bits = tuple(ratios), tuple(bits)
        self.alpha_r = nn.Parameter(torch.zeros(len(ratios), device=device))
        self.alpha_b = nn.Parameter(torch.zeros(len(bits), device=device))
        self.register_buffer("choice", torch.full((2,), -1, dtype=torch.long, device=device))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        wd = w.detach()
        if int(self.choice[0]) >= 0:  # derived
            j, k = self.choice.tolist()
            return ste(w, quantize(pruned_variants(wd, [self.ratios[j]])[0], self.bits[k], False))
        cands = torch.stack([torch.stack([quantize(v, b, False) for b in self.bits])
                             for v in pruned_variants(wd, self.ratios)])  # [J, K, *W.shape]
        p, q = torch.softmax(self.alpha_r, 0), torch.softmax(self.alpha_b, 0)
        return torch.einsum("j,k,jk...->...", p.to(w.dtype), q.to(w.dtype), cands) + (w - wd)


class StepLogits(nn.Module):
    """β over the candidate time steps; ``choice`` (buffer) the derived candidate index or −1."""

    def __init__(self, steps, device) -> None:
        super().__init__()
        self.steps = tuple(steps)
        self.beta = nn.Parameter(torch.zeros(len(steps), device=device))
        self.register_buffer("choice", torch.tensor(-1, dtype=torch.long, device=device))

    def probs(self, T: int) -> torch.Tensor:
        """s [M] = softmax of β over the candidates ≤ T (0 for the others)."""
        ok = torch.tensor([t <= T for t in self.steps], device=self.beta.device)
        if not bool(ok.any()):
            raise ValueError(f"lite_snn: no step candidate {list(self.steps)} is <= T = {T}")
        return torch.softmax(self.beta.masked_fill(~ok, -math.inf), 0)


def synops_per_frame(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Synaptic ops of one frame (sample × step) of ``module`` on its input x ([T, B, ...] or
    [N, ...]) at full precision, no pruning: Σ over non-zero inputs of their fan-out (float64)."""
    nz = (x.detach() != 0).float()
    if isinstance(module, nn.Linear):
        return nz.sum(dtype=torch.float64) * module.out_features / max(
            nz.numel() // module.in_features, 1)
    d = len(module.kernel_size)
    nz = nz.reshape(-1, *nz.shape[-(d + 1):])  # [frames, C_in, *spatial]
    ones = torch.ones(module.out_channels, module.in_channels // module.groups,
                      *module.kernel_size, device=nz.device)
    out = _CONVS[d](nz, ones, None, module.stride, module.padding, module.dilation, module.groups)
    return out.sum(dtype=torch.float64) / max(nz.shape[0], 1)


def bit_synops(keep, bits, steps, ops: torch.Tensor, T: int) -> torch.Tensor:
    """Bit-SynOps over the dense cost: steps · Σ_l bits_l · keep_l · ops_l / (32 · T · Σ_l ops_l);
    keep, bits, ops [L] (expected or chosen values), steps [] (expected or chosen T)."""
    dense = DENSE_BITS * T * ops.sum()
    return steps * (bits * keep * ops).sum() / dense.clamp_min(1e-30)
