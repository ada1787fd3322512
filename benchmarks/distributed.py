"""Distributed training (issue 20): SCA and Grad R recipes under 1 and 2 processes, side by side.

Each row is one ``torchrun --nproc-per-node N -m spikecompress run <recipe>`` of a shipped recipe
with shortened stages (``--set``), at the recipe's global batch (64: 32 per process under 2), each
process on ``--threads`` torch threads; N = 1 and N = 2 run one after the other in this script.
From the run's metrics.json: the final test accuracy, the mean wall time of a training epoch in
the compression stage (the Trainer's ``epoch_s``: training only, evaluation excluded), and under
2 processes the traffic each rank sends per optimizer step: DDP's gradient buckets (counted by its
communication hook) and every other collective (the methods' ``reduce_``, the logged loss,
buffer syncs). Rows stream to ``--out`` as JSON lines.

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
# recipe, its stages shortened (--set), the stage whose epochs are timed
RECIPES = {
    "sca": (["stages.0.epochs=15", "stages.1.epochs=10", "stages.2.epochs=5"], "sca"),
    "gradr": (["stages.0.epochs=30", "stages.1.epochs=15"], "gradr"),
}


def run_one(recipe: str, procs: int, threads: int) -> dict:
    """One torchrun job; its figures."""
    sets, stage = RECIPES[recipe]
    out = ROOT / f"{recipe}-{procs}"
    shutil.rmtree(out, ignore_errors=True)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--nproc-per-node", str(procs), "-m", "spikecompress", "run", recipe,
           "--quiet", "--threads", str(threads), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    began = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    final = json.loads((out / "metrics.json").read_text())
    stage_dir = next((out / "stages").glob(f"*-{stage}"))
    timed = json.loads((stage_dir / "metrics.json").read_text())["train"]
    epochs = [r["epoch_s"] for r in timed["history"]]
    traffic = timed.get("distributed", {})
    return {"recipe": recipe, "processes": procs, "threads": threads,
            "accuracy": final["accuracy"], "stage": stage,
            "epoch_s": sum(epochs) / len(epochs), "job_s": wall,
            "gradient_bytes_per_step": traffic.get("gradient_bytes_per_step", 0.0),
            "other_bytes_per_step": traffic.get("other_collective_bytes_per_step", 0.0),
            "command": " ".join(cmd[1:])}


def table(path: str) -> str:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    lines = ["| recipe | processes | accuracy | epoch (s) | ratio to 1 process | gradient "
             "bytes / step | other bytes / step |", "|---|---|---|---|---|---|---|"]
    base = {r["recipe"]: r for r in rows if r["processes"] == 1}
    for r in rows:
        ratio = r["epoch_s"] / base[r["recipe"]]["epoch_s"]
        lines.append(f"| {r['recipe']} | {r['processes']} | {100 * r['accuracy']:.2f} % | "
                     f"{r['epoch_s']:.2f} | {ratio:.2f} | {r['gradient_bytes_per_step']:,.0f} | "
                     f"{r['other_bytes_per_step']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--recipes", default="sca,gradr")
    p.add_argument("--out", default="docs/distributed.jsonl")
    p.add_argument("--table", default=None, help="print the Markdown table of a .jsonl")
    args = p.parse_args()
    if args.table:
        print(table(args.table))
        return
    with open(args.out, "a") as f:
        for recipe in args.recipes.split(","):
            for procs in (1, 2):
                row = run_one(recipe, procs, args.threads)
                print(json.dumps(row), flush=True)
                f.write(json.dumps(row) + "\n")
                f.flush()


if __name__ == "__main__":
    main()
