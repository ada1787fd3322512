"""What each CLI subcommand does; ``cli.py`` only parses arguments."""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from spikecompress.compress import METHODS
from spikecompress.data import DATASETS, DataConfig, load_data
from spikecompress.export import load, read_spec, save
from spikecompress.measurement import evaluate, measure
from spikecompress.models import MODELS, from_spec
from spikecompress.report import print_comparison, print_metrics, write_report
from spikecompress.run import stages
from spikecompress.run.recipe_files import load_recipe
from spikecompress.snn import ENCODERS, NEURONS, SURROGATES
from spikecompress.train import (
    TrainConfig,
    Trainer,
    load_checkpoint,
    seed_everything,
    set_threads,
)
from spikecompress.train.checkpoint import CheckpointError, atomic_write_json

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, CheckpointError)


def model_spec_for(name: str, data, widths, neuron: str, spiking: bool) -> dict:
    """The model spec that fits a dataset: input channels, size and classes come from the data."""
    spec = {"name": name, "classes": data.classes, "spiking": spiking, "neuron": neuron}
    if name == "mlp":
        spec["in_features"] = math.prod(data.input_shape)
    else:
        spec["in_channels"] = data.input_shape[0]
        spec["input_size"] = data.input_shape[-1]
    if widths is not None:
        spec["widths"] = list(widths)
    return spec


def run_recipe(args: argparse.Namespace) -> int:
    """``spikecompress run``: load the recipe (file or shipped name), apply ``--set``, run it."""

    set_threads(args.threads)
    recipe = load_recipe(args.recipe, overrides=args.set)
    out = Path(args.out) if args.out else Path("runs") / Path(args.recipe).stem
    result = stages.run_recipe(recipe, out, verbose=not args.quiet, device=args.device)
    print_comparison(result["stages"], title=f"{args.recipe} → {out} (per test sample)")
    if args.quiet:  # otherwise the runner has said it
        print(f"wrote {result['artifact']}, {out / 'metrics.json'} and {result['report']}")
    return 0


def train(args: argparse.Namespace) -> int:

    set_threads(args.threads)
    cfg = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        loss=args.loss,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        checkpoint_every=args.checkpoint_every,
    )
    data_cfg = DataConfig(
        name=args.data,
        T=args.T,
        batch_size=args.batch_size,
        encoding=args.encoding,
        root=args.root,
        seed=args.seed,
        limit=args.limit,
    )
    data = load_data(data_cfg)
    seed_everything(args.seed)
    model = from_spec(model_spec_for(args.model, data, args.widths, args.neuron, not args.ann))
    meta = {"model": model.spec, "data": asdict(data_cfg)}
    trainer = Trainer(model, data, cfg, out_dir=args.out, meta=meta, verbose=not args.quiet)
    metrics = trainer.fit()
    out = Path(args.out)
    save(model, out / "artifact", meta={"T": args.T, "data": meta["data"]})
    atomic_write_json(out / "metrics.json", metrics)
    if metrics["resumed"]:
        Console(stderr=True).print(f"resumed from the checkpoint in {out}")
    _report(metrics, title=f"{args.model} on {args.data}, T={args.T}")
    return 0


def _report(metrics: dict, title: str) -> None:
    console = Console()
    table = Table(title=title)
    table.add_column("layer")
    table.add_column("firing rate", justify="right")
    for name, layer in metrics["layers"].items():
        table.add_row(name, f"{layer['firing_rate']:.4f}")
    console.print(table)
    console.print(
        f"accuracy {metrics['accuracy']:.4f}   spikes/sample {metrics['spikes_per_sample']:.0f}   "
        f"firing rate {metrics['firing_rate']:.4f}"
    )


def evaluate_run(args: argparse.Namespace) -> int:

    set_threads(args.threads)
    model, data_cfg = _model_and_data_config(Path(args.run), None, None)
    data = load_data(DataConfig(**data_cfg))
    metrics = evaluate(model.to(args.device), data.test, args.device)
    _report(metrics, title=f"{model.spec['name']} from {args.run}")
    return 0


