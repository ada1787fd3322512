"""Time stages: a network cut into stages that run at shrinking numbers of time steps, with a
temporal transformer (TT) at every cut (SSNN, Ding, Zuo, Jing, He, Xiao — AAAI 2024, arXiv
2401.01912; spec pruning.md §4.2 and §12.6).

From the paper (abstract and figure caption; no code was released): the SNN is split into n stages
with T_1 ≥ T_2 ≥ … ≥ T_n; a temporal transformer between two stages turns the [T_i, …] output of
one stage into the [T_{i+1}, …] input of the next; "average time steps" = Σ n_i T_i / Σ n_i, n_i the
compute (conv / linear) layers of stage i ([sec], §12.6).

Our choices (the TT's operation is unknown [R]):

* TT(T_in → T_out) splits the T_in steps into T_out consecutive groups as evenly as possible, the
  first ``T_in mod T_out`` groups one step longer (5 → 2: steps {0, 1, 2} and {3, 4}), and
  aggregates each group: ``"mean"``, the parameter-free group average; ``"learnable"``, per group a
  softmax over learnable logits of its steps (one logit per input step, initialised to 0, so it
  starts equal to the mean); or ``"max"``, the group maximum (for spikes: a spike if any step of
  the group spiked), which keeps spikes binary. All three give back a signal that is constant over
  time unchanged (§4.2 defining behaviour 2). T_out > T_in is a ValueError naming the stage.
* ``"learnable"`` has one logit per input step, so the stage-1 T must be known when it is
  installed: the config's ``"T"`` (required for it; optional otherwise, and then checked
  against the input when given). Later stages run at ``steps`` and are known anyway.
* the cut: every cut module (``"split"``: qualified names, in forward order) must be a child of a
  plain ``nn.Sequential``; that Sequential is replaced by a ``StagedSequential`` holding the same
  children under the same names, whose forward applies the TT right after the cut child. No
  hooks (``Session.finalize`` requires a hook-free model), the network's state_dict keys and
  ``for block in model.features`` are unchanged, and the TTs are registered only under
  ``model.time_stages`` (``time_stages.tts.<k>.logits`` for learnable ones), so the state_dict,
  ``export.save``/``load`` and ``from_spec`` (``EXTRAS["time_stages"]``) carry them.
* counting consequence: after a "mean" or "learnable" TT the next synaptic layer receives group
  means of spikes, real values in [0, 1] (e.g. 0.5), not spikes; ``measure.counters.count``
  classifies such an input as "real" and counts its (non-zero input, non-zero weight) pairs as
  MACs, not SOPs (4.6 vs 0.9 pJ per op in the 45nm-fp32 profile). A "max" TT, or groups of one step
  (T_out = T_in), pass spikes, and the next layer's operations stay SOPs.

    install_time_stages_(model, {"split": ["features.0"], "steps": [1], "transformer": "mean"})
    model(x_seq)                       # features.0 runs at x_seq's T, everything after at T = 1
    average_time_steps(model, T=4)     # (1·4 + 3·1) / 4: conv_net has 3 convs and a read-out
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

TRANSFORMERS = ("mean", "learnable", "max")
SYNAPTIC = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # what measure.counters counts
# top-level children of a Network that its forward runs (others, e.g. training heads, do not)
FORWARD_PATH = ("features", "classifier")
_KEYS = ("split", "steps", "transformer", "T")


def group_sizes(T_in: int, T_out: int) -> list[int]:
    """Lengths of the T_out consecutive groups of T_in steps, the first ``T_in mod T_out`` one
    longer: group_sizes(5, 2) == [3, 2]."""
    if not 1 <= T_out <= T_in:
        raise ValueError(f"cannot group T_in={T_in} steps into T_out={T_out} groups")
    q, r = divmod(T_in, T_out)
    return [q + 1 if g < r else q for g in range(T_out)]


class TemporalTransformer(nn.Module):
    """TT(T_in → T_out) at the input of stage ``stage`` (2 … n): x [T_in, B, ...] → [T_out, B, ...],
    each output step a convex combination of one group of consecutive input steps."""

    def __init__(self, stage: int, T_out: int, kind: str, T_in: int | None = None) -> None:
        super().__init__()
        self.stage, self.T_out, self.kind, self.T_in = stage, T_out, kind, T_in
        if kind == "learnable":
            group_sizes(T_in, T_out)  # T_in known and >= T_out
            self.logits = nn.Parameter(torch.zeros(T_in))  # uniform softmax = the group mean
        self.capture = False  # keep the input (the previous stage's output) for training heads
        self.captured: torch.Tensor | None = None

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        T = x_seq.shape[0]
        if self.T_out > T:
            raise ValueError(f"time stage {self.stage}: cannot shrink T={T} to {self.T_out} steps "
                             "(T_out > T_in)")
        if self.T_in is not None and T != self.T_in:
            raise ValueError(f"time stage {self.stage}: built for T_in={self.T_in} (learnable "
                             f"weights per step), got an input with T={T}")
        if self.capture and torch.is_grad_enabled():
            self.captured = x_seq
        sizes = group_sizes(T, self.T_out)
        groups = x_seq.split(sizes)  # T_out tensors [n_g, B, ...]
        if self.kind == "mean":
            return torch.stack([g.mean(0) for g in groups])  # [T_out, B, ...]
        if self.kind == "max":
            return torch.stack([g.amax(0) for g in groups])  # [T_out, B, ...]
        out = []
        for g, w in zip(groups, self.logits.split(sizes), strict=True):
            w = F.softmax(w, 0).to(g.dtype).view(-1, *[1] * (g.dim() - 1))  # [n_g, 1, ...]
            out.append((w * g).sum(0))
        return torch.stack(out)  # [T_out, B, ...]

    def weights(self) -> list[torch.Tensor]:
        """The aggregation weights of each group (learnable: softmax of its logits)."""
        if self.kind != "learnable":
            raise ValueError(f"a {self.kind} TT has no weights; its groups depend on the input's T")
        sizes = group_sizes(self.T_in, self.T_out)
        return [F.softmax(w.detach(), 0) for w in self.logits.split(sizes)]

    def extra_repr(self) -> str:
        return f"stage={self.stage}, T_in={self.T_in}, T_out={self.T_out}, kind={self.kind}"


class StagedSequential(nn.Sequential):
    """An ``nn.Sequential`` that applies ``cuts[name]`` (a TT) right after its child ``name``.

    The TTs are not children here (they live in ``model.time_stages``): keys, ``len`` and
    iteration are those of the original Sequential."""

    def __init__(self, *args: nn.Module) -> None:
        super().__init__(*args)
        self.cuts: dict[str, TemporalTransformer] = {}

    def forward(self, x):
        for name, module in self._modules.items():
            x = module(x)
            if name in self.cuts:
                x = self.cuts[name](x)
        return x


class TimeStages(nn.Module):
    """The TTs of a model (``tts[k]`` feeds stage k + 2) and its config; never called itself."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.config = config
        steps, kind, T = config["steps"], config["transformer"], config["T"]
        T_ins = [T, *steps[:-1]] if kind == "learnable" else [None] * len(steps)
        self.tts = nn.ModuleList(TemporalTransformer(k + 2, t, kind, t_in)
                                 for k, (t, t_in) in enumerate(zip(steps, T_ins, strict=True)))

    def stage_steps(self, T: int) -> list[int]:
        """[T_1, …, T_n] for an input of T steps (ValueError if a stage cannot run at it)."""
        want = self.config["T"]
        if want is not None and T != want:
            raise ValueError(f"time stages: installed for T={want}, asked for T={T}")
        steps = [T, *self.config["steps"]]
        for k in range(1, len(steps)):
            if steps[k] > steps[k - 1]:
                raise ValueError(f"time stage {k + 1}: cannot shrink T={steps[k - 1]} to "
                                 f"{steps[k]} steps (T_out > T_in)")
        return steps

    def set_capture(self, on: bool) -> None:
        """Keep (on) or stop keeping each stage's output during grad-enabled forwards."""
        for tt in self.tts:
            tt.capture, tt.captured = on, None

    def take_outputs(self) -> list[torch.Tensor | None]:
        """The outputs of stages 1 … n-1 kept by the last forward (None if none ran); cleared."""
        outs = [tt.captured for tt in self.tts]
        for tt in self.tts:
            tt.captured = None
        return outs


