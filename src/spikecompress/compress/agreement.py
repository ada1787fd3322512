"""Checking, not trusting, that every rank holds the same method state (the distributed contract).

After any update every rank must hold identical weights, masks, gates, channel choices, codebooks,
dual variables and policies. ``check_agreement`` all-gathers a hash of every tensor of the model's
state dict and of the session's runtime state and names the first one that differs.
"""

from __future__ import annotations

from torch import nn

from spikecompress.collectives import Collectives, fingerprint
from spikecompress.compress.method import method_name

# BatchNorm running statistics follow each rank's own shard between the Trainer's buffer syncs
# (before every evaluation, checkpoint and finalize); they never steer training
LOCAL_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class StateDivergence(AssertionError):
    """A method's state differs across ranks: it lacks (or has a wrong) ``reduce_`` hook."""


def state_fingerprints(model: nn.Module, session) -> dict[str, str]:
    """Hashes of the model's state (BN running statistics aside) and of every method's runtime
    fields, keyed ``model.<name>`` and ``<method>.<field>``."""
    prints = {f"model.{k}": fingerprint(v) for k, v in model.state_dict().items()
              if k.rsplit(".", 1)[-1] not in LOCAL_BUFFERS}
    if session is None:
        return prints
    names = [method_name(m) for m in session.methods]
    tensors, scalars = session.state_dict()
    for key, value in tensors.items():
        i, rest = key.split(".", 1)
        prints[f"{names[int(i)]}.{rest}"] = fingerprint(value)
    for key, value in scalars.items():
        i, rest = key.split(".", 1)
        prints[f"{names[int(i)]}.{rest}"] = repr(value)
    return prints


def check_agreement(model: nn.Module, session, comm: Collectives, where: str) -> None:
    """Raise ``StateDivergence`` naming the first state that differs between rank 0 and another
    rank (every rank raises, so none waits for the others in a later collective)."""
    every = comm.gather_object(state_fingerprints(model, session))
    mine = every[0]
    for rank, other in enumerate(every[1:], start=1):
        for key in sorted(set(mine) | set(other)):
            if mine.get(key) != other.get(key):
                raise StateDivergence(f"{where}: {key} differs between rank 0 and rank {rank}; "
                                      f"the method's reduce_ hook must make it agree")
