"""Real speed of channel pruning: the physically pruned SNN next to a plain conv stack.

Network: a 6-conv VGG-style stack on 32×32 inputs, widths 64-64-M-128-128-M-256-256-M, then a
Linear read-out of the 4·4·256 features. The SNN is ``models.vgg`` (conv → BN → LIF, max
pooling; eval mode, BN not folded) on x_seq [T=4, B, 3, 32, 32]; the plain stack is
``nn.Conv2d`` (no bias) → ReLU [→ MaxPool] with the same widths on [T·B, 3, 32, 32] — the
physical limit of what removing channels buys on this CPU. Pruned SNNs come from the dense one by
``surgery.remove_channels_`` (per layer, the filters of smallest L1 norm; every channel group
keeps round(keep·C) channels); the plain stack is rebuilt with the same widths.

For T·B = 4 (B = 1) and T·B = 256 (B = 64), all ten variants (dense and four keep fractions, SNN
and plain) are timed in one process, round-robin with a rotating start, torch pinned to 1 thread,
``torch.inference_mode``; at T·B = 4 one timed sample is 20 calls in a row (the warm steady
state of a deployed model; one call per round would time cold caches). Speedup = median over
rounds of t(dense) / t(pruned) of the same kind (paired, same round). The goal (issue 7): the
SNN's speedup is ≥ 90 % of the plain stack's at every point.
Writes ``docs/benchmarks_structured_speed.md``.

    python benchmarks/structured_speed.py [--reps 15]
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

from _timing import interleaved, loadavg, machine
from spikecompress.compress.prune.groups import channel_groups
from spikecompress.compress.prune.surgery import remove_channels_
from spikecompress.models import build

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks_structured_speed.md"
LAYERS: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, "M"]
KEEPS = (0.75, 0.5, 0.3, 0.1)
T = 4


def snn(keep: float) -> nn.Module:
    """The dense SNN, or it with every group cut to round(keep·C) channels by filter L1 norm."""
    torch.manual_seed(0)
    model = build("vgg", in_channels=3, input_size=32, classes=10, widths=LAYERS).eval()
    if keep < 1:
        modules = dict(model.named_modules())
        drop = {}
        for g in channel_groups(model):
            norms = modules[g.name].weight.detach().abs().flatten(1).sum(1)  # [C]
            n_keep = max(1, round(keep * g.size))
            drop[g.name] = norms.argsort(descending=True)[n_keep:].tolist()
        remove_channels_(model, drop)
    return model.eval()


def plain(widths: list[int | str]) -> nn.Module:
    """conv3×3 (no bias) → ReLU [→ 2×2 max-pool] per width, then Linear: [N, 3, 32, 32] → [N, 10].
    """
    layers, c, side = [], 3, 32
    for w in widths:
        if w == "M":
            layers.append(nn.MaxPool2d(2))
            side //= 2
        else:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.ReLU()]
            c = w
    layers += [nn.Flatten(), nn.Linear(c * side * side, 10)]
    return nn.Sequential(*layers).eval()


def macs(widths: list[int | str]) -> int:
    """Multiply-accumulates of one forward of one image (convs and the read-out)."""
    total, c, side = 0, 3, 32
    for w in widths:
        if w == "M":
            side //= 2
        else:
            total += side * side * c * w * 9
            c = w
    return total + c * side * side * 10


def measure(batch: int, reps: int) -> list[dict]:
    models = {"snn 1.0": snn(1.0), "plain 1.0": plain(LAYERS)}
    for keep in KEEPS:
        models[f"snn {keep}"] = snn(keep)
        models[f"plain {keep}"] = plain(models[f"snn {keep}"].spec["widths"])
    x_seq = torch.rand(T, batch, 3, 32, 32)
    x = x_seq.flatten(0, 1)  # [T*B, 3, 32, 32]

    inner = 20 if batch == 1 else 1  # warm steady state: 20 calls in a row per timed sample

    def call(name: str):
        model, inp = models[name], (x_seq if name.startswith("snn") else x)

        def run():
            for _ in range(inner):
                model(inp)

        return run

    with torch.inference_mode():
        times = interleaved({n: call(n) for n in models}, reps)
    rows = []
    for keep in KEEPS:
        widths = models[f"snn {keep}"].spec["widths"]
        speed = {kind: statistics.median(d / p for d, p in zip(
            times[f"{kind} 1.0"], times[f"{kind} {keep}"], strict=True))
            for kind in ("snn", "plain")}
        rows.append({
            "TB": T * batch, "keep": keep, "widths": widths,
            "mac_cut": macs(LAYERS) / macs(widths), "plain": speed["plain"], "snn": speed["snn"],
            "ms_snn": statistics.median(times[f"snn {keep}"]) * 1e3 / inner,
            "ms_dense": statistics.median(times["snn 1.0"]) * 1e3 / inner,
        })
    return rows


def table(rows: list[dict]) -> str:
    head = ("| T·B | kept channels | MACs cut | plain conv stack speedup | pruned SNN speedup | "
            "SNN / plain | SNN ms (dense → pruned) |\n|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r['TB']} | {r['keep']:.0%} | {r['mac_cut']:.1f}× | {r['plain']:.2f}× | "
        f"{r['snn']:.2f}× | **{r['snn'] / r['plain']:.0%}** | "
        f"{r['ms_dense']:.1f} → {r['ms_snn']:.1f} |\n" for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for batch in (1, 64):
        print(f"T·B = {T * batch}", flush=True)
        rows += measure(batch, args.reps if batch == 1 else max(3, args.reps // 2))
    text = table(rows)
    print(text)
    met = all(r["snn"] >= 0.9 * r["plain"] for r in rows)
    cmd = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/structured_speed.py",
                                                          *sys.argv[1:]])
    DOC.write_text(
        "# Real speed of physical channel removal (issue 7)\n\n"
        f"`{cmd}` — {datetime.date.today()}, {machine()}, torch {torch.__version__}, 1 thread, "
        f"load average at the end {loadavg()[0]:.2f}.\n\n" + __doc__.split("\n\n", 1)[1] +
        "\n" + text + f"\nGoal (SNN speedup ≥ 90 % of the plain stack's at every point): "
        f"**{'met' if met else 'not met'}**.\n")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
