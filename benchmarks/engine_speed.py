"""Engine speed: one SNN training step relative to the same network as an ANN (frameworks.md §4).

Network (input [T=4, B=32, 3, 32, 32]): conv3x3(3→64, no bias)+BN+LIF, conv3x3(64→128)+BN+LIF,
avgpool2, conv3x3(128→128)+BN+LIF, avgpool2, flatten, linear(8192→10); LIF tau=2,
decay_input=False, v_th=1, hard reset to 0, ATan surrogate. One iteration = forward + backward +
SGD(momentum) step, loss = cross-entropy of the time-mean logits.

Variants (all built from ``spikecompress.snn`` layers, conv/BN on the merged T·B batch):

* ``ann``   the same net with ReLU in place of LIF on [T·B] — the lower bound (T ANN passes);
* ``snn``   ``spikecompress.LIF`` (fused multi-step kernel with hand-written BPTT);
* ``naive`` (``--compare``) a Python loop over T of ``dynamics.step`` in plain autograd;
* ``ann_loopT`` / ``snn_stepconv`` (``--explore``) the ANN called once per time step on B, and the
  SNN with its convolutions run per time step (BN and LIF still on [T, B]).

All variants run in one process, warm-up first, then ``--reps`` round-robin repetitions with a
rotating start; we report median, min and IQR per variant and ratios to ``ann``. Peak memory is
``VmHWM`` of a fresh subprocess per variant that builds it and runs 2 iterations (imports included).
The markdown table is printed and appended to ``docs/benchmarks_engine.md``.

    python benchmarks/engine_speed.py [--reps 10] [--threads 2] [--compare] [--explore]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from _timing import (
    child_peak_rss,
    interleaved,
    loadavg,
    machine,
    paired_ratio,
    summary,
    vm_hwm_mb,
)
from spikecompress import snn
from spikecompress.snn import dynamics

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks_engine.md"
LIF_KW = dict(tau=2.0, decay_input=False, v_threshold=1.0, v_reset=0.0)
LABELS = {
    "ann": "ANN, ReLU on T·B (lower bound)",
    "snn": "SNN, spikecompress.LIF (fused)",
    "naive": "SNN, naive LIF (autograd loop of dynamics.step)",
    "ann_loopT": "ANN called T times on B",
    "snn_stepconv": "SNN, fused LIF, convs per time step",
}


class NaiveLIF(nn.Module):
    """LIF as a plain-autograd Python loop over T of ``dynamics.step`` (the in-repo reference)."""

    def __init__(self) -> None:
        super().__init__()
        self.ref = snn.LIF(**LIF_KW)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        m = self.ref
        k, a = (t.to(x_seq.dtype) for t in m._decay_gain())
        v_th = m.v_threshold.to(x_seq.dtype)
        v = torch.full_like(x_seq[0], m.reset.v_c)
        out = []
        for t in range(x_seq.shape[0]):
            s, v, _ = dynamics.step(x_seq[t], v, k, a, v_th, m.reset, m.surrogate)
            out.append(s)
        return torch.stack(out)


class StepConv(nn.Module):
    """Run a folded conv once per time step on [B, ...] instead of once on [T·B, ...]."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return torch.stack([nn.Conv2d.forward(self.conv, x) for x in x_seq])


