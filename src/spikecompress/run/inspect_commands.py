"""``eval``, ``measure`` and ``report``: the commands that read model folders.

Each accepts a run folder (of ``run`` or ``train``), a stage folder (``runs/a/stages/1-x``) or an
artifact folder (``run/folders.py``). ``measure`` merges its record into the folder's metrics.json:
the training history and a stage's ``train`` record stay; ``report`` reads those files.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, fields
from pathlib import Path

from spikecompress.data import DataConfig, load_data
from spikecompress.measurement import evaluate, measure
from spikecompress.measurement.energy import get_profile
from spikecompress.report import print_metrics, write_report
from spikecompress.report.tables import print_firing_rates
from spikecompress.run.folders import (
    METRICS,
    check_out_dir,
    check_out_file,
    metrics_file,
    open_model,
    read_json,
    recipe_text,
)
from spikecompress.run.train_command import check_device, dataset_arg
from spikecompress.train import TrainConfig, set_threads
from spikecompress.train.checkpoint import atomic_write_json
from spikecompress.train.progress import printer

# what a report reads from each record: key -> the keys it reads inside it (None: a mapping)
REPORT_KEYS: dict[str, tuple[str, ...] | None] = {
    "accuracy": (), "params": (), "params_nonzero": (), "size_bytes": (), "time_steps": (),
    "spikes_per_sample": (), "sops_per_sample": (), "macs_per_sample": (),
    "energy_pj_per_sample": ("L0", "L1"), "ann_energy_pj_per_sample": ("L0", "L1"),
    "latency_ms": ("batch_1",), "layers": None,
}


def data_settings(recorded: dict, data: str | None, T: int | None, path: Path) -> dict:
    """The data config to evaluate on: the recorded one, another dataset (``--data``) or the
    recorded one at another ``--T``; only DataConfig's fields are kept."""
    config = dict(recorded)
    if data is not None:
        name, root = dataset_arg(data, None)
        if name != config.get("name") or (root is not None and root != config.get("root")):
            config = {"name": name, "root": root}
    if not config.get("name"):
        raise ValueError(f"no data recorded in {path}: pass --data")
    if T is not None:
        config["T"] = T
    known = {f.name for f in fields(DataConfig)}
    return {k: v for k, v in config.items() if k in known}


def evaluate_run(args: argparse.Namespace) -> int:
    """``spikecompress eval``: accuracy and firing rates of a folder's model on its test data."""
    set_threads(args.threads)
    check_device(TrainConfig(device=args.device).device)
    model, recorded, _ = open_model(args.run)
    config = DataConfig(**data_settings(recorded, None, None, Path(args.run)))
    printer()(f"loading {config.name} (T={config.T}) ...")
    metrics = evaluate(model.to(args.device), load_data(config).test, args.device)
    print_firing_rates(metrics, title=f"{model.spec['name']} from {args.run}")
    return 0


def measure_run(args: argparse.Namespace) -> int:
    """``spikecompress measure``: the full record, merged into ``--out`` (default: the folder's
    metrics.json, keeping what training wrote there; measure-<data>-T<T>.json beside it when
    ``--data`` / ``--T`` differ from what the folder's model was trained on)."""
    set_threads(args.threads)
    path = Path(args.path)
    if args.profile is not None:  # an unknown profile is refused before anything is measured
        get_profile(args.profile)  # (None: measure picks the model's matching profile)
    if args.out:
        check_out_file(args.out, "--out")
    model, recorded, artifact = open_model(path)
    config = DataConfig(**data_settings(recorded, args.data, args.T, path))
    out = check_out_file(Path(args.out) if args.out else default_out(path, recorded, config))
    say = printer()
    say(f"loading {config.name} (T={config.T}) ...")
    data = load_data(config)
    say(f"measuring {artifact or path} on {config.name}: accuracy, SOPs, energy, latency ...")
    metrics = measure(model, data, profile=args.profile, artifact=artifact).to_dict()
    metrics["data"] = asdict(config)
    atomic_write_json(out, {**_previous(out), **metrics})
    print_metrics(metrics, title=f"{path} on {config.name}")
    say(f"wrote {out}")
    return 0


def default_out(path: Path, recorded: dict, config: DataConfig) -> Path:
    """``<path>/metrics.json``, unless it would record another dataset or T than the one the
    folder's model was trained on (a run's record of its stages must stay what was run)."""
    same = all(recorded.get(k) == getattr(config, k) for k in ("name", "T", "root"))
    if same or not recorded:
        return path / METRICS
    return path / f"measure-{config.name}-T{config.T}.json"


def _previous(out: Path) -> dict:
    """What ``out`` holds already (a training record), or {} when absent or not a JSON object."""
    try:
        return read_json(out)
    except (FileNotFoundError, ValueError):
        return {}


def report_runs(args: argparse.Namespace) -> int:
    """``spikecompress report``: report.md + report.html comparing measured folders."""
    out = check_out_dir(args.out, "--out")
    seen = set()
    for run in args.runs:
        if Path(run).resolve() in seen:
            raise ValueError(f"{run} is given twice")
        seen.add(Path(run).resolve())
    runs, recipes = {}, {}
    for run in args.runs:
        record = measured_record(Path(run))
        name = Path(run).name or str(run)
        name = name if name not in runs else str(run)
        runs[name], recipes[name] = record, recipe_text(run) or ""
    md, html = write_report(runs, out, recipes=recipes)
    print(f"wrote {md} and {html}")
    return 0


def measured_record(path: Path) -> dict:
    """The measure record of a folder, checked for every key the report reads (one line naming
    the file and the missing or bad key)."""
    file = metrics_file(path)
    hint = f"run `spikecompress measure {path}` first"
    if not file.is_file():
        raise ValueError(f"cannot read {file}: no such file; {hint}")
    m = read_json(file)
    for key, inner in REPORT_KEYS.items():
        if key not in m:
            raise ValueError(f"{file}: missing key {key!r}, not a measure record; {hint}")
        problem = _bad_value(m[key], inner)
        if problem:
            raise ValueError(f"{file}: {key!r} must be {problem}, got {json.dumps(m[key])[:60]}")
    return m


def _bad_value(value: object, inner: tuple[str, ...] | None) -> str | None:
    """What ``value`` should have been (None when it is right): a number, a mapping of numbers
    under the keys ``inner``, or (``inner`` None) a mapping of mappings."""
    def number(v: object) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    if inner == ():
        return None if number(value) else "a number"
    if inner is None:
        ok = isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())
        return None if ok else "a mapping of per-layer mappings"
    ok = isinstance(value, dict) and all(number(value.get(k)) for k in inner)
    return None if ok else f"a mapping with numbers under {list(inner)}"
