"""Structured pruning family (issue 7): SCA (code default and with our corrections), network
slimming, PCA widths, SD-SNN and the L1-filter-norm baseline, from the dense checkpoints of
benchmarks/unstructured.py, at 50 / 70 / 90 % channel removal; accuracy, channels, parameters,
SOPs, bytes on disk and CPU latency of the physically pruned model. One JSON per run, then a table.

    python benchmarks/structured.py run --task w64 --variant sca@0.7 --seed 0
    python benchmarks/structured.py table            # docs/benchmarks_structured.md

Tasks (shared with unstructured.py, same dense checkpoints): ``w64`` = MNIST-1D conv1d_net
[64, 64, 64], ``events`` = event digits conv_net [16, 32, 64]; T = 4. Budget after the dense
checkpoint: ``--epochs`` (default 45) epochs of Adam lr 1e-3, cosine, split into the method's
stage (2/3: SCA, slimming, SD-SNN train with their method attached; its finalize removes the
channels) and a fine-tuning stage of the physically smaller model (1/3). The L1-filter baseline
removes its channels at the start and fine-tunes for all 45 epochs. PCA widths decide the widths
from one epoch of the dense model's membrane statistics, then train the smaller model from
scratch for the dense schedule (its paper's flow). Knobs: the removed channel fraction r (SCA,
slimming, L1), the explained-variance threshold (PCA), count_thre (SD-SNN: its rate is adaptive,
it cannot be targeted). Latency: 1 thread, batch 1 and 64, median of 20.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from spikecompress.compress import METHODS, attach
from spikecompress.data import DataConfig, load_data
from spikecompress.export import save
from spikecompress.measurement import measure
from spikecompress.train import TrainConfig, Trainer, seed_everything, set_threads
from unstructured import TASKS, dense_model

ROOT = Path("runs/bench_structured")


def _sca(r: float, corrections: dict):
    keep = 1 - r
    beta = keep / 9  # the code's default ratio α : β = 0.8 : 0.1
    return METHODS["sca"](alpha=keep - beta, beta=beta, corrections=corrections)


ALL_FIXES = {"after_bn": True, "dense_regrow": True, "gradual": True, "floor": 0.05}


def method_for(variant: str):
    """``name@knob`` → the method instance (see the module docstring for the knobs)."""
    name, _, knob = variant.partition("@")
    k = float(knob) if knob else None
    table = {
        "l1": lambda: METHODS["l1_filter"](channel_sparsity=k),
        # penalty 1e-4 moves no γ here; the paper's one global |γ| threshold
        "slimming": lambda: METHODS["slimming"](channel_sparsity=k, penalty=3e-3, scope="global"),
        "sca": lambda: _sca(k, {}),  # the authors' code
        "sca_bn": lambda: _sca(k, {"after_bn": True}),  # + masks after BN at every step
        "sca_fixed": lambda: _sca(k, ALL_FIXES),  # + dense γ regrowth, gradual, 5 % floor
        "pca": lambda: METHODS["pca_width"](variance=k, collect=1.0, init="scratch"),
        "sdsnn": lambda: METHODS["sdsnn"](count_thre=int(k)),
    }
    if name not in table:
        raise SystemExit(f"--variant: unknown method {name!r}; one of {sorted(table)}")
    return table[name]()


def _train(model, data, epochs: int, lr: float, seed: int, session=None):
    if epochs > 0:
        cfg = TrainConfig(epochs=epochs, lr=lr, seed=seed)
        Trainer(model, data, cfg, session=session, verbose=False).fit()
    return model


def compress(task: str, variant: str, data, dense, seed: int, epochs: int):
    """The physically pruned, fine-tuned model of ``variant``."""
    seed_everything(seed)
    model = copy.deepcopy(dense)
    name = variant.partition("@")[0]
    method_epochs = {"l1": 0, "pca": 1}.get(name, round(epochs * 2 / 3))
    session = attach(model, [method_for(variant)])
    _train(model, data, method_epochs, 1e-3 if name != "pca" else 1e-9, seed, session)
    model = session.finalize()
    if name == "pca":  # the smaller model trained again from scratch, the dense schedule
        return _train(model, data, TASKS[task][3], TASKS[task][4], seed)
    return _train(model, data, epochs - method_epochs, 1e-3, seed)


def channels(model) -> int:
    """Channels of every conv / hidden layer (the summed spec widths)."""
    spec = model.spec
    widths = [w for w in spec["widths"] if w != "M"] + list(spec.get("hidden", []))
    return sum(widths) + sum(sum(s) for s in spec.get("inner_widths", []))


def run(task: str, variant: str, seed: int, epochs: int) -> Path:
    out = ROOT / task / f"{variant}-s{seed}.json"
    if out.is_file():
        return out
    data = load_data(DataConfig(**{**TASKS[task][0], "seed": seed}))
    dense = dense_model(task, data)
    t0 = time.perf_counter()
    model = dense if variant == "dense" else compress(task, variant, data, dense, seed, epochs)
    wall = time.perf_counter() - t0
    model.eval()
    path = save(model, ROOT / task / "artifacts" / f"{variant}-s{seed}")
    m = measure(model, data, artifact=path).to_dict()
    row = {
        "task": task, "variant": variant, "seed": seed, "epochs": epochs, "wall_s": wall,
        "widths": model.spec["widths"], "channels": channels(model),
        "dense_channels": channels(dense), "accuracy": m["accuracy"], "params": m["params"],
        "sops_per_sample": m["sops_per_sample"], "size_bytes": m["size_bytes"],
        "latency_ms": m["latency_ms"], "energy_pj": dict(m["energy_pj_per_sample"]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=1))
    print(json.dumps({k: row[k] for k in ("task", "variant", "accuracy", "channels", "params",
                                           "sops_per_sample", "wall_s")}))
    return out


def table(out: Path) -> None:
    rows: dict[str, list[dict]] = {}
    for f in sorted(ROOT.glob("*/*.json")):
        row = json.loads(f.read_text())
        rows.setdefault(row["task"], []).append(row)
    lines = []
    for task, runs in rows.items():
        dense = next(r for r in runs if r["variant"] == "dense")
        lines += [f"### {task}", "", "| variant | accuracy % | Δ pp | channels kept | params kept "
                  "| SOPs ÷ dense | bytes | ms/sample b=1 | ms/sample b=64 | widths |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(runs, key=lambda r: (-r["channels"], r["variant"])):
            lines.append(
                f"| {r['variant']} | {100 * r['accuracy']:.2f} | "
                f"{100 * (r['accuracy'] - dense['accuracy']):+.2f} | "
                f"{r['channels'] / dense['channels']:.0%} | {r['params'] / dense['params']:.1%} "
                f"| 1/{dense['sops_per_sample'] / max(r['sops_per_sample'], 1):.1f} | "
                f"{r['size_bytes']:,} | {r['latency_ms']['batch_1']:.2f} | "
                f"{r['latency_ms']['batch_64']:.3f} | {r['widths']} |")
        lines.append("")
    out.write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--task", choices=sorted(TASKS), required=True)
    r.add_argument("--variant", required=True, help="dense, or method@knob, e.g. sca@0.7")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--epochs", type=int, default=45)
    r.add_argument("--threads", type=int, default=1)
    t = sub.add_parser("table")
    t.add_argument("--out", default="docs/benchmarks_structured.md")
    args = ap.parse_args()
    if args.cmd == "run":
        set_threads(args.threads)
        torch.manual_seed(args.seed)
        run(args.task, args.variant, args.seed, args.epochs)
    else:
        table(Path(args.out))


if __name__ == "__main__":
    main()
