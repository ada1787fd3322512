"""The spatio-temporal pipeline (issue 8, Chowdhury, Garg & Roy, IJCNN 2021) measured as the paper
reports it: every stage's row (accuracy, params, bytes on disk, T, SOPs, L0 / L1 energy), the
compression factors in parameters and bytes, compute energy against the ANN twin, accuracy under
Gaussian input noise against the ANN twin, and accuracy vs weight bits (8 → 2, uniform and
k-means).

    python benchmarks/spatio_temporal.py run       # runs/bench_spatio_temporal/, resumable
    python benchmarks/spatio_temporal.py table     # docs/benchmarks_spatio_temporal.md

Runs: the shipped recipe ``spatio_temporal`` (k-means, 32 shared values = 5 bits); the uniform
5-bit quantization stage and the bit sweep as one-stage runs from the recipe's T = 1 artifact
(same 5 epochs each); the ANN twin (ReLU, the dense widths, max pooling) trained with the dense
stage's settings on the same frames at T = 1 (one frame holding the whole recording). Noise: the
test frames plus N(0, (σ·s)²) per element, s the std of the clean test frames at that T, one
fixed noise draw per σ shared by every model run at the same T.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from spikecompress.data import load_data
from spikecompress.export import load
from spikecompress.run.recipe import Recipe
from spikecompress.run.recipe_files import load_recipe
from spikecompress.run.stages import run_recipe
from spikecompress.snn.layers import reset_state
from spikecompress.train import set_threads

ROOT = Path("runs/bench_spatio_temporal")
SIGMAS = (0.0, 0.25, 0.5, 1.0, 1.5)
BITS = (8, 7, 6, 5, 4, 3, 2)


def _one_stage(name: str, init: Path, method: dict, T: int = 1, epochs: int = 5) -> Recipe:
    base = load_recipe("spatio_temporal")
    stage = {"name": name, "T": T, "epochs": epochs, "init": str(init.resolve()),
             "optimizer": {"name": "adam", "lr": 5e-4}, "methods": [method] if method else []}
    return Recipe.from_dict({"version": 1, "seed": 0, "model": base.model,
                             "data": vars(base.data), "stages": [stage]})


def _ann_recipe() -> Recipe:
    base = load_recipe("spatio_temporal")
    dense = base.stages[0]
    stage = {"name": "ann", "T": 1, "epochs": dense.epochs, "optimizer": vars(dense.optimizer)}
    return Recipe.from_dict({"version": 1, "seed": 0, "model": {**base.model, "spiking": False},
                             "data": vars(base.data), "stages": [stage]})


def run() -> None:
    main_run = run_recipe(load_recipe("spatio_temporal"), ROOT / "kmeans", verbose=True)
    t1 = ROOT / "kmeans/stages/4-T1/artifact"
    run_recipe(_one_stage("uniform", t1, {"name": "uniform_quant", "weight_bits": 5}),
               ROOT / "uniform5", verbose=False)
    for b in BITS:
        run_recipe(_one_stage(f"uniform{b}", t1, {"name": "uniform_quant", "weight_bits": b}),
                   ROOT / f"bits/uniform{b}", verbose=False)
        run_recipe(_one_stage(f"kmeans{b}", t1, {"name": "weight_sharing", "clusters": 2**b}),
                   ROOT / f"bits/kmeans{b}", verbose=False)
    run_recipe(_ann_recipe(), ROOT / "ann", verbose=False)
    noise = _noise_rows(main_run)
    (ROOT / "noise.json").write_text(json.dumps(noise, indent=1))


@torch.no_grad()
def noisy_accuracy(model, loader, sigma: float, scale: float, seed: int = 0) -> float:
    """Accuracy on ``loader``'s test batches plus Gaussian noise of std ``sigma · scale``."""
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    correct = total = 0
    for x_seq, y in loader:
        noisy = x_seq + torch.randn(x_seq.shape, generator=gen) * sigma * scale
        correct += int((model(noisy).mean(0).argmax(1) == y).sum())
        reset_state(model)
        total += len(y)
    return correct / total


