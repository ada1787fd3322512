"""Weight sharing by k-means: a per-layer codebook of ``clusters`` centroids, fine-tuned or not.

Deep Compression's trained quantization (Han, Mao, Dally, ICLR 2016):
per layer, the non-zero (surviving) weights are clustered by 1-D k-means with *linear* init
``c = linspace(min W, max W, k)`` (the paper's best init: it keeps the rare large weights), then

    forward   Ŵ_i = c[idx_i]                          (indices frozen after attach)
    backward  ∂L/∂c_j = Σ_{i: idx_i = j} ∂L/∂Ŵ_i      (Han et al. 2016, eq. 3)

ST-Quant (Chowdhury et al., IJCNN 2021, spec §2.3) applies the same clustering after training,
without the fine-tune: ``mode="ptq"``. Zeros (pruned weights) are not clustered and stay 0.
Storage: ``n·ceil(log2 k)`` index bits + ``k`` floats per layer (``compression_ratio``); the
artifact packs any tensor with <= 256 distinct values that way by itself.

Where the centroids live, so that the user's optimizer (built before attach, Adam included)
trains them: they are *not* a new parameter (that optimizer would never see it). The layer's own
``weight`` stays the optimized tensor and ``SharedWeights`` reads the centroids off it:
``c_j = mean of the member weights W_i``, and its backward hands every member the *summed*
gradient of its cluster, ``∂L/∂W_i = Σ_{i': idx_i' = j} ∂L/∂Ŵ_i'``. Every member then receives
the same gradient, so any element-wise optimizer (SGD, momentum, Adam, AdamW's decay) moves all
members of a cluster alike and the mean moves by exactly that step: for plain SGD,
``c_j ← c_j − lr · Σ ∂L/∂Ŵ_i``, Deep Compression's update; for Adam, Adam on the centroid.
Attach also sets every member weight to its centroid, so the members start equal and stay equal
(an L2 weight decay then acts on the centroid too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.compress.method import Context
from spikecompress.compress.quant.fake_quant import bake_weight_
from spikecompress.compress.targets import select

MODES = ("qat", "ptq")
MAX_CLUSTERS = 256  # the artifact's codebook limit
KMEANS_ITERS = 300  # Lloyd iterations at most; a layer converges in tens


def kmeans_1d(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic 1-D k-means with linear init (Han et al. 2016, §3.2).

    values [n] → (centroids [k] ascending, indices [n] int64 in 0..k−1, ``centroids[j]`` the mean
    of cluster j). Lloyd's iterations until the assignment is stable; in 1-D the nearest centroid
    is found by ``searchsorted`` on the midpoints (ties go to the lower one). An empty cluster is
    re-seeded at the value farthest from its centroid (scikit-learn's rule; the paper says
    nothing): linear init on a pruned layer puts most centroids in the empty gap around 0, and
    keeping them there would leave a 80 %-pruned layer with 4 of 16 levels.
    """
    if values.numel() == 0:
        return values.new_zeros(k), torch.zeros(0, dtype=torch.long, device=values.device)
    c = torch.linspace(float(values.min()), float(values.max()), k, dtype=values.dtype,
                       device=values.device)
    idx = None
    for _ in range(KMEANS_ITERS):
        new = torch.searchsorted((c[1:] + c[:-1]) / 2, values)
        if idx is not None and torch.equal(new, idx):
            break
        idx = new
        c = _reseed_empty(values, idx, _means(values, idx, c))
    return _means(values, idx, c), idx


