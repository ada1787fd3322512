"""What each CLI subcommand does; ``cli.py`` only parses arguments.

``train`` lives in ``train_command.py``; ``eval``, ``measure`` and ``report`` (the commands that
read model folders) in ``inspect_commands.py``; ``run``, ``list`` and ``demo`` here.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from rich.table import Table

from spikecompress.compress import METHODS
from spikecompress.data import DATASETS
from spikecompress.models import MODELS
from spikecompress.report import print_comparison
from spikecompress.report.tables import console_for
from spikecompress.run import stages
from spikecompress.run.folders import check_out_dir
from spikecompress.run.inspect_commands import evaluate_run, measure_run, report_runs
from spikecompress.run.recipe_files import load_recipe, read_recipe_text, shipped_recipes
from spikecompress.run.train_command import check_device, model_spec_for, train
from spikecompress.snn import ENCODERS, NEURONS, SURROGATES
from spikecompress.train import TrainConfig, set_threads
from spikecompress.train.checkpoint import CheckpointError
from spikecompress.train.distributed import DistributedError, env_world

# errors a user can cause: the CLI prints their first line and exits with code 2
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, CheckpointError, PermissionError, IsADirectoryError,
    NotADirectoryError, FileExistsError, DistributedError,
)


def run_recipe(args: argparse.Namespace) -> int:
    """``spikecompress run``: load the recipe (file or shipped name), apply ``--set``, check the
    output folder and the device, run it (``stages.run_recipe`` checks the data and inits)."""
    set_threads(args.threads)
    recipe = load_recipe(args.recipe, overrides=args.set)
    out = check_out_dir(args.out or Path("runs") / Path(args.recipe).stem, "--out")
    check_device(TrainConfig(device=args.device).device)
    result = stages.run_recipe(recipe, out, verbose=not args.quiet, device=args.device,
                               sync_batchnorm=args.sync_batchnorm)
    if env_world().rank != 0:  # rank 0 speaks for the run
        return 0
    print_comparison(result["stages"], title=f"{args.recipe} → {out} (per test sample)")
    if args.quiet:  # otherwise the runner has said it
        print(f"wrote {result['artifact']}, {out / 'metrics.json'} and {result['report']}")
    return 0


def recipe_description(name: str) -> str:
    """The first comment line of a shipped recipe (its one-line description)."""
    text, _ = read_recipe_text(name)
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def list_all(args: argparse.Namespace) -> int:
    """``spikecompress list``: recipes, methods, models, datasets, neurons, surrogates and
    encodings."""
    console = console_for(200)  # one line per recipe where the terminal is wide enough
    t = Table(title="recipes (spikecompress run <name>)")
    t.add_column("name", no_wrap=True)
    t.add_column("what it does")
    for name in shipped_recipes():
        t.add_row(name, recipe_description(name))
    console.print(t)
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
        device="cpu", sync_batchnorm=False,
    )
    return run_recipe(ns)


COMMANDS = {
    "run": run_recipe,
    "train": train,
    "eval": evaluate_run,
    "list": list_all,
    "demo": demo,
    "measure": measure_run,
    "report": report_runs,
}

__all__ = ["COMMANDS", "USER_ERRORS", "model_spec_for"]
