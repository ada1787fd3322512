"""Timing helpers for the benchmarks: interleaved repetitions, robust statistics, peak RSS.

Absolute times on a shared machine drift by 10 % and more between runs, so every benchmark here
times all variants in one process, round-robin with a rotating start (every variant sees the same
machine state), and reports ratios of medians (and of minima) to a baseline variant.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence


def interleaved(
    fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1, log: bool = True
) -> dict[str, list[float]]:
    """Time each ``fn`` ``reps`` times, round-robin, the start rotating by one every round.

    Every variant is warmed up ``warmup`` times first. Returns seconds per call for each name.
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
        if log:
            cells = "  ".join(f"{n} {times[n][-1]:.3f}" for n in names)
            print(f"  rep {r + 1:2d}/{reps}: {cells}  (load {loadavg()[0]:.2f})", flush=True)
    return times


def quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of a non-empty sequence."""
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(xs: Sequence[float]) -> dict[str, float]:
    """Median, minimum and interquartile range."""
    return {
        "median": statistics.median(xs),
        "min": min(xs),
        "iqr": quantile(xs, 0.75) - quantile(xs, 0.25),
    }


def paired_ratio(xs: Sequence[float], base: Sequence[float]) -> float:
    """Median of the per-round ratios xs[r] / base[r] (the rounds are interleaved)."""
    return statistics.median(x / b for x, b in zip(xs, base, strict=True))


def vm_hwm_mb() -> float:
    """Peak resident set size of this process (``VmHWM``), in MB; NaN where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def child_peak_rss(script: str, args: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Run ``python script *args`` in a fresh process; it must print ``PEAK_RSS_MB <float>``."""
    out = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, env=env, check=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("PEAK_RSS_MB"):
            return float(line.split()[1])
    raise RuntimeError(f"child printed no PEAK_RSS_MB line:\n{out}")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"