class LoopT(nn.Module):
    """Call a network once per time step (T=1 slices), concatenating the outputs over time."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(x_seq[t : t + 1]) for t in range(x_seq.shape[0])])


def build(variant: str) -> nn.Module:
    """The benchmark network for one variant (same initial weights for every variant)."""
    torch.manual_seed(0)
    if variant in ("ann", "ann_loopT"):
        act = nn.ReLU
    elif variant == "naive":
        act = NaiveLIF
    else:
        act = lambda: snn.LIF(**LIF_KW)  # noqa: E731
    conv = (lambda c: StepConv(c)) if variant == "snn_stepconv" else (lambda c: c)
    net = nn.Sequential(
        conv(snn.Conv2d(3, 64, 3, padding=1, bias=False)), snn.BatchNorm2d(64), act(),
        conv(snn.Conv2d(64, 128, 3, padding=1, bias=False)), snn.BatchNorm2d(128), act(),
        snn.AvgPool2d(2),
        conv(snn.Conv2d(128, 128, 3, padding=1, bias=False)), snn.BatchNorm2d(128), act(),
        snn.AvgPool2d(2),
        snn.Flatten(), snn.Linear(8192, 10),
    )  # fmt: skip
    return LoopT(net) if variant == "ann_loopT" else net


def make_step(variant: str, T: int, B: int):
    """Build a variant; return (model, one-training-iteration closure)."""
    model = build(variant)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x_seq = torch.randn(B, 3, 32, 32, generator=g).unsqueeze(0).repeat(T, 1, 1, 1, 1)
    y = torch.randint(0, 10, (B,), generator=g)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        snn.reset_state(model)
        loss = F.cross_entropy(model(x_seq).mean(0), y)
        loss.backward()
        opt.step()
        return loss.item()

    step.x_seq = x_seq  # type: ignore[attr-defined]
    return model, step


def firing_rates(model: nn.Module, x_seq: torch.Tensor) -> list[float]:
    """Mean output of every spiking layer on one no-grad forward (sanity: net alive, ≈0.15)."""
    rates: list[float] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: rates.append(out.float().mean().item()))
        for m in model.modules()
        if isinstance(m, snn.LIF | NaiveLIF)
    ]
    with torch.no_grad():
        snn.reset_state(model)
        model(x_seq)
    for h in hooks:
        h.remove()
    snn.reset_state(model)
    return rates


def run_child(variant: str, T: int, B: int) -> None:
    _, step = make_step(variant, T, B)
    for _ in range(2):
        step()
    print(f"PEAK_RSS_MB {vm_hwm_mb():.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reps", type=int, default=10, help="interleaved repetitions (default 10)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up iterations per variant")
    p.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", 2)))
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--B", type=int, default=32)
    p.add_argument("--compare", action="store_true", help="add the naive autograd LIF")
    p.add_argument("--explore", action="store_true", help="add ann_loopT and snn_stepconv")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--no-write", action="store_true", help=f"do not append to {DOC.name}")
    p.add_argument("--out", type=Path, default=DOC, help="markdown file to append to")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        run_child(args.child, args.T, args.B)
        return

    variants = ["ann", "snn"] + ["naive"] * args.compare
    variants += ["ann_loopT", "snn_stepconv"] * args.explore
    command = shlex.join(["python", "benchmarks/engine_speed.py", *sys.argv[1:]])
    load0 = loadavg()
    print(f"# {command}\n# torch {torch.__version__}, {args.threads} threads, {machine()}")
    print(f"# load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)
    steps = {}
    for v in variants:
        model, step = make_step(v, args.T, args.B)
        steps[v] = step
        if v not in ("ann", "ann_loopT"):
            rates = ", ".join(f"{r:.3f}" for r in firing_rates(model, step.x_seq))
            print(f"# {v}: firing rates per LIF layer {rates}")
    times = interleaved(steps, args.reps, args.warmup)
    load1 = loadavg()
    rss = {}
    if not args.no_rss:
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        for v in variants:
            child_args = [
                "--child",
                v,
                "--threads",
                str(args.threads),
                "--T",
                str(args.T),
                "--B",
                str(args.B),
            ]
            rss[v] = child_peak_rss(__file__, child_args, env)
    load2 = loadavg()

    stats = {v: summary(times[v]) for v in variants}
    base, rbase = stats["ann"], rss.get("ann")
    rows = [
        "| variant | median s/iter | min s/iter | IQR s | median ÷ ANN | min ÷ ANN "
        "| paired ÷ ANN | peak RSS MB | RSS ÷ ANN |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        s = stats[v]
        mem = f"{rss[v]:.0f} | {rss[v] / rbase:.2f}" if rss else "– | –"
        rows.append(
            f"| {LABELS[v]} | {s['median']:.3f} | {s['min']:.3f} | {s['iqr']:.3f} "
            f"| **{s['median'] / base['median']:.3f}** | {s['min'] / base['min']:.3f} "
            f"| {paired_ratio(times[v], times['ann']):.3f} | {mem} |"
        )
    table = "\n".join(rows)
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    loads = (
        f"load average (1/5/15 min) at start {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, "
        f"after timing {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}, "
        f"after RSS children {load2[0]:.2f}/{load2[1]:.2f}/{load2[2]:.2f}"
    )
    section = (
        f"## Engine speed, {date}\n\n"
        f"`{command}` — torch {torch.__version__}, {args.threads} threads, "
        f"T={args.T}, B={args.B}, {args.reps} interleaved reps after {args.warmup} warm-up; "
        f"{machine()}; {loads}.\n\n{table}\n\n"
        "*paired ÷ ANN* = median over rounds of (variant ÷ ANN) within the same round.\n"
    )
    print("\n" + section)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        head = (
            ""
            if args.out.exists()
            else (
                "# Engine speed benchmarks\n\nGenerated by `benchmarks/engine_speed.py` "
                "(method: docs/specs frameworks.md §4). Newest run last.\n\n"
            )
        )
        with open(args.out, "a") as f:
            f.write(head + section + "\n")
        print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
