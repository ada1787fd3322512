"""Dense anchors: train each reference model once, then measure it (issues 3 and 4).

    python benchmarks/dense_accuracy.py [--threads 2] [--only digits,mnist1d,event_digits]

Writes the table to docs/benchmarks_dense.md (merged into docs/benchmarks.md by hand) and prints it.
Every run is seeded (seed 0); wall time is the Trainer's, data generation excluded.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

from spikecompress.data import DataConfig, load_data
from spikecompress.measurement import measure
from spikecompress.models import from_spec
from spikecompress.run.commands import model_spec_for
from spikecompress.train import TrainConfig, Trainer, seed_everything, set_threads

# name -> (data config, model name, widths, epochs, lr, goal, the published anchor)
RUNS = {
    "digits": (dict(name="digits", T=4, batch_size=64), "conv_net", [16, 32, 64], 40, 5e-3, 0.99,
               "99.4-99.7"),
    "mnist1d": (dict(name="mnist1d", T=4, batch_size=64), "conv1d_net", [64, 64, 64], 60, 2e-3,
                0.965, "97.2"),
    "event_digits": (dict(name="event_digits", T=4, batch_size=64), "conv_net", [16, 32, 64], 30,
                     5e-3, 0.975, "98.1"),
}


def run_one(key: str) -> dict:
    data_kw, model_name, widths, epochs, lr, goal, anchor = RUNS[key]
    t0 = time.perf_counter()
    data = load_data(DataConfig(**data_kw))
    data_s = time.perf_counter() - t0
    seed_everything(0)
    model = from_spec(model_spec_for(model_name, data, widths, "lif", True))
    params = sum(p.numel() for p in model.parameters())
    metrics = Trainer(model, data, TrainConfig(epochs=epochs, lr=lr), verbose=False).fit()
    measured = measure(model, data).to_dict()
    return dict(
        measured=measured,
        task=key, model=f"{model_name} {widths}", params=params, epochs=epochs,
        acc=metrics["accuracy"], best=metrics["best_accuracy"], goal=goal, anchor=anchor,
        wall=metrics["wall_s"], data_s=data_s, fr=metrics["firing_rate"],
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default=",".join(RUNS))
    p.add_argument("--out", default="docs/benchmarks_dense.md")
    args = p.parse_args()
    set_threads(args.threads)
    rows = []
    for key in args.only.split(","):
        rows.append(run_one(key))
        r = rows[-1]
        print(f"{key}: final {r['acc']:.4f} best {r['best']:.4f} in {r['wall']:.0f} s", flush=True)
    lines = [
        f"Measured {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} threads, load average at the end {os.getloadavg()[0]:.2f}.",
        f"Command: `python benchmarks/dense_accuracy.py --threads {args.threads} "
        f"--only {args.only}`",
        "",
        "| task | model | params | epochs | final test acc | best epoch acc | goal | anchor "
        "| firing rate | train wall s | data s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok = "met" if r["acc"] >= r["goal"] else "MISSED"
        lines.append(
            f"| {r['task']} | {r['model']} | {r['params']:,} | {r['epochs']} "
            f"| {100 * r['acc']:.2f}% "
            f"| {100 * r['best']:.2f}% | >= {100 * r['goal']:.1f}% ({ok}) | {r['anchor']} "
            f"| {r['fr']:.3f} | {r['wall']:.0f} | {r['data_s']:.1f} |"
        )
    lines += ["", "Measured with `spikecompress.measure(model, data)` (45nm profile, per test "
              "sample, "
              "MACs = the real-valued first layer under direct coding, counted T times):", "",
              "| task | spikes | firing rate per layer | SOPs | MACs | L0 nJ | L1 nJ "
              "| ANN L0 / SNN L0 | ANN L1 / SNN L1 | bytes on disk |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["measured"]
        e, a = m["energy_pj_per_sample"], m["ann_energy_pj_per_sample"]
        rates = ", ".join(f"{v['firing_rate']:.3f}" for v in m["layers"].values()
                          if v["firing_rate"] is not None)
        lines.append(
            f"| {r['task']} | {m['spikes_per_sample']:,.0f} | {rates} "
            f"| {m['sops_per_sample']:,.0f} "
            f"| {m['macs_per_sample']:,.0f} | {e['L0'] / 1e3:,.1f} | {e['L1'] / 1e3:,.1f} "
            f"| {a['L0'] / e['L0']:.2f} | {a['L1'] / e['L1']:.2f} | {m['size_bytes']:,} |"
        )
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
