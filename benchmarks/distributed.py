"""Distributed training (issue 20): SCA and Grad R recipes under 1 and 2 processes, side by side.

Each row is one ``torchrun --nproc-per-node N -m spikecompress run <recipe>`` of a shipped recipe
as shipped (every stage at its full length) at the recipe's global batch (64: 32 per process
under 2), each process on ``--threads`` torch threads, with or without ``--sync-batchnorm``; the
runs of ``--runs`` go one after the other in this script. From the run's metrics.json: the final
test accuracy, the mean wall time of a training epoch of the compression stage (the Trainer's
``epoch_s``: training only, evaluation excluded), and under 2 processes the bytes each rank sends
per optimizer step: DDP's gradient buckets (counted by its communication hook) and every other
collective (the methods' ``reduce_``, the logged loss, buffer syncs). Rows stream to ``--out`` as
JSON lines.

    python benchmarks/distributed.py --threads 1              # docs/distributed.jsonl
    python benchmarks/distributed.py --table docs/distributed.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path("runs/bench_dist")
# recipe, overrides (--set), the stage whose epochs are timed
RECIPES = {"sca": ([], "sca"), "gradr": ([], "gradr")}


def run_one(recipe: str, procs: int, threads: int, sync_bn: bool, seed: int) -> dict:
    """One torchrun job; its figures."""
    sets, stage = RECIPES[recipe]
    sets = [*sets, f"seed={seed}"]
    out = ROOT / f"{recipe}-{procs}{'-syncbn' if sync_bn else ''}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--nproc-per-node", str(procs), "-m", "spikecompress", "run", recipe,
           "--quiet", "--threads", str(threads), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    if sync_bn:
        cmd.append("--sync-batchnorm")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    began = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    final = json.loads((out / "metrics.json").read_text())
    stage_dir = next((out / "stages").glob(f"*-{stage}"))
    timed = json.loads((stage_dir / "metrics.json").read_text())["train"]
    epochs = [r["epoch_s"] for r in timed["history"]]
    traffic = timed.get("distributed", {})
    return {"recipe": recipe, "processes": procs, "sync_batchnorm": sync_bn, "seed": seed,
            "threads": threads,
            "accuracy": final["accuracy"], "stage": stage,
            "epoch_s": sum(epochs) / len(epochs), "job_s": wall,
            "gradient_bytes_per_step": traffic.get("gradient_bytes_per_step", 0.0),
            "other_bytes_per_step": traffic.get("other_collective_bytes_per_step", 0.0),
            "command": " ".join(cmd[1:])}


def table(path: str) -> str:
    """Per recipe and launch (processes, sync BN): accuracy per seed and its mean; the epoch time
    of the seed-0 run (the runs timed side by side, on an otherwise idle machine) and its ratio
    to one process; the traffic per step."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        runs.setdefault((r["recipe"], r["processes"], r.get("sync_batchnorm", False)), []).append(r)
    lines = ["| recipe | processes | accuracy by seed | mean | epoch (s) | ratio to 1 process | "
             "gradient bytes / step | other bytes / step |", "|---|---|---|---|---|---|---|---|"]
    epoch = {k: next(r["epoch_s"] for r in v if r.get("seed", 0) == 0) for k, v in runs.items()}
    for (recipe, procs, sync), rs in runs.items():
        rs = sorted(rs, key=lambda r: r.get("seed", 0))
        accs = [100 * r["accuracy"] for r in rs]
        by_seed = ", ".join(f"{a:.2f}" for a in accs)
        ratio = epoch[recipe, procs, sync] / epoch[recipe, 1, False]
        label = f"{procs}" + (" (sync BN)" if sync else "")
        lines.append(f"| {recipe} | {label} | {by_seed} | {sum(accs) / len(accs):.2f} % | "
                     f"{epoch[recipe, procs, sync]:.2f} | {ratio:.2f} | "
                     f"{rs[0]['gradient_bytes_per_step']:,.0f} | "
                     f"{rs[0]['other_bytes_per_step']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--recipes", default="sca,gradr")
    p.add_argument("--runs", default="1,2,2s",
                   help="process counts to run; a trailing s: with --sync-batchnorm")
    p.add_argument("--seeds", default="0", help="recipe seeds (init, shuffling) to run")
    p.add_argument("--out", default="docs/distributed.jsonl")
    p.add_argument("--table", default=None, help="print the Markdown table of a .jsonl")
    args = p.parse_args()
    if args.table:
        print(table(args.table))
        return
    with open(args.out, "a") as f:
        for recipe in args.recipes.split(","):
            for seed, run in ((int(s), r) for s in args.seeds.split(",")
                              for r in args.runs.split(",")):
                row = run_one(recipe, int(run.rstrip("s")), args.threads, run.endswith("s"),
                              seed)
                print(json.dumps(row), flush=True)
                f.write(json.dumps(row) + "\n")
                f.flush()


if __name__ == "__main__":
    main()
