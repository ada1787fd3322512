"""Unstructured pruning family (issue 6): every method and the magnitude baselines from one shared
dense checkpoint per task, at 90 / 95 / 98 % weight sparsity, with accuracy, sparsity,
connectivity, SOPs and energy; one JSON per run, then a table and an accuracy-vs-SOPs plot.

    python benchmarks/unstructured.py run --task w128 --variant gradual@0.95 --seed 0
    python benchmarks/unstructured.py table            # docs/benchmarks_unstructured.md + plot

Tasks: ``w128`` / ``w64`` = MNIST-1D conv1d_net of that width (T=4, dense 60 epochs Adam lr 2e-3
cosine), ``events`` = event digits conv_net [16, 32, 64] (T=4, dense 30 epochs lr 5e-3). Every
method gets the same budget after the dense checkpoint: ``--epochs`` (default 45) epochs of Adam
lr 1e-3 with a cosine schedule. ESL trains sparse from scratch, so it gets the dense epochs plus
the same 45 (the same total). A variant ending in ``+kd`` adds ``kl_kd`` with the dense
checkpoint as teacher (``admm@0.95+kd``). Results land in ``runs/bench_unstructured/<task>/``;
a run whose JSON exists is skipped (re-running the command resumes a sweep).
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
from spikecompress.export import load, save
from spikecompress.measurement import measure
from spikecompress.measurement.sparsity import connectivity, neuron_sparsity, weight_sparsity
from spikecompress.models import from_spec
from spikecompress.run.commands import model_spec_for
from spikecompress.train import TrainConfig, Trainer, seed_everything, set_threads

ROOT = Path("runs/bench_unstructured")
TASKS = {  # data, model, widths, dense epochs, dense lr
    "w128": (dict(name="mnist1d", T=4, batch_size=64), "conv1d_net", [128] * 3, 60, 2e-3),
    "w64": (dict(name="mnist1d", T=4, batch_size=64), "conv1d_net", [64] * 3, 60, 2e-3),
    "events": (dict(name="event_digits", T=4, batch_size=64), "conv_net", [16, 32, 64], 30, 5e-3),
}


def method_for(variant: str):
    """``name@knob`` → the method instance (knob: target sparsity, or the paper's own knob for
    the variants that sweep it: Grad R's alpha, STDS / LATS's D, SOPs-aware λ)."""
    name, _, knob = variant.partition("@")
    k = float(knob) if knob else None
    table = {
        "oneshot": lambda: METHODS["magnitude"](sparsity=k, schedule="constant"),
        "gradual": lambda: METHODS["magnitude"](sparsity=k, schedule="cubic", until=0.67),
        "admm": lambda: METHODS["admm"](sparsity=k, scope="global", update_every=16),
        "admm_layer": lambda: METHODS["admm"](sparsity=k, scope="layer"),
        "esl": lambda: METHODS["esl"](sparsity=k, placement="random"),  # the paper's ER graph
        "gradr": lambda: METHODS["gradr"](alpha=k),
        "stds": lambda: METHODS["stds"](D=k),
        "stds_const": lambda: METHODS["stds"](D=k),  # with a constant LR, as the official code
        "lats": lambda: METHODS["lats"](D=k),
        "sops_aware": lambda: METHODS["sops_aware"](penalty=k),
    }
    if name not in table:
        raise SystemExit(f"--variant: unknown method {name!r}; one of {sorted(table)}")
    return table[name]()


def dense_model(task: str, data):
    """The task's dense checkpoint (trained once, cached as an artifact)."""
    data_kw, model_name, widths, epochs, lr = TASKS[task]
    folder = ROOT / task / "dense"
    if (folder / "artifact" / "spec.json").is_file():
        return load(folder / "artifact").train()
    seed_everything(0)
    model = from_spec(model_spec_for(model_name, data, widths, "lif", True))
    Trainer(model, data, TrainConfig(epochs=epochs, lr=lr), out_dir=folder, verbose=False).fit()
    save(model, folder / "artifact")
    return model