def check_config(config: object) -> dict:
    """Validate a time-stages config; returns it with every key ("T": None when absent)."""
    if not isinstance(config, dict) or set(config) - set(_KEYS):
        raise ValueError(f"time_stages config must be a dict with keys {list(_KEYS)}, got "
                         f"{config!r}")
    split, steps = config.get("split"), config.get("steps")
    kind, T = config.get("transformer", "mean"), config.get("T")
    if not isinstance(split, list) or not split or not all(isinstance(s, str) for s in split):
        raise ValueError(f"time_stages.split must be a non-empty list of module names, got "
                         f"{split!r}")
    if (not isinstance(steps, list) or len(steps) != len(split)
            or not all(type(t) is int and t >= 1 for t in steps)):
        raise ValueError(f"time_stages.steps must be {len(split)} positive ints (one per cut), "
                         f"got {steps!r}")
    if any(b > a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(f"time_stages.steps must not increase, got {steps}")
    if kind not in TRANSFORMERS:
        raise ValueError(f"time_stages.transformer must be one of {list(TRANSFORMERS)}, got "
                         f"{kind!r}")
    if T is not None and not (type(T) is int and T >= steps[0]):
        raise ValueError(f"time_stages.T must be an int >= steps[0]={steps[0]}, got {T!r}")
    if kind == "learnable" and T is None:
        raise ValueError("time_stages.T (the stage-1 T) is required by the learnable transformer")
    return {"split": list(split), "steps": list(steps), "transformer": kind, "T": T}


def _check_cuts(model: nn.Module, split: list[str]) -> None:
    order = [name for name, _ in model.named_modules()]
    for name in split:
        if name not in order or not name:
            raise ValueError(f"time_stages: no module {name!r} in the model")
        parent = model.get_submodule(name.rpartition(".")[0])
        if type(parent) not in (nn.Sequential, StagedSequential):
            raise ValueError(f"time_stages: cannot cut after {name!r}: its parent is a "
                             f"{type(parent).__name__}, not an nn.Sequential")
    for a, b in zip(split, split[1:], strict=False):
        if b.startswith(a + ".") or a.startswith(b + ".") or order.index(b) <= order.index(a):
            raise ValueError(f"time_stages.split must list disjoint modules in forward order, "
                             f"got {a!r} then {b!r}")


def _staged(model: nn.Module, name: str) -> StagedSequential:
    """The Sequential ``name`` of ``model``, replaced in place by a StagedSequential if needed."""
    seq = model.get_submodule(name)
    if isinstance(seq, StagedSequential):
        return seq
    staged = StagedSequential(OrderedDict(seq._modules))
    staged.train(seq.training)
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner), attr, staged)  # same key: the module order is kept
    return staged