def _means(values: torch.Tensor, idx: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Cluster means [k]; an empty cluster keeps its value from ``c``."""
    counts = torch.bincount(idx, minlength=c.numel())
    return torch.where(counts > 0, _segment_sum(values, idx, c.numel()) / counts.clamp_min(1), c)


def _reseed_empty(values: torch.Tensor, idx: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Move the empty clusters' centroids onto the values farthest from theirs; sorted."""
    empty = torch.nonzero(torch.bincount(idx, minlength=c.numel()) == 0).reshape(-1)
    if empty.numel() == 0:
        return c
    err = (values - c[idx]).abs()
    far = torch.argsort(err, descending=True, stable=True)[: empty.numel()]
    seeds = torch.unique(values[far[err[far] > 0]])  # distinct, and none is a centroid already
    c = c.clone()
    c[empty[: seeds.numel()]] = seeds
    return c.sort().values


def _segment_sum(x: torch.Tensor, idx: torch.Tensor, k: int) -> torch.Tensor:
    """[n], [n] → [k]: ``out[j] = Σ_{i: idx_i = j} x_i``."""
    return x.new_zeros(k).index_add_(0, idx, x)


def compression_ratio(n: int, k: int, float_bits: int = 32) -> float:
    """Deep Compression's storage ratio ``n·B / (n·ceil(log2 k) + k·B)`` for one layer."""
    return n * float_bits / (n * max(1, math.ceil(math.log2(k))) + k * float_bits)


class _Share(torch.autograd.Function):
    """``Ŵ_i = c[idx_i]``, ``c_j`` = mean of the non-zero members; backward: summed per cluster.

    ``idx`` uses the slot ``k`` for "no cluster" (zeros): Ŵ is 0 there and gets no gradient. A
    member whose input is 0 (pruned by a mask after attach) leaves the mean and outputs 0.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, idx: torch.Tensor, k: int) -> torch.Tensor:
        flat, live = w.reshape(-1), w.reshape(-1) != 0  # [n]
        slot = torch.where(live, idx, k)
        sums = _segment_sum(flat, slot, k + 1)
        counts = torch.bincount(slot, minlength=k + 1).clamp_min(1)
        c = torch.cat([(sums / counts)[:k], flat.new_zeros(1)])  # [k + 1]; slot k is 0
        ctx.save_for_backward(idx)
        ctx.k = k
        return c[slot].view_as(w) + 0.0  # + 0.0: no −0.0 in the codebook

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        g = _segment_sum(grad.reshape(-1), idx, ctx.k + 1)  # [k + 1]
        g[ctx.k] = 0
        return g[idx].view_as(grad), None, None


class SharedWeights(nn.Module):
    """Parametrization ``W ↦ c[idx]`` with frozen indices; see the module docstring.

    ``indices``: int64 buffer of W's shape (flattened), values in 0..k (k = not clustered → 0).
    """

    def __init__(self, indices: torch.Tensor, clusters: int) -> None:
        super().__init__()
        self.clusters = clusters
        self.register_buffer("indices", indices.detach().reshape(-1).clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _Share.apply(w, self.indices, self.clusters)


def cluster(w: torch.Tensor, k: int) -> torch.Tensor:
    """k-means indices of W's non-zero entries; W [any] → int64 [numel] (k where W = 0)."""
    flat = w.detach().reshape(-1)
    live = flat != 0
    idx = torch.full_like(flat, k, dtype=torch.long)
    idx[live] = kmeans_1d(flat[live], k)[1]
    return idx


@dataclass
class WeightSharing:
    """Share the weights of each selected conv / linear layer among ``clusters`` values.

    ``mode="qat"``: cluster at attach, then train the centroids (indices frozen) through the
    user's optimizer (Deep Compression). ``mode="ptq"``: nothing changes during training;
    finalize clusters the final weights (ST-Quant). After finalize each selected ``weight`` is
    exactly ``c[idx]``: at most ``clusters`` distinct non-zero values, zeros kept. Attach it after
    pruning has finished (a later stage, or a constant-schedule mask): weights pruned later leave
    their cluster, but the clusters were fitted on them.
    Distributed: the clusters are fitted on the weights alone: they agree by themselves under DDP.
    """

    NAME: ClassVar[str] = "weight_sharing"
    PAPER: ClassVar[str] = "Han, Mao & Dally, ICLR 2016 (Deep Compression); ST-Quant"
    KIND: ClassVar[str] = "quant"

    clusters: int = 16
    mode: str = "qat"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    targets_: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        k = self.clusters
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= MAX_CLUSTERS:
            raise ValueError(f"clusters must be an int in 2..{MAX_CLUSTERS}, got {k!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")

    @torch.no_grad()
    def attach(self, model: nn.Module, ctx: Context) -> None:
        self.targets_ = [m for _, m in select(model, self.include, self.exclude)]
        if self.mode == "qat":
            for m in self.targets_:
                share = SharedWeights(cluster(m.weight, self.clusters), self.clusters)
                parametrize.register_parametrization(m, "weight", share)
                original, shared = m.parametrizations.weight.original, m.weight
                original.copy_(torch.where(shared != 0, shared, original))  # members hold c_j

    def centroids(self, module: nn.Module) -> torch.Tensor:
        """The current codebook [clusters] of a target layer in QAT mode, read off its shared
        weights (0 for an empty cluster)."""
        idx = shared_of(module).indices
        c = module.weight.detach().new_zeros(self.clusters + 1)
        c[idx] = module.weight.detach().reshape(-1)  # all members of a cluster hold c_j
        return c[: self.clusters]

    @torch.no_grad()
    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        for m in self.targets_:
            w = m.weight  # effective: masks applied, c[idx] already in QAT
            if self.mode == "ptq":
                w = share_now(w, self.clusters)
            bake_weight_(m, w)
        return model


def share_now(w: torch.Tensor, k: int) -> torch.Tensor:
    """Post-training sharing: W → c[idx] with k-means on W's non-zeros (ST-Quant); same shape."""
    return _Share.apply(w.detach(), cluster(w, k), k)


def shared_of(module: nn.Module, name: str = "weight") -> SharedWeights:
    """The ``SharedWeights`` parametrization on ``module.name``; ValueError if there is none."""
    if parametrize.is_parametrized(module, name):
        for p in module.parametrizations[name]:
            if isinstance(p, SharedWeights):
                return p
    raise ValueError(f"{type(module).__name__}.{name} has no SharedWeights parametrization")