def list_all(args: argparse.Namespace) -> int:
    import inspect


    console = Console()
    t = Table(title="compression methods")
    for col in ("name", "class", "file", "paper"):
        t.add_column(col)
    for name, cls in METHODS.items():
        t.add_row(name, cls.__name__, Path(inspect.getfile(cls)).name, getattr(cls, "PAPER", ""))
    console.print(t)
    for title, table in [
        ("models", MODELS),
        ("datasets", DATASETS),
        ("neurons", NEURONS),
        ("surrogates", SURROGATES),
        ("encodings", ENCODERS),
    ]:
        t = Table(title=title)
        t.add_column("name")
        t.add_column("implemented by")
        for name, obj in table.items():
            t.add_row(name, f"{obj.__module__}.{obj.__qualname__}")
        console.print(t)
    return 0


def demo(args: argparse.Namespace) -> int:
    """The main job: dense spiking CNN on the embedded digits → gradual magnitude pruning + 4-bit
    QAT (the shipped ``magnitude_qat`` recipe) → before/after table, artifact and report."""
    ns = argparse.Namespace(
        recipe="magnitude_qat", set=[], out=args.out, threads=args.threads, quiet=False,
        device="cpu",
    )
    return run_recipe(ns)


def _model_and_data_config(path: Path, data_name: str | None, T: int | None):
    """The model and data config of a run directory (checkpoint) or an artifact folder."""

    if (path / "checkpoint.json").exists():
        tensors, meta = load_checkpoint(path)
        model = from_spec(meta["model"])
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        data = dict(meta["data"])
    elif (path / "spec.json").exists():
        model, data = load(path), dict(read_spec(path)["meta"].get("data") or {})
    else:
        raise FileNotFoundError(
            f"{path} holds neither checkpoint.json (a run) nor spec.json (an artifact)"
        )
    if data_name is not None and data_name != data.get("name"):
        data = {"name": data_name}
    if not data.get("name"):
        raise ValueError(f"no data recorded in {path}: pass --data")
    if T is not None:
        data["T"] = T
    return model, data


def measure_run(args: argparse.Namespace) -> int:

    set_threads(args.threads)
    path = Path(args.path)
    model, data_cfg = _model_and_data_config(path, args.data, args.T)
    data = load_data(DataConfig(**data_cfg))
    artifact = path if (path / "spec.json").exists() else path / "artifact"
    if not (artifact / "spec.json").exists():  # a run killed before its end has no artifact yet
        artifact = None
    metrics = measure(model, data, profile=args.profile, artifact=artifact).to_dict()
    metrics["data"] = data_cfg
    out = Path(args.out) if args.out else path / "metrics.json"
    atomic_write_json(out, metrics)

    print_metrics(metrics, title=f"{path} on {data_cfg['name']}")
    return 0


def report_runs(args: argparse.Namespace) -> int:
    import json


    runs = {}
    for run in args.runs:
        file = Path(run) / "metrics.json"
        try:
            m = json.loads(file.read_text())
        except (FileNotFoundError, json.JSONDecodeError) as e:
            raise ValueError(
                f"cannot read {file}: {type(e).__name__}; run `spikecompress measure {run}` first"
            ) from None
        if "energy_pj_per_sample" not in m:
            raise ValueError(f"{file} is not a `spikecompress measure` record")
        name = Path(run).name or str(run)
        runs[name if name not in runs else str(run)] = m
    md, html = write_report(runs, args.out)
    print(f"wrote {md} and {html}")
    return 0


COMMANDS = {
    "run": run_recipe,
    "train": train,
    "eval": evaluate_run,
    "list": list_all,
    "demo": demo,
    "measure": measure_run,
    "report": report_runs,
}
