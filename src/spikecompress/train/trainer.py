"""The Trainer: the CLI's one BPTT loop. Nothing method-specific lives here.

It trains a model on ``Data`` loaders with a ``TrainConfig``, evaluates after every epoch, shows a
rich progress bar, and checkpoints atomically into ``out_dir`` so a killed run resumes and ends with
the same weights as an uninterrupted one. A compression ``Session``
(``spikecompress.compress.attach``) rides along: the Trainer calls ``param_groups``, ``bind``,
``loss``, ``after_step`` and ``state_dict`` / ``load_state_dict``, nothing method-specific; a
method that trains the model itself (``Session.has_train_step``, e.g. integer-only training)
replaces the forward / backward / optimizer step of each batch with ``Session.train_step``.
Distributed (under ``torchrun``, see ``train.distributed``): the model trains wrapped in DDP, each
rank on its own shard of the data (``load_data(cfg, rank, world_size)``), with its own seed
(``seed + rank``, for dropout and Poisson spikes); the session's methods agree through their
``reduce_`` hooks; the parameters in the methods' own optimizer groups stay out of DDP (a method
may use them outside the forward) and the Trainer averages their gradients itself; the logged
loss and accuracy are means over the ranks (so a NaN on one rank stops all); BatchNorm buffers
are taken from rank 0 before every evaluation and checkpoint (or synchronised at every step with
``cfg.sync_batchnorm``). Only rank 0 logs and writes; every rank resumes from the same
checkpoint, which holds every rank's RNG state.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from spikecompress.collectives import Collectives
from spikecompress.measurement.accuracy import autocast, evaluate
from spikecompress.snn.layers import reset_state
from spikecompress.snn.losses import task_loss
from spikecompress.train import checkpoint as ckpt
from spikecompress.train.config import TrainConfig
from spikecompress.train.distributed import sync_buffers_, wrap
from spikecompress.train.divergence import DivergenceGuard
from spikecompress.train.loop import cosine_lr, make_optimizer
from spikecompress.train.progress import Progress
from spikecompress.train.seeding import rng_state, seed_everything, set_rng_state
from spikecompress.train.sync_batchnorm import sync_batchnorm_

if TYPE_CHECKING:  # the type only: importing it would load every method with the Trainer
    from spikecompress.compress.session import Session


class Trainer:
    """Train ``model`` on ``data`` (``spikecompress.data.Data``) following ``cfg``.

    ``meta`` is stored in every checkpoint (the model spec and data config, so ``eval`` can rebuild
    both). ``out_dir=None`` trains without checkpoints.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        cfg: TrainConfig,
        out_dir: str | Path | None = None,
        session: Session | None = None,
        meta: dict | None = None,
        verbose: bool = True,
    ) -> None:
        self.cfg, self.data, self.session = cfg, data, session
        self.comm = Collectives()
        self.rank = self.comm.rank
        _check_shard(data.train, self.comm)
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {cfg.device!r} requested but CUDA is not available here")
        self.model = model.to(self.device)
        if session is not None:
            session.ctx.comm = self.comm  # the methods' collectives, counted with the Trainer's
        self.unsync_bn = sync_batchnorm_(model, self.comm) if cfg.sync_batchnorm else None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.meta = dict(meta or {})
        groups = session.param_groups() if session is not None else []
        self.opt = make_optimizer(
            model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, groups
        )
        # the methods' own parameters (in the model or not) stay out of DDP, which could not
        # follow their use outside the forward; the Trainer averages their gradients itself
        self.extra_params = [p for g in groups for p in g["params"]]
        self.ddp, self.traffic = wrap(self.model, self.device, self.extra_params)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and self.device.type == "cuda")
        self.steps_per_epoch = len(data.train)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if session is not None:
            session.bind(self.opt, self._lr_at, self.total_steps, self.steps_per_epoch,
                         cfg.loss)
        self.step, self.history = 0, []
        self.progress = Progress(enabled=verbose and self.rank == 0)
        where = self.meta.get("stage") and f"stage {self.meta['stage']!r}"
        self.guard = DivergenceGuard(where or str(self.out_dir or "training"))

    # -- checkpoints ---------------------------------------------------------------------------
    def _save(self) -> None:
        """Checkpoint (rank 0, with an ``out_dir``) once the weights are known finite: a diverged
        model never replaces the last good checkpoint."""
        self.guard.weights(self.model, self.step // max(self.steps_per_epoch, 1), self.step)
        if self.out_dir is None:
            return
        sync_buffers_(self.model, self.comm)  # every rank holds what the checkpoint holds
        rngs = self.comm.gather_object(rng_state())  # each rank resumes its own random stream
        if self.rank != 0:
            return
        opt_tensors, opt_meta = ckpt.optimizer_to_flat(self.opt)
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update(opt_tensors)
        for r, state in enumerate(rngs):
            tensors.update({_rng_key(k, r, len(rngs)): v for k, v in state.items()})
        session_scalars = None
        if self.session is not None:
            session_tensors, session_scalars = self.session.state_dict()
            tensors.update({f"session.{k}": v for k, v in session_tensors.items()})
        meta = {
            **self.meta,
            "epoch": self.step // self.steps_per_epoch if self.steps_per_epoch else 0,
            "step": self.step,
            "train": self.cfg.to_dict(),
            "history": self.history,
            "optimizer": opt_meta,
            "grad_scale": self.scaler.get_scale() if self.scaler.is_enabled() else None,
            "session": session_scalars,
            "world_size": self.comm.world_size,
        }
        ckpt.save_checkpoint(self.out_dir, tensors, meta)

    def _resume(self) -> bool:
        if self.out_dir is None or not (self.out_dir / ckpt.POINTER).exists():
            return False
        saved_world = ckpt.read_pointer(self.out_dir).get("world_size", 1)
        if saved_world != self.comm.world_size:
            raise ckpt.CheckpointError(
                f"checkpoint in {self.out_dir} was written by a run of {saved_world} "
                f"process(es), this one has {self.comm.world_size}: resume it with the same "
                f"number of processes (torchrun --nproc-per-node / --nnodes), or use a new --out")
        tensors, meta = ckpt.load_checkpoint(self.out_dir)
        model_sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.model.load_state_dict(model_sd)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            msg = f"checkpoint in {self.out_dir} does not fit the model: {first}"
            raise ckpt.CheckpointError(msg) from None
        self.opt.load_state_dict(ckpt.optimizer_from_flat(tensors, meta["optimizer"]))
        mine = {k.split(".", 1)[1] if saved_world > 1 else k: v for k, v in tensors.items()
                if k.startswith(_rng_key("rng.", self.rank, saved_world))}
        set_rng_state(mine)
        if self.session is not None and meta.get("session") is not None:
            n = len("session.")
            saved = {k[n:]: v for k, v in tensors.items() if k.startswith("session.")}
            self.session.load_state_dict(saved, meta["session"])
        if self.session is not None:  # schedules are functions of the step: give it back
            self.session.ctx.step = meta["step"]
            self.session.ctx.progress = min(meta["step"] / max(self.total_steps, 1), 1.0)
        if meta.get("grad_scale") and self.scaler.is_enabled():
            self.scaler.update(meta["grad_scale"])
        self.step, self.history = meta["step"], meta["history"]
        return True

    # -- the loop ------------------------------------------------------------------------------
    def _train_step(self, x_seq: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        if self.session is not None and self.session.has_train_step:
            loss, out_seq = self.session.train_step(x_seq, y)  # lr: ctx.lr_at (Session.bind)
        else:
            loss, out_seq = self._float_step(x_seq, y)
        self.step += 1
        if self.session is not None:
            self.session.after_step(
                progress=self.step / max(self.total_steps, 1),
                epoch=(self.step - 1) // max(self.steps_per_epoch, 1),
            )
        reset_state(self.model)
        acc = (out_seq.detach().float().mean(0).argmax(1) == y).float().mean().item()
        if not self.comm.distributed:
            return loss, acc
        both = torch.tensor([loss, acc], dtype=torch.float64, device=self.device)
        self.comm.mean_(both)  # the global batch's figures; a NaN on any rank reaches every rank
        return float(both[0]), float(both[1])

    def _float_step(self, x_seq: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The loop's own step: forward, task loss (+ the session's terms), backward, optimizer
        step; returns (loss, out_seq)."""
        lr = self._lr_at(self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        with autocast(self.device, self.cfg.amp):
            out_seq = self.ddp(x_seq)  # [T, B, classes]
            loss = task_loss(out_seq, y, self.cfg.loss)
            if self.session is not None:
                loss = loss + self.session.loss(x_seq, out_seq, y)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.comm.distributed and self.extra_params:
            # which parameters got a gradient is a function of the step (a search phase that
            # ended), the same on every rank; the agreement check catches it if it were not
            grads = [p.grad for p in self.extra_params if p.grad is not None]
            self.comm.mean_(*grads)
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss.item(), out_seq

    def _lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (a pure function of it)."""
        if self.cfg.schedule == "constant":
            return self.cfg.lr
        return cosine_lr(self.cfg.lr, step, self.total_steps)

    def _run_epoch(self, epoch: int) -> dict:
        loader = self.data.train
        loader.set_epoch(epoch)
        skip = self.step - epoch * self.steps_per_epoch  # batches already done before a resume
        self.model.train()
        loss_sum = acc_sum = 0.0
        n = 0
        for i, (x_seq, y) in enumerate(loader):
            if i < skip:
                continue  # iterating (not slicing) replays the loader's RNG exactly
            loss, acc = self._train_step(x_seq.to(self.device), y.to(self.device))
            if not self.cfg.amp:  # under AMP the scaler skips inf steps by design
                self.guard.loss(loss, epoch, self.step)
            loss_sum, acc_sum, n = loss_sum + loss, acc_sum + acc, n + 1
            self.progress.advance(loss=loss, acc=acc)
            if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                self._save()
        return {"train_loss": loss_sum / max(n, 1), "train_accuracy": acc_sum / max(n, 1)}

    def fit(self, resume: bool = True) -> dict:
        """Train (resuming from ``out_dir`` when it holds a checkpoint); returns final metrics."""
        seed_everything(self.cfg.seed, self.rank)
        resumed = resume and self._resume()
        start, first_step = time.perf_counter(), self.step
        first_epoch = self.step // self.steps_per_epoch if self.steps_per_epoch else 0
        with self.progress.run(self.cfg.epochs, self.steps_per_epoch, self.step):
            for epoch in range(first_epoch, self.cfg.epochs):
                began = time.perf_counter()
                train_stats = self._run_epoch(epoch)
                train_stats["epoch_s"] = time.perf_counter() - began
                sync_buffers_(self.model, self.comm)
                test = evaluate(self.model, self.data.test, self.device, self.cfg.amp)
                row = {"epoch": epoch + 1, **train_stats, "test_accuracy": test["accuracy"]}
                row["firing_rate"] = test["firing_rate"]
                self.history.append(row)
                self.progress.epoch_done(row)
                self._save()
        if self.unsync_bn is not None:
            self.unsync_bn()
        sync_buffers_(self.model, self.comm)
        final = evaluate(self.model, self.data.test, self.device, self.cfg.amp)
        accs = [r["test_accuracy"] for r in self.history]
        final.update(
            epochs=self.cfg.epochs,
            best_accuracy=max(accs, default=final["accuracy"]),
            wall_s=time.perf_counter() - start,
            resumed=resumed,
            history=self.history,
        )
        if self.comm.distributed:
            steps = max(self.step - first_step, 1)
            final["distributed"] = {
                "world_size": self.comm.world_size,
                "gradient_bytes_per_step": self.traffic.bytes_sent / steps,
                "other_collective_bytes_per_step": self.comm.bytes_sent / steps,
            }
        return final


def _rng_key(key: str, rank: int, world_size: int) -> str:
    """A checkpoint key of ``rank``'s RNG state (one process: the key itself)."""
    return key if world_size == 1 else f"rank{rank}.{key}"


def _check_shard(loader, comm: Collectives) -> None:
    """The training loader must be this rank's shard: ``load_data(cfg, rank, world_size)``."""
    got = (getattr(loader, "rank", 0), getattr(loader, "world_size", 1))
    if got != (comm.rank, comm.world_size):
        raise ValueError(f"data: the training loader is shard {got[0]} of {got[1]}, but this is "
                         f"rank {comm.rank} of {comm.world_size}: load it with "
                         f"load_data(cfg, rank, world_size)")
