"""Distillation: students trained with each KD method against plain training at equal epochs.

For a task, one SNN teacher and its ANN twin are trained once (seed 0; saved in
``runs/bench_kd/<task>/`` and reused); then a small student is trained from scratch ``--epochs``
epochs (Adam, cosine, the task's lr) for each configuration and each seed: ``plain`` (no
teacher), ``kl_kd`` from the SNN and from the ANN, ``spike_kd`` from the SNN, ``kdsnn`` from the
ANN and from the SNN, and a BNTT student plain and with ``bntt_kd`` from the ANN. Rows (accuracy
per seed) stream to ``--out`` as JSON lines; ``--table`` prints the mean ± std per configuration
as a Markdown table; ``--alpha`` / ``--tau`` set the distillation knobs of every KD method.

    python benchmarks/distillation.py --task mnist1d --out docs/kd_mnist1d.jsonl
    python benchmarks/distillation.py --task event_digits --out docs/kd_event_digits.jsonl
    python benchmarks/distillation.py --table docs/kd_mnist1d.jsonl
    python benchmarks/distillation.py --task mnist1d --only "kl_kd ← SNN" --alpha 0.5 --tau 2

Tasks: ``mnist1d``: conv1d_net teacher width 128, student width 32 (T = 4); ``event_digits``:
conv_net teacher [32, 64, 128], student [8, 16, 32] (T = 4).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from spikecompress.compress import METHODS
from spikecompress.compress.session import attach
from spikecompress.data import DataConfig, load_data
from spikecompress.export import load, save
from spikecompress.measurement import evaluate
from spikecompress.models import build
from spikecompress.train import TrainConfig, Trainer

ROOT = Path("runs/bench_kd")
TASKS = {  # model, teacher widths, student widths, teacher epochs, lr
    "mnist1d": ({"name": "conv1d_net", "in_channels": 1, "input_size": 40, "classes": 10},
                [128] * 3, [32] * 3, 60, 2e-3),
    "event_digits": ({"name": "conv_net", "in_channels": 2, "input_size": 22, "classes": 10},
                     [32, 64, 128], [8, 16, 32], 30, 5e-3),
}
CONFIGS = {  # name -> (method name or None, teacher: "snn" | "ann" | None, BNTT student)
    "plain": (None, None, False),
    "kl_kd ← SNN": ("kl_kd", "snn", False),
    "kl_kd ← ANN": ("kl_kd", "ann", False),
    "spike_kd ← SNN": ("spike_kd", "snn", False),
    "kdsnn ← ANN": ("kdsnn", "ann", False),
    "kdsnn ← SNN": ("kdsnn", "snn", False),
    "plain BNTT": (None, None, True),
    "bntt_kd ← ANN": ("bntt_kd", "ann", True),
}


def _train(model, data, epochs, lr, seed, methods=()):
    session = attach(model, list(methods))
    Trainer(model, data, TrainConfig(epochs=epochs, lr=lr, seed=seed), session=session,
            verbose=False).fit()
    return session.finalize().eval()


def run(task: str, out: Path, epochs: int, seeds: list[int], only: set[str] | None,
        knobs: dict) -> None:
    spec, t_widths, s_widths, t_epochs, lr = TASKS[task]
    data = load_data(DataConfig(name=task, T=4, batch_size=64))
    teachers = {}
    for kind in ("snn", "ann"):
        folder = ROOT / task / f"teacher_{kind}"  # trained once, reused by later invocations
        start = time.perf_counter()
        if (folder / "spec.json").is_file():
            teachers[kind] = load(folder)
        else:
            torch.manual_seed(0)
            extra = {"pool": "avg"} if kind == "ann" and spec["name"] == "conv_net" else {}
            model = build(**spec, widths=t_widths, spiking=kind == "snn", **extra)
            teachers[kind] = _train(model, data, t_epochs, lr, 0)
            save(teachers[kind], folder)
        acc = evaluate(teachers[kind], data.test)["accuracy"]
        row = {"task": task, "config": f"teacher {kind}", "seed": 0, "accuracy": acc,
               "seconds": round(time.perf_counter() - start, 1)}
        print(json.dumps(row), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
    for name, (method, teacher, bntt) in CONFIGS.items():
        if only and name not in only:
            continue
        for seed in seeds:
            torch.manual_seed(seed)
            options = {"norm": "bntt", "steps": 4} if bntt else {}
            student = build(**spec, widths=s_widths, **options)
            methods = [] if method is None else [
                METHODS[method](teacher=teachers[teacher], **knobs)]
            start = time.perf_counter()
            model = _train(student, data, epochs, lr, seed, methods)
            row = {"task": task, "config": name, "seed": seed, **knobs,
                   "accuracy": evaluate(model, data.test)["accuracy"],
                   "seconds": round(time.perf_counter() - start, 1)}
            print(json.dumps(row), flush=True)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by: dict[str, list[float]] = {}
    for r in rows:
        knobs = "".join(f" {k} {r[k]:g}" for k in ("alpha", "tau") if k in r)
        by.setdefault(r["config"] + knobs, []).append(100 * r["accuracy"])
    plain = statistics.mean(by["plain"]) if "plain" in by else None
    lines = ["| configuration | accuracy (mean ± std) | n | vs plain |", "|---|---|---|---|"]
    for name, accs in by.items():
        mean = statistics.mean(accs)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        delta = "" if plain is None or name.startswith("teacher") else f"{mean - plain:+.2f} pp"
        lines.append(f"| {name} | {mean:.2f} ± {std:.2f} % | {len(accs)} | {delta} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=list(TASKS), default="mnist1d")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=None, help="comma-separated configuration names")
    ap.add_argument("--alpha", type=float, default=None, help="KD weight (default: the method's)")
    ap.add_argument("--tau", type=float, default=None, help="KD temperature")
    ap.add_argument("--out", default=None)
    ap.add_argument("--table", default=None, help="print the table of a JSON-lines file")
    args = ap.parse_args()
    if args.table:
        print(table(Path(args.table)))
        return
    torch.set_num_threads(args.threads)
    out = Path(args.out or f"docs/kd_{args.task}.jsonl")
    only = set(args.only.split(",")) if args.only else None
    knobs = {k: v for k, v in (("alpha", args.alpha), ("tau", args.tau)) if v is not None}
    run(args.task, out, args.epochs, [int(s) for s in args.seeds.split(",")], only, knobs)


if __name__ == "__main__":
    main()
