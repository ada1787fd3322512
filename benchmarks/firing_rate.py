"""Firing-rate reduction and temporal coding (issue 18): accuracy against spikes and SOPs.

For a task, every row is measured with ``spikecompress.measure`` on the test set: accuracy, spikes
per sample, spikes per neuron per sample, the share of silent neurons, SOPs per sample.

* ``dense``: our default SNN (T = 4), trained here once per task (Adam, cosine, seed 0,
  ``--dense-epochs`` at the task's lr; saved under ``runs/bench_fr/<task>/dense`` and reused).
* ``activity`` λ ∈ ``--weights`` (and λ = 0, the control): a fine-tune of the dense model,
  ``--epochs`` epochs at lr 1e-3 (the method's defaults: per "neuron_step", uniform weighting).
* ``autosnn``: the supernet trained ``--search-epochs`` epochs at the task's lr, the evolutionary
  search (the method's defaults, λ = −0.08), the pick built anew (``init: scratch``) and trained as
  long as the dense model (recipes/autosnn.yaml).
* ``coding`` (static tasks only: TTFS and TSC refuse event data): the ANN twin (``spiking:
  false``, max pooling where the model pools) trained ``--dense-epochs`` at T = 1, then converted
  by ``ttfs`` (layered at T = 64, its best documented setting; concurrent at T = 10, the paper's
  schedule), ``tsc`` (T = 33: window Tw = 32) and the rate-coded twin ``ann_conversion``
  (percentile 99.9, IF soft reset) at T = 33 and T = 64. Conversion stages: one epoch at lr 1e-9.

Tasks: ``event_digits`` (conv_net [16, 32, 64], T = 4; dense, activity, autosnn), ``mnist1d``
(conv1d_net width 64, T = 4; all four groups), ``digits`` (sklearn 8×8, conv_net [16, 32, 64];
coding only: the static stand-in for event digits). Rows stream to ``--out`` as JSON lines.

    python benchmarks/firing_rate.py --task event_digits --threads 1 # docs/firing_rate_<task>.jsonl
    python benchmarks/firing_rate.py --task mnist1d --threads 1
    python benchmarks/firing_rate.py --task digits --threads 1
    python benchmarks/firing_rate.py --table docs/firing_rate_mnist1d.jsonl      # Markdown table
    python benchmarks/firing_rate.py --plot docs/firing_rate.png docs/firing_rate_*.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

import spikecompress as sc
from spikecompress.compress import METHODS
from spikecompress.compress.session import attach
from spikecompress.data import DataConfig, load_data
from spikecompress.export import load, save
from spikecompress.models import build
from spikecompress.train import TrainConfig, Trainer

ROOT = Path("runs/bench_fr")
TASKS = {  # model spec, dense epochs, lr, groups of rows
    "event_digits": ({"name": "conv_net", "in_channels": 2, "input_size": 22, "classes": 10,
                      "widths": [16, 32, 64]}, 20, 5e-3, ("dense", "activity", "autosnn")),
    "mnist1d": ({"name": "conv1d_net", "in_channels": 1, "input_size": 40, "classes": 10,
                 "widths": [64, 64, 64]}, 40, 2e-3, ("dense", "activity", "autosnn", "coding")),
    "digits": ({"name": "conv_net", "in_channels": 1, "input_size": 8, "classes": 10,
                "widths": [16, 32, 64]}, 20, 5e-3, ("coding",)),
}
T = 4
FLOOR = 90.0  # the plot's lowest accuracy
CODING = [  # (label, method config, T)
    ("ttfs layered", {"name": "ttfs", "schedule": "layered"}, 64),
    ("ttfs concurrent", {"name": "ttfs", "schedule": "concurrent"}, 10),
    ("tsc", {"name": "tsc", "percentile": 99.9}, 33),
    ("ann_conversion", {"name": "ann_conversion", "percentile": 99.9}, 33),
    ("ann_conversion", {"name": "ann_conversion", "percentile": 99.9}, 64),
]


def _metrics(model, data) -> dict:
    m = sc.measure(model.eval(), data, latency_repeats=1)
    return {"accuracy": m.accuracy, "spikes_per_sample": m.spikes_per_sample,
            "spikes_per_neuron": m.spikes_per_neuron, "silent_neurons": m.silent_neurons,
            "sops_per_sample": m.sops_per_sample, "macs_per_sample": m.macs_per_sample,
            "params": m.params, "T": m.time_steps}


def _train(model, data, epochs, lr, methods=(), seed=0):
    session = attach(model, list(methods))
    Trainer(model, data, TrainConfig(epochs=epochs, lr=lr, seed=seed), session=session,
            verbose=False).fit()
    return session.finalize()


def _cached(path: Path, make):
    """The model saved at ``path``, else ``make()`` saved there."""
    if path.exists():
        return load(path), True
    model = make()
    save(model, path)
    return model, False


def rows_for(task: str, args, data_of) -> list[tuple[dict, callable]]:
    """(config, run) pairs: run() returns the measured row."""
    spec, dense_epochs, lr, groups = TASKS[task]
    dense_epochs = args.dense_epochs or dense_epochs
    only = set(args.only.split(",")) if args.only else set(groups)
    state: dict = {}

    def dense():
        if "dense" not in state:
            def make():
                torch.manual_seed(0)
                return _train(build(**spec), data_of(T), dense_epochs, lr)
            state["dense"], state["cached"] = _cached(ROOT / task / f"dense-e{dense_epochs}", make)
        return state["dense"]

    def ann():
        if "ann" not in state:
            def make():
                torch.manual_seed(0)
                return _train(build(**{**spec, "spiking": False}), data_of(1), dense_epochs, lr)
            state["ann"], _ = _cached(ROOT / task / f"ann-e{dense_epochs}", make)
        return state["ann"]

    out = []
    if "dense" in groups and "dense" in only:
        out.append(({"name": "dense", "epochs": dense_epochs, "lr": lr},
                    lambda: _metrics(dense(), data_of(T))))
    if "activity" in groups and "activity" in only:
        for seed in args.seeds:
            for w in [0.0, *args.weights]:
                epochs, rate = (dense_epochs, lr) if args.from_scratch else (args.epochs, 1e-3)

                def run(w=w, seed=seed, epochs=epochs, rate=rate):
                    torch.manual_seed(seed)
                    model = build(**spec) if args.from_scratch else copy.deepcopy(dense()).train()
                    method = METHODS["activity"](weight=w, weighting=args.weighting)
                    data = data_of(T)
                    data.train.seed = seed  # the shuffling order (the split stays seed 0's)
                    try:
                        return _metrics(_train(model, data, epochs, rate, [method], seed), data)
                    finally:
                        data.train.seed = 0
                out.append(({"name": "activity", "weight": w, "weighting": args.weighting,
                             "seed": seed, "epochs": epochs, "lr": rate,
                             "from_scratch": args.from_scratch}, run))
    if "autosnn" in groups and "autosnn" in only:
        def run_autosnn():
            torch.manual_seed(0)
            method = METHODS["autosnn"](init="scratch", fitness_lambda=args.fitness_lambda)
            pick = _train(build(**spec), data_of(T), args.search_epochs, lr, [method])
            torch.manual_seed(0)
            row = _metrics(_train(pick.train(), data_of(T), dense_epochs, lr), data_of(T))
            res = method.result_ or {}
            row["arch"] = res.get("arch")
            row["search"] = {k: res.get(k) for k in ("accuracy", "spikes_per_sample", "evaluated")}
            return row
        out.append(({"name": "autosnn", "search_epochs": args.search_epochs,
                     "fitness_lambda": args.fitness_lambda,
                     "epochs": dense_epochs, "lr": lr}, run_autosnn))
    if "coding" in groups and "coding" in only:
        out.append(({"name": "ann", "epochs": dense_epochs, "lr": lr},
                    lambda: _metrics(ann(), data_of(1))))
        for label, cfg, steps in CODING:
            def run(cfg=cfg, steps=steps):
                model = copy.deepcopy(ann()).train()
                m = METHODS[cfg["name"]](**{k: v for k, v in cfg.items() if k != "name"})
                return _metrics(_train(model, data_of(steps), 1, 1e-9, [m]), data_of(steps))
            out.append(({**cfg, "label": label, "T": steps}, run))
    return out


def label(cfg: dict) -> str:
    name = cfg["name"]
    if name == "dense":
        return f"dense (T = {T})"
    if name == "activity":
        extra = "".join(f", {k} {cfg[k]}" for k, plain in (("weighting", "uniform"), ("seed", 0))
                        if cfg.get(k, plain) != plain and cfg["weight"] != 0)
        extra += ", from scratch" if cfg.get("from_scratch") else ""
        return (f"activity λ = {cfg['weight']:g}{extra}"
                + (f" (control{', seed ' + str(cfg['seed']) if cfg.get('seed') else ''})"
                   if cfg["weight"] == 0 else ""))
    if name == "autosnn":
        lam = cfg.get("fitness_lambda", -0.08)
        return "autosnn pick" + (f" (λ_fit {lam:g})" if lam != -0.08 else "")
    if name == "ann":
        return "ANN twin (ReLU, T = 1)"
    return f"{cfg['label']} (T = {cfg['T']})"


def table(path: Path) -> str:
    """The Markdown table of a JSON-lines result file."""
    lines = ["| configuration | accuracy | spikes / sample | spikes / neuron | silent | "
             "SOPs / sample | params | s |", "|---|---|---|---|---|---|---|---|"]
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if "error" in r:
            lines.append(f"| {label(r['config'])} | error: {r['error']} | | | | | | |")
            continue
        name = label(r["config"])
        if r.get("arch"):
            name += f" {r['arch']}"
        lines.append(f"| {name} | {100 * r['accuracy']:.2f} % | {r['spikes_per_sample']:,.0f} | "
                     f"{r['spikes_per_neuron']:.3f} | {100 * r['silent_neurons']:.1f} % | "
                     f"{r['sops_per_sample']:,.0f} | {r['params']:,} | {r['seconds']} |")
    return "\n".join(lines)


def plot(path: Path, files: list[Path]) -> None:
    """Accuracy vs spikes per sample and vs SOPs per sample, one colour per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    below: list[str] = []  # rows under FLOOR %, named under the plot instead
    markers = {"dense": "*", "activity": "o", "autosnn": "s", "ann_conversion": "v",
               "ttfs": "^", "tsc": "D"}
    for i, f in enumerate(files):
        task = f.stem.removeprefix("firing_rate_")
        rows = [json.loads(x) for x in f.read_text().splitlines()]
        rows = [r for r in rows if "error" not in r and r["config"]["name"] != "ann"]
        colour = f"C{i}"
        below += [f"{task} {label(r['config'])}: {100 * r['accuracy']:.1f} %" for r in rows
                  if 100 * r["accuracy"] < FLOOR]
        rows = [r for r in rows if 100 * r["accuracy"] >= FLOOR]
        for ax, key in zip(axes, ("spikes_per_sample", "sops_per_sample"), strict=True):
            for r in rows:
                name = r["config"]["name"]
                ax.scatter(r[key], 100 * r["accuracy"], color=colour,
                           marker=markers.get(name, "x"), s=60 if name == "dense" else 30)
                ax.annotate(label(r["config"]).replace(" (control)", ""), (r[key],
                            100 * r["accuracy"]), fontsize=6, xytext=(3, 2),
                            textcoords="offset points")
            ax.scatter([], [], color=colour, label=task)
    for ax, name in zip(axes, ("spikes per sample", "SOPs per sample"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel(name + " (log)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(FLOOR, 100.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Firing-rate reduction and temporal coding (seed 0, 1 thread; markers: ★ dense, "
                 "● activity, ■ autosnn, ▲ ttfs, ◆ tsc, ▼ ann_conversion)", fontsize=9)
    if below:
        fig.text(0.5, 0.01, "below the axis: " + "; ".join(below), ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=130)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=list(TASKS), default="event_digits")
    ap.add_argument("--dense-epochs", type=int, default=None, help="default: the task's")
    ap.add_argument("--epochs", type=int, default=6, help="activity fine-tune epochs")
    ap.add_argument("--search-epochs", type=int, default=30, help="autosnn supernet epochs")
    ap.add_argument("--weights", default="0.5,2,8", help="activity λ values (λ = 0 is added)")
    ap.add_argument("--weighting", default="uniform", help="activity's layer weighting")
    ap.add_argument("--from-scratch", action="store_true",
                    help="activity: train a new model with the penalty (dense epochs and lr) "
                    "instead of fine-tuning the dense one")
    ap.add_argument("--seeds", default="0", help="activity fine-tune seeds, comma-separated")
    ap.add_argument("--fitness-lambda", type=float, default=-0.08, help="autosnn's λ_fit")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None, help="comma-separated groups: dense, activity, "
                    "autosnn, coding")
    ap.add_argument("--table", default=None, help="print the table of a JSON-lines file")
    ap.add_argument("--plot", nargs="+", default=None, metavar=("PNG", "JSONL"),
                    help="write the plot PNG from these JSON-lines files")
    args = ap.parse_args()
    if args.table:
        print(table(Path(args.table)))
        return
    if args.plot:
        plot(Path(args.plot[0]), [Path(p) for p in args.plot[1:]])
        return
    args.weights = [float(w) for w in args.weights.split(",")]
    args.seeds = [int(x) for x in args.seeds.split(",")]
    torch.set_num_threads(args.threads)
    loaded: dict = {}

    def data_of(steps: int):
        if steps not in loaded:
            loaded[steps] = load_data(DataConfig(name=args.task, T=steps, batch_size=64))
        return loaded[steps]

    out = Path(args.out or f"docs/firing_rate_{args.task}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("")
    for cfg, run in rows_for(args.task, args, data_of):
        start = time.perf_counter()
        try:
            row = {"config": cfg, **run()}
        except (ValueError, RuntimeError) as e:
            row = {"config": cfg, "error": str(e)}
        row["seconds"] = round(time.perf_counter() - start, 1)
        row["command"] = " ".join(sys.argv[1:])
        print(json.dumps(row), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
