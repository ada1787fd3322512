"""Distributed checks of the method updates that the default contract run does not reach.

``distributed_contract`` trains every method with its defaults for 2 epochs of 3 steps on data
whose shards look alike: a rewiring every 100 steps, a policy-mode reward, a first batch whose
range differs between the ranks, a rank without training rows or a global RNG that differs at
attach never happen there. ``CASES`` names, per case, the method, the knobs and the condition
that make its rank-dependent state move within such a run; ``check_cases`` runs them under the
process group already running (``distributed_contract.spawn``) through the real Trainer with
``Session(verify=True)``, so a state that differs between the ranks raises ``StateDivergence``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.distributed as dist

from spikecompress.compress.contract import tiny_model
from spikecompress.compress.session import attach
from spikecompress.data import load_data
from spikecompress.train.config import TrainConfig
from spikecompress.train.distributed_contract import CONTRACT_DATA, resolve
from spikecompress.train.trainer import Trainer

SCALE = 2.5  # rank >= 1 multiplies its inputs: another range (and grid) than rank 0's
SMALL_SEARCH = {"iterations": 2, "population": 4, "mutations": 2, "crossovers": 2, "top_k": 2}

# case → (method, knobs, condition): "scale" (rank >= 1's inputs times SCALE), "reseed" (the
# global RNG seeded by rank before attach, as in a later stage of a run) or None
CASES: dict[str, tuple[str, dict, str | None]] = {
    "esl_gradient_growth": ("esl", {"rewire": {"update_every": 2}}, None),
    "sca_dense_regrow": ("sca", {"corrections": {"dense_regrow": True}}, None),
    "sdsnn_checks": ("sdsnn", {"update_every": 1}, None),
    "uniform_quant_membrane": ("uniform_quant", {"membrane_bits": 4}, "scale"),
    "mint_input_scale": ("mint", {}, "scale"),
    "istbp_input_exponent": ("istbp", {}, "scale"),
    "istbp_sgd": ("istbp", {"update": "sgd"}, None),
    "ann_conversion_subsample": ("ann_conversion", {"samples": 64}, None),
    "tsc_subsample": ("tsc", {"samples": 64}, None),
    "ttfs_subsample": ("ttfs", {"samples": 64}, None),
    "seenn_policy": ("seenn", {"mode": "policy", "freeze_snn": False}, None),
    "seenn_policy_frozen": ("seenn", {"mode": "policy"}, None),  # nothing for DDP to wrap
    "autosnn_held_rows": ("autosnn", {"search_fraction": 0.98, **SMALL_SEARCH}, None),
    # a pair of unequal widths: an adapter with parameters (equal widths: the identity)
    "kdsnn_adapters": ("kdsnn", {"features": [["features.0.act", "features.1.act"]]}, "reseed"),
}


class ScaledLoader:
    """A loader whose inputs are multiplied by ``factor`` (every other attribute: the loader's)."""

    def __init__(self, loader, factor: float) -> None:
        self.loader, self.factor = loader, factor

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return ((x_seq * self.factor, y) for x_seq, y in self.loader)


def run_case(method: str, knobs: dict, condition: str | None, epochs: int = 2) -> None:
    """Train ``method(**knobs)`` on the contract's tiny conv net and data under ``condition``,
    verifying agreement after every step and after finalize."""
    rank, world = dist.get_rank(), dist.get_world_size()
    data = load_data(CONTRACT_DATA, rank, world)
    if condition == "scale" and rank:
        data = replace(data, train=ScaledLoader(data.train, SCALE))
    torch.manual_seed(0)
    model = tiny_model(method, "conv_net")
    if condition == "reseed":
        torch.manual_seed(rank)
    session = attach(model, [resolve(method)(**knobs)], stage=method, verify=True)
    cfg = TrainConfig(epochs=epochs, lr=1e-2, schedule="constant")
    Trainer(model, data, cfg, session=session, verbose=False).fit()
    session.finalize()


def check_cases(names: list[str]) -> dict[str, str | None]:
    """Every case of ``names`` (keys of ``CASES``) in turn: None when it passed, else its error's
    first line."""
    results: dict[str, str | None] = {}
    for name in names:
        try:
            run_case(*CASES[name])
            results[name] = None
        except Exception as e:  # noqa: BLE001 - reported per case, the next one still runs
            first = (str(e).strip().splitlines() or [""])[0]
            results[name] = f"{type(e).__name__}: {first}"
    return results