def run(task: str, variant: str, seed: int, epochs: int) -> Path:
    out = ROOT / task / f"{variant}-s{seed}.json"
    if out.is_file():
        return out
    data = load_data(DataConfig(**{**TASKS[task][0], "seed": seed}))
    dense = dense_model(task, data)
    if variant == "dense":
        model, wall = dense.eval(), 0.0
    else:
        seed_everything(seed)
        fresh = variant.startswith("esl")
        if fresh:
            model = from_spec(dense.spec)
            epochs = epochs + TASKS[task][3]
        else:
            model = copy.deepcopy(dense)
        base, kd = variant.removesuffix("+kd"), variant.endswith("+kd")
        methods = [method_for(base)]
        if kd:  # distillation from the dense checkpoint (also for ESL, which starts fresh)
            methods.append(METHODS["kl_kd"](teacher=dense))  # a frozen copy
        session = attach(model, methods)
        lr = TASKS[task][4] if fresh else 1e-3
        t0 = time.perf_counter()
        schedule = "constant" if variant.startswith("stds_const") else "cosine"
        cfg = TrainConfig(epochs=epochs, lr=lr, seed=seed, schedule=schedule)
        Trainer(model, data, cfg, session=session, verbose=False).fit()
        wall = time.perf_counter() - t0
        model = session.finalize().eval()
    x_seq = next(iter(data.test))[0]
    m = measure(model, data, latency_repeats=1).to_dict()
    row = {
        "task": task, "variant": variant, "seed": seed, "epochs": epochs, "wall_s": wall,
        "accuracy": m["accuracy"], "weight_sparsity": weight_sparsity(model),
        "connectivity": connectivity(model, x_seq),
        "neuron_sparsity": neuron_sparsity(model, x_seq),
        "sops_per_sample": m["sops_per_sample"], "macs_per_sample": m["macs_per_sample"],
        "energy_pj": dict(m["energy_pj_per_sample"]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=1))
    print(json.dumps({k: row[k] for k in ("task", "variant", "seed", "accuracy",
                                           "weight_sparsity", "sops_per_sample", "wall_s")}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--task", choices=sorted(TASKS), required=True)
    r.add_argument("--variant", required=True, help="dense, or method@knob, e.g. gradual@0.95")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--epochs", type=int, default=45)
    r.add_argument("--threads", type=int, default=1)
    t = sub.add_parser("table")
    t.add_argument("--out", default="docs/benchmarks_unstructured.md")
    args = ap.parse_args()
    if args.cmd == "run":
        set_threads(args.threads)
        torch.manual_seed(args.seed)
        run(args.task, args.variant, args.seed, args.epochs)
    else:
        table(Path(args.out))


def _rows() -> dict[str, dict[str, list[dict]]]:
    """task → variant → the runs (one per seed)."""
    out: dict[str, dict[str, list[dict]]] = {}
    for f in sorted(ROOT.glob("*/*.json")):
        row = json.loads(f.read_text())
        out.setdefault(row["task"], {}).setdefault(row["variant"], []).append(row)
    return out


def _mean(runs: list[dict], key: str) -> float:
    return sum(r[key] for r in runs) / len(runs)


def _acc(runs: list[dict]) -> str:
    accs = [100 * r["accuracy"] for r in runs]
    if len(accs) == 1:
        return f"{accs[0]:.2f}"
    mean = sum(accs) / len(accs)
    sd = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5
    return f"{mean:.2f} ± {sd:.2f} (n={len(accs)})"


def table(out: Path) -> None:
    """Markdown table per task and the accuracy-vs-SOPs plot next to it."""
    lines = []
    data = _rows()
    for task, variants in data.items():
        dense = variants.get("dense", [None])[0]
        lines += [f"### {task}", "", "| variant | accuracy % | weight sparsity | connectivity | "
                  "neuron sparsity | SOPs / sample | SOPs ÷ dense | L0 energy nJ | L1 energy nJ "
                  "| wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
        order = sorted(variants.items(), key=lambda kv: -_mean(kv[1], "sops_per_sample"))
        for variant, runs in order:
            sops = _mean(runs, "sops_per_sample")
            ratio = f"1/{dense['sops_per_sample'] / sops:.1f}" if dense and sops else "-"
            e = {k: sum(r["energy_pj"][k] for r in runs) / len(runs) / 1e3 for k in ("L0", "L1")}
            lines.append(
                f"| {variant} | {_acc(runs)} | {_mean(runs, 'weight_sparsity'):.1%} | "
                f"{_mean(runs, 'connectivity'):.2%} | {_mean(runs, 'neuron_sparsity'):.1%} | "
                f"{sops:,.0f} | {ratio} | {e['L0']:.1f} | {e['L1']:.1f} | "
                f"{_mean(runs, 'wall_s'):.0f} |")
        lines.append("")
    out.write_text("\n".join(lines))
    _plot(data, out.with_suffix(".png"))
    print("\n".join(lines))


def _plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(data), figsize=(5 * len(data), 4.6), squeeze=False)
    names = sorted({v.partition("@")[0] for variants in data.values() for v in variants})
    color = {n: plt.cm.tab20(i % 20) for i, n in enumerate(names)}  # one colour per method
    for ax, (task, variants) in zip(axes[0], data.items(), strict=True):
        by_method: dict[str, list[tuple[float, float]]] = {}
        for variant, runs in variants.items():
            point = (_mean(runs, "sops_per_sample"), 100 * _mean(runs, "accuracy"))
            by_method.setdefault(variant.partition("@")[0], []).append(point)
        for method, points in sorted(by_method.items()):
            points.sort()
            ax.plot(*zip(*points, strict=True), marker="o", color=color[method], label=method)
        ax.set(xscale="log", xlabel="SOPs per sample", ylabel="test accuracy %", title=task)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=color[n], marker="o", label=n) for n in names]
    fig.legend(handles=handles, loc="lower center", ncol=len(names), fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
