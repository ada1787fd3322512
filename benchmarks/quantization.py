"""Quantization side by side: every quantization method from one dense checkpoint, same budget.

For a task (``mnist1d``: conv1d_net width 64; ``digits``: conv_net [16, 32, 64]; T = 4), one dense
model (trained here, or ``--dense ARTIFACT``) is fine-tuned ``--epochs`` epochs (Adam, cosine,
lr 1e-3, seed 0) under each configuration: ``uniform_quant`` at weight bits 8/4/3/2/1 with a
float membrane (max-|W|, learned LSQ or least-squares scale, per tensor or per channel), and with
the whole network on the integer grid at membrane bits 8/4/2 (its defaults: least-squares scale
per channel), with and without 8-bit first and last layers; ``mint`` at weight × membrane bits
8/4/2 × 8/4/2; ``admm_quant`` at 8/4/3/2 bits; ``weight_sharing`` at 256/16/8/4 clusters;
``binary``; ``istbp``; 2-bit weights with ``kl_kd`` from the dense model. Membrane bits apply
to the methods that have them (``uniform_quant``, ``mint``; ``istbp`` keeps its own 16-bit
integer membrane). Each row: accuracy, bytes on
disk, L0/L1 energy per sample with the profile ``measure`` picks (45nm-int8 for models on the
integer grid, else 45nm fp32 — say which), and for every model that lowers, the share of test
samples whose integer-SNN logits equal the model's bit for bit. Results stream to ``--out``
(JSON lines) so an interrupted run keeps its rows.

    python benchmarks/quantization.py --task digits --out docs/quant_digits.jsonl
    python benchmarks/quantization.py --task mnist1d --dense runs/x/stages/0-dense/artifact
    python benchmarks/quantization.py --table docs/quant_mnist1d.jsonl      # the Markdown table
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import spikecompress as sc
from spikecompress.compress import METHODS
from spikecompress.compress.session import attach
from spikecompress.data import DataConfig, load_data
from spikecompress.models import build
from spikecompress.snn import reset_state
from spikecompress.train import TrainConfig, Trainer

TASKS = {
    "mnist1d": ({"name": "conv1d_net", "in_channels": 1, "input_size": 40, "classes": 10,
                 "widths": [64, 64, 64]}, 30, 2e-3),
    "digits": ({"name": "conv_net", "in_channels": 1, "input_size": 8, "classes": 10,
                "widths": [16, 32, 64]}, 12, 5e-3),
}


def configs() -> list[dict]:
    rows = []
    for bits in (8, 4, 3, 2, 1):  # weights only, float membrane: every scale choice
        for scale in ("max", "lsq", "least_squares"):
            for per_channel in (False, True):
                rows.append({"name": "uniform_quant", "weight_bits": bits, "scale": scale,
                             "per_channel": per_channel})
    for bits in (8, 4, 3, 2, 1):  # the whole network on the integer grid (defaults: LS per channel)
        for mbits in (8, 4, 2):
            rows.append({"name": "uniform_quant", "weight_bits": bits, "membrane_bits": mbits})
    for bits in (8, 4, 2):  # post-training, one shot: round the dense weights, no fine-tune
        rows.append({"name": "uniform_quant", "weight_bits": bits, "mode": "ptq", "epochs": 0})
    for bits in (2, 1):  # first and last layer at 8 bits
        for mbits in (None, 4):
            rows.append({"name": "uniform_quant", "weight_bits": bits, "edge_bits": 8,
                         "membrane_bits": mbits})
    for bits in (8, 4, 2):
        for mbits in (8, 4, 2):
            rows.append({"name": "mint", "weight_bits": bits, "membrane_bits": mbits})
    rows += [{"name": "admm_quant", "weight_bits": b} for b in (8, 4, 3, 2)]
    rows += [{"name": "weight_sharing", "clusters": k} for k in (256, 16, 8, 4)]
    rows += [{"name": "binary"}, {"name": "istbp"}]
    for edge in (None, 8):  # distillation from the dense model (kl_kd) at 2 bits
        rows.append({"name": "uniform_quant", "weight_bits": 2, "edge_bits": edge, "kd": True})
    return rows


def agreement(model, data) -> float | None:
    """Share of test samples whose integer-SNN logits equal the model's bit for bit."""
    if not any(getattr(m, "membrane_bits", None) is not None for m in model.modules()):
        return None
    prog = sc.to_integer(model)
    same = n = 0
    for x, _ in data.test:
        with torch.no_grad():
            a = model(x)
        reset_state(model)
        b = prog.logits(x)
        same += int((a == b).flatten(2).all(2).all(0).sum())  # [T, B, K] -> per sample
        n += x.shape[1]
    return same / n


