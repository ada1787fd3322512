"""Overhead of ``count()``: a counted forward divided by a plain forward (issue 4, goal <= 1.5).

    python benchmarks/count_overhead.py [--threads 1] [--reps 15]

Same model, same input, interleaved repetitions (plain, counted, plain, counted, ...), medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spikecompress.measurement import count
from spikecompress.models import build
from spikecompress.snn import reset_state

CASES = {
    "conv_net 8x8 (digits)": (dict(name="conv_net", in_channels=1, input_size=8,
                                   widths=[16, 32, 64]), (1, 8, 8)),
    "conv1d_net w64 (MNIST-1D)": (dict(name="conv1d_net", in_channels=1, input_size=40,
                                       widths=[64, 64, 64]), (1, 40)),
    "conv_net 22x22x2 (events)": (dict(name="conv_net", in_channels=2, input_size=22,
                                       widths=[16, 32, 64]), (2, 22, 22)),
}


@torch.no_grad()
def ratio(spec: dict, shape: tuple, reps: int, T: int = 4, B: int = 64) -> tuple[float, ...]:
    torch.manual_seed(0)
    model = build(classes=10, **spec).eval()
    x_seq = torch.rand(T, B, *shape)
    plain, counted = [], []
    for _ in range(2):  # warm-up
        model(x_seq)
        count(model, x_seq)
    for _ in range(reps):
        t0 = time.perf_counter()
        model(x_seq)
        reset_state(model)
        t1 = time.perf_counter()
        count(model, x_seq)
        t2 = time.perf_counter()
        plain.append(t1 - t0)
        counted.append(t2 - t1)
    p, c = statistics.median(plain), statistics.median(counted)
    return p * 1e3, c * 1e3, c / p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"`python benchmarks/count_overhead.py --threads {args.threads} --reps {args.reps}` "
          f"(T=4, B=64)\n")
    print("| model | plain forward ms | counted forward ms | ratio |\n|---|---|---|---|")
    for name, (spec, shape) in CASES.items():
        p, c, r = ratio(spec, shape, args.reps)
        print(f"| {name} | {p:.2f} | {c:.2f} | {r:.2f} |", flush=True)


if __name__ == "__main__":
    main()