def install_time_stages_(model: nn.Module, config: dict) -> TimeStages:
    """Cut ``model`` after each ``config["split"]`` module; stage k + 1 runs at ``steps[k]``.

    Adds ``model.time_stages`` (the TTs, on the model's device) and ``model.spec["time_stages"]``
    (the checked config, so ``from_spec`` reinstalls it). See the module docstring."""
    config = check_config(config)
    if getattr(model, "time_stages", None) is not None:
        raise ValueError("time_stages: the model already has time stages")
    _check_cuts(model, config["split"])
    p = next(model.parameters(), None)
    stages = TimeStages(config).to(p.device if p is not None else "cpu")
    stages.train(model.training)
    model.time_stages = stages
    for name, tt in zip(config["split"], stages.tts, strict=True):
        parent, _, child = name.rpartition(".")
        _staged(model, parent).cuts[child] = tt
    if isinstance(getattr(model, "spec", None), dict):
        model.spec["time_stages"] = config
    return stages


def _forward_path(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) in registration order, restricted to a Network's ``features`` and
    ``classifier`` when it has both, else every module outside ``time_stages``."""
    mods = list(model.named_modules())
    if all(hasattr(model, root) for root in FORWARD_PATH):
        return [(n, m) for n, m in mods if n.split(".")[0] in FORWARD_PATH]
    return [(n, m) for n, m in mods if n.split(".")[0] != "time_stages"]


def layer_steps(
    model: nn.Module, T: int, types: tuple[type, ...] = SYNAPTIC
) -> dict[str, int]:
    """{qualified name: the T its stage runs at} for every module of ``types`` (default: synaptic,
    conv / linear) on the forward path, for an input of T steps (T without time stages); e.g.
    per-layer ``dense_macs / steps`` gives the ANN twin's one-pass MACs of a staged model."""
    mods = _forward_path(model)
    stages = getattr(model, "time_stages", None)
    steps = [T] if stages is None else stages.stage_steps(T)
    split = [] if stages is None else stages.config["split"]
    names = [n for n, _ in mods]
    ends = [max(i for i, n in enumerate(names) if n == c or n.startswith(c + ".")) for c in split]
    return {n: steps[sum(e < i for e in ends)]
            for i, (n, m) in enumerate(mods) if isinstance(m, types)}


def average_time_steps(model: nn.Module, T: int) -> float:
    """Σ n_i T_i / Σ n_i over the stages, n_i the synaptic (conv / linear) layers of stage i
    (spec §12.6); T for a model without time stages (or without synaptic layers)."""
    steps = list(layer_steps(model, T).values())
    return sum(steps) / len(steps) if steps else float(T)