def label(cfg: dict) -> str:
    """A row's name in the table: ``uniform W4 lsq per-ch``, ``uniform W2 edge 8 + U4``, ..."""
    name = cfg["name"]
    if name == "dense":
        return "dense fp32"
    if name == "uniform_quant":
        text = f"uniform W{cfg['weight_bits']}"
        if "scale" in cfg:
            text += f" {cfg['scale']} {'per-ch' if cfg['per_channel'] else 'per-tensor'}"
        if cfg.get("mode") == "ptq":
            text += " PTQ one-shot"
        if cfg.get("edge_bits"):
            text += f" edge {cfg['edge_bits']}"
        text += f" + U{cfg['membrane_bits']}" if cfg.get("membrane_bits") else ""
        return text + (" + kl_kd from dense" if cfg.get("kd") else "")
    if name == "mint":
        return f"mint W{cfg['weight_bits']} U{cfg['membrane_bits']}"
    if name == "admm_quant":
        return f"admm_quant W{cfg['weight_bits']}"
    if name == "weight_sharing":
        return f"weight_sharing k={cfg['clusters']}"
    return name


def table(path: Path) -> str:
    """The Markdown table of a JSON-lines result file."""
    lines = ["| configuration | accuracy | bytes on disk | L0 nJ | L1 nJ | profile | integer SNN = "
             "model |", "|---|---|---|---|---|---|---|"]
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if "error" in r:
            lines.append(f"| {label(r['config'])} | error: {r['error']} | | | | | |")
            continue
        agree = "—" if r["integer_agreement"] is None else f"{100 * r['integer_agreement']:.0f} %"
        lines.append(f"| {label(r['config'])} | {100 * r['accuracy']:.2f} % | {r['bytes']:,} | "
                     f"{r['L0'] / 1000:.1f} | {r['L1'] / 1000:.1f} | {r['profile']} | {agree} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=list(TASKS), default="digits")
    ap.add_argument("--dense", default=None, help="a dense artifact to start from")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None, help="comma-separated method names")
    ap.add_argument("--match", default=None, help="only rows whose label contains this")
    ap.add_argument("--table", default=None, help="print the table of a JSON-lines file")
    args = ap.parse_args()
    if args.table:
        print(table(Path(args.table)))
        return
    torch.set_num_threads(args.threads)
    spec, dense_epochs, dense_lr = TASKS[args.task]
    data = load_data(DataConfig(name=args.task, T=4, batch_size=64))
    if args.dense:
        dense = sc.load(args.dense)
    else:
        torch.manual_seed(0)
        dense = build(**spec)
        Trainer(dense, data, TrainConfig(epochs=dense_epochs, lr=dense_lr, seed=0),
                verbose=False).fit()
    out = Path(args.out or f"docs/quant_{args.task}.jsonl")
    base = sc.measure(dense.eval(), data, latency_repeats=1)
    rows = [{"config": {"name": "dense"}, "accuracy": base.accuracy, "bytes": base.size_bytes,
             "L0": base.energy_pj_per_sample["L0"], "L1": base.energy_pj_per_sample["L1"],
             "profile": base.profile, "integer_agreement": None}]
    out.write_text(json.dumps(rows[0]) + "\n")
    only = set(args.only.split(",")) if args.only else None
    for cfg in configs():
        if only and cfg["name"] not in only or args.match and args.match not in label(cfg):
            continue
        torch.manual_seed(0)
        model = copy.deepcopy(dense).train()
        start = time.perf_counter()
        try:
            method = METHODS[cfg["name"]](**{k: v for k, v in cfg.items()
                                             if k not in ("name", "epochs", "kd")})
            kd = [METHODS["kl_kd"](teacher=dense)] if cfg.get("kd") else []
            session = attach(model, [method, *kd])
            Trainer(model, data, TrainConfig(epochs=cfg.get("epochs", args.epochs), lr=1e-3,
                                             seed=0), session=session, verbose=False).fit()
            model = session.finalize().eval()
            m = sc.measure(model, data, latency_repeats=1)
            row = {"config": cfg, "accuracy": m.accuracy, "bytes": m.size_bytes,
                   "L0": m.energy_pj_per_sample["L0"], "L1": m.energy_pj_per_sample["L1"],
                   "profile": m.profile, "integer_agreement": agreement(model, data)}
        except (ValueError, RuntimeError) as e:
            row = {"config": cfg, "error": str(e)}
        row["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(row), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
