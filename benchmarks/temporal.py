"""Time-step reduction (issue 8): accuracy vs average time steps for every method, on event digits
and MNIST-1D, each variant one resumable recipe run; then one table of every stage's row.

    python benchmarks/temporal.py run --task events --variant tp --seed 0
    python benchmarks/temporal.py table            # docs/benchmarks_temporal.md

Tasks: ``events`` = event digits, conv_net [16, 32, 64]; ``mnist1d`` = MNIST-1D, conv1d_net
[64, 64, 64]; ``events_deep`` = event digits, an 8-conv VGG (spike vanishing grows with depth);
integrate-and-fire neurons with soft reset (the temporal-pruning papers' neuron)
for every variant; Adam, cosine; T_max = 5. Variants (E = the task's epoch budget):
``direct@T``   trained from scratch at T for E + 2·E/3 epochs (the whole gradual path's budget)
               with learnable thresholds and leaks (temporal_pruning attached): the control for
               spike vanishing at low T;
``tp``         progressive temporal pruning T = 5 (E epochs) → 3 → 2 → 1 (E/3 each at lr/5;
               ``tp@1`` at the full lr), every stage with temporal_pruning, each from the previous
               (rows at every T);
``tp_ann``     the authors' hybrid start: the ANN twin (average pooling where the model has
               pooling) trained E epochs at T = 1, converted (thresholds at the 90th percentile of
               each layer's activations, IF soft reset), then T = 5 → 3 → 2 → 1 (E/3 each);
``seenn1``     TET training at T = 5 (E epochs), then SEENN-I confidence exits at
               α ∈ {0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 0.999} (each a 0-epoch stage
               from the TET model);
``seenn2``     the same TET model, then a SEENN-II policy trained E/3 epochs with REINFORCE;
``seenn2h``    the same with 20% of the training set held out of TET training: the policy's
               rewards come from samples the SNN has not seen (``train_on: holdout``);
``lite@B``     LitE-SNN after E dense epochs at T = 5: E/2 epochs (half search of per-layer
               prune ratio × bits and T ∈ {1, 2, 3, 5} under Bit-SynOps budget B, half fine-tune);
``ssnn@S``     SSNN from scratch for E epochs: stage 1 at T = 5, later stages at the steps S
               (e.g. ``ssnn@3-1``), early classifiers in training only.
Rows report the measured accuracy, T, average time steps per sample (exits, stage weights), SOPs
and L0 energy per sample, and the smallest per-layer firing rate (spike vanishing).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spikecompress.run.recipe import Recipe
from spikecompress.run.stages import run_recipe
from spikecompress.train import set_threads

ROOT = Path("runs/bench_temporal")
NEURON = {"neuron": "if", "neuron_params": {"v_reset": None}}
TASKS = {  # data, model, epochs E, lr
    "events": ({"name": "event_digits", "T": 5, "batch_size": 64},
               {"name": "conv_net", "widths": [16, 32, 64], **NEURON}, 30, 5e-3),
    "mnist1d": ({"name": "mnist1d", "T": 5, "batch_size": 64},
                {"name": "conv1d_net", "widths": [64, 64, 64], **NEURON}, 40, 2e-3),
    "events_deep": ({"name": "event_digits", "T": 5, "batch_size": 64},
                    {"name": "vgg", "widths": [16, 16, "M", 32, 32, "M", 64, 64, 64, 64, "M"],
                     **NEURON}, 30, 2e-3),
}
ALPHAS = (0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 0.999)
TP = [{"name": "temporal_pruning"}]


def _stage(name: str, T: int, epochs: int, lr: float, methods=(), **extra) -> dict:
    return {"name": name, "T": T, "epochs": epochs, "optimizer": {"name": "adam", "lr": lr},
            "methods": list(methods), **extra}


def stages_for(task: str, variant: str, out: Path) -> list[dict]:
    """The recipe stages of one variant (``out``: the run folder, for ``init`` paths)."""
    _, _, E, lr = TASKS[task]
    name, _, knob = variant.partition("@")
    if name == "direct":
        return [_stage(f"T{knob}", int(knob), E + 2 * (E // 3), lr, TP)]
    if name == "tp":  # knob: the later stages' lr as a fraction of lr (default 1/5)
        late = lr * (float(knob) if knob else 0.2)
        return [_stage("T5", 5, E, lr, TP)] + [
            _stage(f"T{T}", T, E // 3, late, TP) for T in (3, 2, 1)]
    if name == "tp_ann":
        convert = {"name": "ann_conversion", "percentile": 90.0}
        return [_stage("ann", 1, E, lr), _stage("convert", 1, 1, 1e-9, [convert])] + [
            _stage(f"T{T}", T, E // 3, lr / 5, TP) for T in (5, 3, 2, 1)]
    tet = _stage("tet", 5, E, lr, loss="tet")
    base = str(out / "stages/0-tet/artifact")
    if name == "seenn1":
        return [tet] + [
            _stage(f"alpha{a}", 5, 0, lr, [{"name": "seenn", "alpha": a}], init=base)
            for a in ALPHAS]
    if name in ("seenn2", "seenn2h"):  # seenn2h: rewards from held-out samples
        policy = _stage("policy", 5, E // 3, lr, [{"name": "seenn", "mode": "policy"}], init=base)
        if name == "seenn2h":
            policy["train_on"] = "holdout"
        return [tet, policy]
    if name == "lite":  # knob: the Bit-SynOps budget
        lite = {"name": "lite_snn", "budget": float(knob), "search": 0.5,
                "candidates": {"ratios": [0.0, 0.5, 0.75], "bits": [8, 4, 2],
                               "steps": [1, 2, 3, 5]}}
        return [_stage("T5", 5, E, lr), _stage("lite", 5, E // 2, lr / 5, [lite])]
    if name == "ssnn":
        steps = [int(s) for s in knob.split("-")]
        return [_stage("ssnn", 5, E, lr, [{"name": "ssnn", "steps": steps, "transformer": "max"}])]
    raise SystemExit(f"unknown variant {variant!r}")


def run(task: str, variant: str, seed: int) -> Path:
    out = ROOT / task / f"{variant}-s{seed}"
    data, model, _, _ = TASKS[task]
    if variant == "seenn2h":
        data = {**data, "holdout": 0.2}
    if variant == "tp_ann":  # the ANN twin first; max pooling of spikes is not that of rates
        model = {**model, "spiking": False, **({"pool": "avg"} if "pool" in _params(model) else {})}
    recipe = Recipe.from_dict({"version": 1, "seed": seed, "model": model,
                               "data": {**data, "seed": seed},
                               "stages": stages_for(task, variant, out.resolve())})
    result = run_recipe(recipe, out, verbose=False)
    rows = [_row(task, variant, seed, stage, m) for stage, m in result["stages"].items()]
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    return out


def _params(model: dict) -> set[str]:
    import inspect

    from spikecompress.models import MODELS

    return set(inspect.signature(MODELS[model["name"]]).parameters)


def _row(task: str, variant: str, seed: int, stage: str, m: dict) -> dict:
    rates = {k: v["firing_rate"] for k, v in m["layers"].items() if v["firing_rate"] is not None}
    return {
        "task": task, "variant": variant, "seed": seed, "stage": stage,
        "accuracy": m["accuracy"], "T": m["time_steps"],
        "avg_steps": m.get("avg_time_steps", m["time_steps"]),
        "sops": m["sops_per_sample"], "macs": m["macs_per_sample"],
        "energy_L0_nJ": m["energy_pj_per_sample"]["L0"] / 1e3,
        "ann_L0_nJ": m["ann_energy_pj_per_sample"]["L0"] / 1e3,
        "min_rate": min(rates.values(), default=0.0), "rates": rates,
        "epochs": m["train"]["epochs"],
    }


def table(out: Path) -> None:
    lines = ["# Time-step reduction: accuracy vs average time steps", "",
             "`python benchmarks/temporal.py run --task <t> --variant <v> --seed 0`, then "
             "`python benchmarks/temporal.py table`. One seed, 1 thread.", ""]
    for task in TASKS:
        rows = [r for f in sorted((ROOT / task).glob("*/rows.json"))
                for r in json.loads(f.read_text())]
        if not rows:
            continue
        lines += [f"## {task}", "", "| variant | stage | epochs | T | avg steps | accuracy | "
                  "SOPs/sample | L0 nJ | ANN L0 nJ | lowest layer rate |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r['variant']} | {r['stage']} | {r['epochs']} | {r['T']} | "
                f"{r['avg_steps']:.2f} | {100 * r['accuracy']:.2f}% | {r['sops']:,.0f} | "
                f"{r['energy_L0_nJ']:.1f} | {r['ann_L0_nJ']:.1f} | {r['min_rate']:.4f} |")
        lines.append("")
    out.write_text("\n".join(lines))
    plot(out.with_suffix(".png"))


def plot(path: Path) -> None:
    """Accuracy vs average time steps, one panel per task, one series per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if list((ROOT / t).glob("*/rows.json"))]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for f in sorted((ROOT / task).glob("*/rows.json")):
            rows = [r for r in json.loads(f.read_text()) if r["stage"] not in ("ann", "convert")]
            rows = sorted((r for r in rows if r["stage"] != "tet" or r["variant"] == "seenn1"),
                          key=lambda r: r["avg_steps"])
            ax.plot([r["avg_steps"] for r in rows], [100 * r["accuracy"] for r in rows],
                    "o-" if len(rows) > 1 else "o", label=rows[0]["variant"])
        ax.set(title=task, xlabel="average time steps per sample", ylabel="test accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--task", choices=sorted(TASKS), required=True)
    r.add_argument("--variant", required=True)
    r.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("table")
    t.add_argument("--out", type=Path, default=Path("docs/benchmarks_temporal.md"))
    args = ap.parse_args()
    set_threads(1)
    if args.cmd == "run":
        print(run(args.task, args.variant, args.seed))
    else:
        table(args.out)


if __name__ == "__main__":
    main()
