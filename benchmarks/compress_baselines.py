"""Baseline compression on MNIST-1D (issue 5): one-shot vs gradual magnitude pruning, uniform QAT,
k-means weight sharing, all from one shared dense checkpoint, with accuracy and bytes on disk.

    python benchmarks/compress_baselines.py [--threads 1] [--finetune 15]

Dense: conv1d_net width 64, T=4, 60 epochs, Adam lr 2e-3, cosine, seed 0. Each variant: a copy of
the dense weights, the method attached, ``--finetune`` epochs (Adam lr 1e-3, cosine), finalize,
artifact saved and sized (os.path.getsize). Gradual pruning ramps with the cubic schedule over the
first 2/3 of the fine-tuning and keeps the mask fixed after; one-shot prunes at attach.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import tempfile
import time
from pathlib import Path

from spikecompress.compress import METHODS, attach
from spikecompress.data import DataConfig, load_data
from spikecompress.export import save, size_bytes
from spikecompress.measurement import evaluate
from spikecompress.models import from_spec
from spikecompress.run.commands import model_spec_for
from spikecompress.train import TrainConfig, Trainer, seed_everything, set_threads

KEEP_DENSE = ["features.0.conv", "classifier.fc"]
VARIANTS = (
    [(f"one-shot magnitude {s:.0%}", "magnitude", dict(sparsity=s, schedule="constant"))
     for s in (0.8, 0.9, 0.95, 0.98)]
    + [(f"gradual magnitude {s:.0%}", "magnitude", dict(sparsity=s, schedule="cubic", until=0.67))
       for s in (0.8, 0.9, 0.95, 0.98)]
    + [(f"gradual magnitude {s:.0%}, first conv + classifier dense", "magnitude",
        dict(sparsity=s, schedule="cubic", until=0.67, exclude=KEEP_DENSE))
       for s in (0.9, 0.95, 0.98)]
    + [(f"uniform QAT {b} bit", "uniform_quant", dict(weight_bits=b)) for b in (8, 4, 3, 2)]
    + [(f"k-means {k} clusters", "weight_sharing", dict(clusters=k)) for k in (32, 16, 8, 4)]
)


def sized(model) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        return size_bytes(save(model, Path(tmp) / "a"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--finetune", type=int, default=15)
    ap.add_argument("--out", default="docs/benchmarks_baselines.md")
    args = ap.parse_args()
    set_threads(args.threads)
    data = load_data(DataConfig(name="mnist1d", T=4, batch_size=64))
    seed_everything(0)
    dense = from_spec(model_spec_for("conv1d_net", data, [64, 64, 64], "lif", True))
    t0 = time.perf_counter()
    Trainer(dense, data, TrainConfig(epochs=60, lr=2e-3), verbose=False).fit()
    base_acc, base_bytes = evaluate(dense, data.test)["accuracy"], sized(dense)
    wall = time.perf_counter() - t0
    print(f"dense: {base_acc:.4f}, {base_bytes} bytes, {wall:.0f} s", flush=True)
    rows = [("dense fp32 (60 epochs)", base_acc, base_bytes, 0.0)]
    for label, name, kw in VARIANTS:
        seed_everything(0)
        model = copy.deepcopy(dense)
        session = attach(model, [METHODS[name](**kw)])
        cfg = TrainConfig(epochs=args.finetune, lr=1e-3)
        Trainer(model, data, cfg, session=session, verbose=False).fit()
        model = session.finalize()
        zeros = sum(int((p == 0).sum()) for p in model.parameters() if p.dim() > 1)
        weights = sum(p.numel() for p in model.parameters() if p.dim() > 1)
        rows.append((label, evaluate(model, data.test)["accuracy"], sized(model), zeros / weights))
        print(f"{label}: {rows[-1][1]:.4f}, {rows[-1][2]} bytes", flush=True)
    lines = [
        f"Measured {datetime.date.today()}, {args.threads} thread(s), load average at the end "
        f"{os.getloadavg()[0]:.2f}. Command: `python benchmarks/compress_baselines.py "
        f"--threads {args.threads} --finetune {args.finetune}`", "",
        "| variant | test accuracy | weight sparsity | bytes on disk | smaller than dense fp32 |",
        "|---|---|---|---|---|",
    ]
    for label, acc, nbytes, sparsity in rows:
        lines.append(f"| {label} | {100 * acc:.2f}% | {sparsity:.1%} | {nbytes:,} "
                     f"| {base_bytes / nbytes:.2f}× |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
