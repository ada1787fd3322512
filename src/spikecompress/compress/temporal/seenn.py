"""SEENN — spiking early exit: each input gets its own number of time steps (Li, Geller, Kim, Panda
— NeurIPS 2023, arXiv 2304.01230).

The model's forward is unchanged (full-T per-step logits); SEENN installs ``model.exit_policy``
(``models.exit_policy``), which ``measure()`` and ``measure.early_exit.early_exit_predict`` use:
accuracy at the exits, the average exit step (AET), and SOPs / energy of the steps actually run.

**SEENN-I** (``mode="confidence"``; from the authors' code, §12.4): exit at the first t whose
confidence of z_t = Σ_{k≤t} out[k] (max softmax(z_t / τ), or 1 − H/log K with ``score="entropy"``)
is > ``alpha``, else at T. α = 0.9 and τ = 1 are the code's defaults (its QCFS-conversion variant
uses τ = 8, α = 0.8). The stage trains the SNN as the recipe says; the authors train with the TET
loss (a recipe stage's ``loss: tet``) so that every prefix of T is usable. ``finalize`` installs the
parameter-free ``ConfidenceExit``; ``freeze_snn`` and ``policy`` are not used in this mode.

**SEENN-II** (``mode="policy"``; no code was released — everything below is our design [R]):
* policy π(t | x): ``PolicyExit``, an ANN on the input before the SNN runs: time-mean of x_seq →
  (optional adaptive average pool to ``policy.pool`` per side) → flatten → Linear(F, ``hidden``)
  → ReLU → Linear(hidden, ``t_max``) → softmax over t ∈ {1..T} (actions above T masked; T may not
  exceed ``t_max`` in training). Installed at ``attach`` as ``model.exit_policy`` so the stage's
  optimizer trains it (its own group, ``lr_scale``) and checkpoints carry it; initialised from
  ``policy.seed`` (the global RNG is left as it was).
* reward, from the SNN's own outputs of the same batch (detached): c_t = [argmax z_t = y] for every
  prefix t; sample a ~ π(·|x); r = 1 − (a/T)^power if c_a else −penalty (defaults power 2,
  penalty 1: our choice; the spec only says "e.g. 1 − (t/T)² if correct, a penalty otherwise").
  Correct at T earns 0 and any wrong answer −penalty, so an input that only the full T gets right
  is pushed to T, and one right at t = 1 to 1. For inputs the policy cannot tell apart, t beats T
  iff P(right at t) · (1 − (t/T)^power + penalty) > penalty · P(right at T): ``penalty`` sets the
  accuracy / steps trade-off. The rewards come from the batches the stage trains on: on the SNN's
  own training set it is right at t = 1 on nearly every input (measured: 98.9 % MNIST-1D, 99.5 %
  event digits after 60 / 30 TET epochs), so the policy learns to exit at 1 and reaches the test
  accuracy of t = 1. Hold samples out of the SNN's training (``data.holdout``) and train the
  policy stage on them (``train_on: holdout``) for rewards that reflect unseen inputs.
* REINFORCE: loss = −mean((r − b) · log π(a|x)) − entropy_bonus · mean H(π(·|x)), b the baseline:
  ``"running"`` (an exponential mean of the batch-mean rewards with ``momentum``, started at the
  first batch's mean; kept in the runtime field ``baseline_`` so a killed run resumes exactly) or
  ``"batch"`` (this batch's mean reward). Sampling uses the global RNG, which the Trainer
  checkpoints. At inference π picks argmax (deterministic).
* ``freeze_snn`` (default true): the SNN stays as it was: at ``attach`` every model parameter
  outside the policy gets ``requires_grad = False`` (so the stage's task loss and weight decay do
  not move it: the loop's optimizer skips parameters without gradients) and a forward pre-hook
  keeps the SNN's modules in eval mode (BN running statistics frozen; the rewards are computed on
  exactly the outputs inference sees). ``finalize`` removes the hook and restores ``requires_grad``.
  With ``freeze_snn=false`` the SNN trains on the task loss alongside the policy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from spikecompress.compress.method import Context, zero_loss
from spikecompress.models.checks import check_choice, check_float, check_int
from spikecompress.models.exit_policy import KEY, SCORES, install_exit_policy_, prefix_logits

MODES = ("confidence", "policy")
BASELINES = ("running", "batch")


@dataclass
class PolicyKnobs:
    """SEENN-II's knobs (the ``policy`` field), all our choices [R]: the network (``hidden``,
    ``t_max``, ``pool``, ``seed``), the reward (``power``, ``penalty``) and REINFORCE
    (``entropy_bonus``, ``baseline``, ``momentum``, ``lr_scale`` of its optimizer group)."""

    hidden: int = 32
    t_max: int = 8
    pool: int | None = None
    seed: int = 0
    power: float = 2.0
    penalty: float = 1.0
    entropy_bonus: float = 0.01
    baseline: str = "running"
    momentum: float = 0.9
    lr_scale: float = 1.0

    def __post_init__(self) -> None:
        check_int("policy.hidden", self.hidden)
        check_int("policy.t_max", self.t_max)
        if self.pool is not None:
            check_int("policy.pool", self.pool)
        check_int("policy.seed", self.seed, minimum=0)
        self.power = check_float("policy.power", self.power, above=0.0)
        self.penalty = _nonnegative("policy.penalty", self.penalty)
        self.entropy_bonus = _nonnegative("policy.entropy_bonus", self.entropy_bonus)
        check_choice("policy.baseline", self.baseline, BASELINES)
        self.momentum = _nonnegative("policy.momentum", self.momentum, below=1.0)
        self.lr_scale = check_float("policy.lr_scale", self.lr_scale, above=0.0)


def _nonnegative(name: str, value: object, below: float = float("inf")) -> float:
    """A real number in [0, below), returned as float."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < below:
        raise ValueError(f"{name} must be a number in [0, {below}), got {value!r}")
    return float(value)