def _noise_rows(main_run: dict) -> dict:
    base = load_recipe("spatio_temporal")
    models = {  # name -> (artifact, T)
        "dense SNN (T=5)": (ROOT / "kmeans/stages/0-dense/artifact", 5),
        "final SNN (T=1, 5-bit)": (ROOT / "kmeans/artifact", 1),
        "ANN twin": (ROOT / "ann/artifact", 1),
    }
    rows: dict[str, dict] = {}
    for name, (folder, T) in models.items():
        data = load_data(replace(base.data, T=T))
        scale = float(torch.cat([x for x, _ in data.test], dim=1).std())  # [T, N, ...]
        model = load(folder)
        rows[name] = {str(s): noisy_accuracy(model, data.test, s, scale) for s in SIGMAS}
    return rows


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def table(out: Path) -> None:
    stages = sorted((ROOT / "kmeans/stages").iterdir(), key=lambda p: int(p.name.split("-")[0]))
    rows = [(p.name.split("-", 1)[1], _metrics(p)) for p in stages]
    rows.append(("quant (uniform 5-bit)", _metrics(ROOT / "uniform5")))
    ann = _metrics(ROOT / "ann")
    dense = rows[0][1]
    lines = ["# The spatio-temporal pipeline on event digits", "",
             "`python benchmarks/spatio_temporal.py run`, then `python benchmarks/"
             "spatio_temporal.py table`. One seed, 1 thread. Factors are against the dense SNN.",
             "", "| stage | accuracy | params | params × | bytes on disk | bytes × | bits | T | "
             "SOPs/sample | MACs/sample | L0 nJ | L1 nJ | dense ANN / SNN (L0) | "
             "same-widths ANN / SNN (L0) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in [*rows, ("ANN twin (dense widths)", ann)]:
        e0, e1 = m["energy_pj_per_sample"]["L0"] / 1e3, m["energy_pj_per_sample"]["L1"] / 1e3
        lines.append(
            f"| {name} | {100 * m['accuracy']:.2f}% | {m['params']:,} | "
            f"{dense['params'] / m['params']:.1f} | {m['size_bytes']:,} | "
            f"{dense['size_bytes'] / m['size_bytes']:.1f} | {m['weight_bits']} | "
            f"{m['time_steps']} | {m['sops_per_sample']:,.0f} | {m['macs_per_sample']:,.0f} | "
            f"{e0:.1f} | {e1:.1f} | {ann['energy_pj_per_sample']['L0'] / 1e3 / e0:.1f} | "
            f"{m['ann_energy_pj_per_sample']['L0'] / 1e3 / e0:.1f} |")
    lines += ["", "## Accuracy under Gaussian input noise (σ in units of the clean frames' std)",
              "", "| model | " + " | ".join(f"σ={s}" for s in SIGMAS) + " |",
              "|---|" + "---|" * len(SIGMAS)]
    for name, accs in json.loads((ROOT / "noise.json").read_text()).items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * a:.2f}%" for a in accs.values()) + " |")
    lines += ["", "## Accuracy vs weight bits (from the T = 1 model, 5 epochs each)", "",
              "| bits | uniform | bytes | k-means (2^b values) | bytes |", "|---|---|---|---|---|"]
    for b in BITS:
        u, k = _metrics(ROOT / f"bits/uniform{b}"), _metrics(ROOT / f"bits/kmeans{b}")
        lines.append(f"| {b} | {100 * u['accuracy']:.2f}% | {u['size_bytes']:,} | "
                     f"{100 * k['accuracy']:.2f}% | {k['size_bytes']:,} |")
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=("run", "table"))
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks_spatio_temporal.md"))
    args = ap.parse_args()
    set_threads(1)
    if args.cmd == "run":
        run()
    else:
        table(args.out)


if __name__ == "__main__":
    main()
