"""The scaled-form ADMM loop that ADMM pruning (``prune/admm.py``) and ADMM quantization
(``quant/admm_quant.py``) share (Deng et al., IEEE TNNLS 2021); not a method itself.

Problem: min L(W) s.t. W_l ∈ S_l, with the Euclidean projection Proj_S given by the method. For
the first ``admm_until`` fraction of the stage (the ADMM phase) the loss gets the coupling

    "squared":  (ρ/2) · Σ_l ‖R_l‖²_F   ∂/∂W_l = ρ R_l
    "norm":     ρ · Σ_l ‖R_l‖_F        ∂/∂W_l = ρ R_l / ‖R_l‖_F
                with the residual R_l = W_l − Z_l + U_l

and every ``update_every`` optimizer steps (0: once per epoch, ``ctx.steps_per_epoch``):

    Z-step  Z ← Proj_S(W + U)
    U-step  U ← U + W − Z

with Z = Proj_S(W), U = 0 at attach. When ``ctx.progress`` reaches ``admm_until`` the method's own
hard projection runs (a mask for pruning, a fixed grid for quantization: that part differs).

``ADMMLoop`` is a mixin for such a method's dataclass. The method declares the knobs ``rho``,
``coupling``, ``admm_until``, ``update_every`` and the runtime fields ``targets_`` (the modules
whose ``weight`` is constrained), ``z_`` and ``u_`` (lists of tensors, one per target, which
``Session.state_dict`` checkpoints under the method's own keys), and implements
``_project(tensors) -> tensors``: Proj_S of all the targets' tensors at once (a global budget
couples the layers).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from spikecompress.compress.method import Context

COUPLINGS = ("squared", "norm")


class ADMMLoop:
    """Z / U bookkeeping, coupling loss and Z/U schedule; see the module docstring."""

    def _project(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

    def _check_admm_knobs(self) -> None:
        """ValueError naming the field for a bad ``rho``, ``coupling``, ``admm_until`` or
        ``update_every``."""
        if not _number(self.rho) or not 0 <= self.rho < float("inf"):
            raise ValueError(f"rho must be a number >= 0, got {self.rho!r}")
        if self.coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {list(COUPLINGS)}, got {self.coupling!r}")
        if not _number(self.admm_until) or not 0 < self.admm_until <= 1:
            raise ValueError(f"admm_until must be in (0, 1], got {self.admm_until!r}")
        if not is_count(self.update_every):
            raise ValueError(f"update_every must be an int >= 0, got {self.update_every!r}")

    @torch.no_grad()
    def _admm_start(self) -> None:
        """Z ← Proj(W), U ← 0 (at attach)."""
        ws = [m.weight.detach() for m in self.targets_]
        self.z_ = self._project(ws)
        self.u_ = [torch.zeros_like(w) for w in ws]

    def coupling_loss(self) -> torch.Tensor:
        """(ρ/2) Σ ‖W − Z + U‖² ("squared") or ρ Σ ‖W − Z + U‖_F ("norm"), differentiable in W."""
        ws = [m.weight for m in self.targets_]
        self._follow(ws[0].device)
        res = [w - z + u for w, z, u in zip(ws, self.z_, self.u_, strict=True)]
        if self.coupling == "squared":
            return 0.5 * self.rho * sum(r.pow(2).sum() for r in res)
        return self.rho * sum(torch.linalg.vector_norm(r) for r in res)

    @torch.no_grad()
    def admm_update(self) -> None:
        """Z ← Proj(W + U), then U ← U + W − Z (the scaled dual accumulates the residual)."""
        ws = [m.weight.detach() for m in self.targets_]
        self._follow(ws[0].device)
        self.z_ = self._project([w + u for w, u in zip(ws, self.u_, strict=True)])
        self.u_ = [u + w - z for u, w, z in zip(self.u_, ws, self.z_, strict=True)]

    def _admm_advance(self, ctx: Context, harden: Callable[[], None]) -> None:
        """After an optimizer step of the ADMM phase: ``harden()`` (the method's hard projection)
        once ``ctx.progress ≥ admm_until``; before that, a Z/U step on schedule."""
        if ctx.progress >= self.admm_until:
            harden()
        elif ctx.step % self._period(ctx) == 0:
            self.admm_update()

    def _period(self, ctx: Context) -> int:
        if self.update_every:
            return self.update_every
        if not ctx.steps_per_epoch:
            raise RuntimeError(
                f"{self.NAME}: update_every=0 updates Z/U once per epoch and needs "
                "ctx.steps_per_epoch: call session.bind(optimizer, ..., "
                "steps_per_epoch=...) or set update_every"
            )
        return ctx.steps_per_epoch

    def _follow(self, device: torch.device) -> None:
        """Keep Z and U on the weights' device (the Trainer moves the model after attach)."""
        if self.z_[0].device != device:
            self.z_ = [z.to(device) for z in self.z_]
            self.u_ = [u.to(device) for u in self.u_]


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def is_count(x: object) -> bool:
    """An int >= 0 (not a bool)."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0