def reward(correct: torch.Tensor, steps: torch.Tensor, T: int, power: float = 2.0,
           penalty: float = 1.0) -> torch.Tensor:
    """SEENN-II reward per sample: 1 − (steps/T)^power where ``correct``, else −penalty."""
    gain = 1 - (steps.double() / T) ** power
    return torch.where(correct.bool(), gain, torch.full_like(gain, -penalty))


def prefix_correct(out_seq: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[T, B] bool: is argmax Σ_{k≤t} out[k] the label, for every prefix t."""
    return prefix_logits(out_seq.detach()).argmax(-1) == y.view(1, -1)


@dataclass
class SEENN:
    """Spiking early exit: SEENN-I confidence exits or a SEENN-II policy network (module
    docstring). ``alpha``, ``score``, ``temperature``: SEENN-I's threshold, confidence and softmax
    temperature; ``policy``: SEENN-II's knobs (``PolicyKnobs``); ``freeze_snn``: keep the SNN
    fixed while the policy trains. Distributed: the policy's gradients are averaged by the loop
    (its ``param_groups``); the running baseline, which each rank moves by its own batch's mean
    reward, is averaged over the ranks in ``reduce_`` (the moving mean is linear, so that is
    the same moving mean of the ranks' mean rewards on every rank)."""

    NAME: ClassVar[str] = "seenn"
    PAPER: ClassVar[str] = "Li, Geller, Kim, Panda, NeurIPS 2023 (arXiv 2304.01230)"
    KIND: ClassVar[str] = "time"

    mode: str = "confidence"
    alpha: float = 0.9
    score: str = "max_softmax"
    temperature: float = 1.0
    policy: dict = field(default_factory=dict)
    freeze_snn: bool = True
    baseline_: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64),
                                    init=False, repr=False, compare=False)
    updates_: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        self.alpha = _nonnegative("alpha", self.alpha)
        check_choice("score", self.score, SCORES)
        self.temperature = check_float("temperature", self.temperature, above=0.0)
        if not isinstance(self.freeze_snn, bool):
            raise ValueError(f"freeze_snn must be true or false, got {self.freeze_snn!r}")
        if not isinstance(self.policy, dict):
            raise ValueError(f"policy must be a mapping, got {self.policy!r}")
        known = [f.name for f in dataclasses.fields(PolicyKnobs)]
        unknown = sorted(set(self.policy) - set(known))
        if unknown:
            raise ValueError(f"policy: unknown key(s) {unknown}; known: {known}")
        self.policy = dataclasses.asdict(PolicyKnobs(**self.policy))

    # -- hooks ---------------------------------------------------------------------------------
    def attach(self, model: nn.Module, ctx: Context) -> None:
        """Policy mode: install the (seeded) policy network; freeze the SNN if asked."""
        self._frozen, self._hook = [], None
        if self.mode != "policy":
            return
        in_shape = getattr(model, "in_shape", None)
        if in_shape is None:
            raise ValueError("SEENN mode 'policy' needs a model with .in_shape (one sample's "
                             "input shape), as spikecompress.models builds them")
        knobs = self.policy
        config = {"kind": "policy", "in_shape": list(in_shape), "hidden": knobs["hidden"],
                  "t_max": knobs["t_max"], "pool": knobs["pool"]}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(knobs["seed"])
            policy = install_exit_policy_(model, config)
        if self.freeze_snn:
            own = {id(p) for p in policy.parameters()}
            self._frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in own]
            for p in self._frozen:
                p.requires_grad_(False)
            self._hook = model.register_forward_pre_hook(_snn_in_eval)

    def param_groups(self, model: nn.Module, ctx: Context) -> list[dict]:
        if self.mode != "policy":
            return []
        return [{"params": list(model.exit_policy.parameters()),
                 "lr_scale": self.policy["lr_scale"]}]

    def loss(self, model: nn.Module, x_seq: torch.Tensor, out_seq: torch.Tensor, ctx: Context):
        """SEENN-II's REINFORCE term (module docstring); zero in confidence mode."""
        if self.mode != "policy":
            return zero_loss(out_seq)
        if ctx.y is None:
            raise ValueError("SEENN mode 'policy' needs the labels: call Session.loss(x_seq, "
                             "out_seq, y)")
        T, knobs, policy = int(out_seq.shape[0]), self.policy, model.exit_policy
        if T > policy.t_max:
            raise ValueError(f"SEENN: T = {T} exceeds policy.t_max = {policy.t_max}; raise "
                             "policy.t_max")
        correct = prefix_correct(out_seq, ctx.y.to(out_seq.device))  # [T, B]
        dist = torch.distributions.Categorical(logits=policy.logits(x_seq).float())  # over 1..T
        a = dist.sample()  # [B] in 0..T-1: stop after step a + 1
        r = reward(correct.gather(0, a[None])[0], a + 1, T, knobs["power"], knobs["penalty"])
        b = self._baseline(r)
        advantage = (r - b).to(torch.float32)
        return (-(advantage * dist.log_prob(a)).mean()
                - knobs["entropy_bonus"] * dist.entropy().mean())

    def _baseline(self, r: torch.Tensor) -> torch.Tensor:
        """The baseline for this batch's rewards r [B] (float64); updates the running mean."""
        mean = r.detach().mean()
        if self.policy["baseline"] == "batch":
            return mean
        b = self.baseline_.to(mean.device) if self.updates_ else mean
        m = self.policy["momentum"]
        self.baseline_ = (m * b + (1 - m) * mean).detach()
        self.updates_ += 1
        return b

    def reduce_(self, model: nn.Module, ctx: Context) -> None:
        """Average the running baseline over the ranks (policy mode)."""
        if self.mode == "policy" and self.policy["baseline"] == "running" and self.updates_:
            ctx.comm.mean_(self.baseline_)

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Install the final exit policy (confidence: the α / score / τ module; policy: the
        trained network, already installed); unfreeze the SNN."""
        if getattr(self, "_hook", None) is not None:
            self._hook.remove()
            self._hook = None
        for p in getattr(self, "_frozen", []):
            p.requires_grad_(True)
        self._frozen = []
        if self.mode == "confidence":
            install_exit_policy_(model, {"kind": "confidence", "alpha": self.alpha,
                                        "score": self.score, "temperature": self.temperature})
        elif getattr(model, KEY, None) is None:
            raise RuntimeError("SEENN mode 'policy': the model lost its exit policy")
        return model


def _snn_in_eval(model: nn.Module, args) -> None:
    """Forward pre-hook of a frozen SNN: every module but the exit policy in eval mode."""
    policy = getattr(model, KEY, None)
    keep = {id(m) for m in policy.modules()} if policy is not None else set()
    for m in model.modules():
        if id(m) not in keep:
            m.training = False
