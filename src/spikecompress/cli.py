"""Command line: ``spikecompress run | train | eval | measure | report | list | demo``.

Errors a user can cause (bad argument, unknown model or dataset, missing file, corrupt checkpoint,
a distributed group that never forms) print one line ``spikecompress: error: ...`` and exit with
code 2. ``run``, ``train`` and ``demo`` also run under ``torchrun`` (one process per rank, see
``spikecompress.train.distributed``); the other commands run in one process.
"""

from __future__ import annotations

import argparse
import sys

from spikecompress._version import __version__
from spikecompress.run import commands
from spikecompress.train.distributed import env_world, shutdown

DISTRIBUTED_COMMANDS = ("run", "train", "demo")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the whole usage)
        raise UsageError(message)


class UsageError(ValueError):
    """A mistake in the command line."""


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", default="digits", help="dataset name (see `spikecompress list`) or FILE.npz"
    )
    p.add_argument("--T", type=int, default=4, help="time steps per sample")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--encoding", default="direct", help="direct | poisson | latency")
    p.add_argument("--root", default=None, help="local data directory, .npz file or cache dir")
    p.add_argument("--limit", type=int, default=None, help="use only this many training samples")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="conv_net", help="model name (see `spikecompress list`)")
    p.add_argument("--widths", type=_int_list, default=None, help="e.g. 16,32,64")
    p.add_argument("--neuron", default="lif", help="lif | if | plif")
    p.add_argument("--ann", action="store_true", help="train the ANN twin (ReLU, same topology)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument(
        "--lr", type=float, default=None,
        help="learning rate (default: per dataset, 5e-3 for digits and event_digits, 2e-3 for "
        "mnist1d, else 1e-3)",
    )
    p.add_argument("--optimizer", default="adam", help="adam | sgd")
    p.add_argument("--loss", default="ce", help="ce (mean logits) | tet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: $THREADS)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA")
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_sync_bn(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sync-batchnorm", action="store_true",
                   help="under torchrun: BatchNorm statistics over the global batch")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="spikecompress", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"spikecompress {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="run a recipe: stages of training with compression methods")
    p.add_argument("recipe", help="recipe YAML file, or the name of a shipped recipe")
    p.add_argument("--out", default=None, help="run folder (default: runs/<recipe>); resumes")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a recipe field, e.g. stages.1.epochs=2 (repeatable)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: $THREADS)")
    p.add_argument("--device", default="cpu", help="train on cpu | cuda[:N] (measured on CPU)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _add_sync_bn(p)

    p = sub.add_parser("train", help="train a model and write checkpoint + metrics.json to --out")
    _add_train_args(p)
    _add_data_args(p)
    p.add_argument("--out", required=True, help="run directory (resumes if it holds a checkpoint)")
    _add_sync_bn(p)

    _add_folder_parsers(sub)
    sub.add_parser("list", help="list recipes, methods, models, datasets, neurons, encodings")

    p = sub.add_parser(
        "demo", help="dense spiking CNN on digits → pruning + 4-bit QAT → before/after report"
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="runs/demo")
    return parser


def _add_folder_parsers(sub) -> None:
    """``eval``, ``measure`` and ``report``: the commands that read the folders runs write."""
    p = sub.add_parser("eval", help="evaluate a folder's model on its test data")
    p.add_argument("run", help="run folder (of `run` or `train`), stage folder or artifact folder")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("measure", help="measure a folder's model: accuracy, SOPs, energy, bytes")
    p.add_argument(
        "path", help="run folder (of `run` or `train`), stage folder or artifact folder"
    )
    p.add_argument("--data", default=None, help="dataset or FILE.npz (default: as recorded)")
    p.add_argument("--T", type=int, default=None, help="time steps (default: as recorded)")
    p.add_argument("--profile", default=None,
                   help="energy profile, e.g. 45nm-int8 (default: 45nm-int8 for a model on the "
                        "integer grid, else 45nm)")
    p.add_argument(
        "--out", default=None,
        help="metrics file, merged with what it holds (default: <path>/metrics.json; "
        "<path>/measure-<data>-T<T>.json for another --data or --T than recorded)",
    )
    p.add_argument("--threads", type=int, default=None)

    p = sub.add_parser("report", help="compare measured runs: report.md + report.html with plots")
    p.add_argument(
        "runs", nargs="+",
        help="measured folders: run folders (of `run`, or of `train` after `measure`), stage "
        "folders or artifact folders",
    )
    p.add_argument("--out", default="report", help="output folder")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; a user's error prints one line and returns 2."""
    try:
        args = build_parser().parse_args(argv)
        if args.command not in DISTRIBUTED_COMMANDS and env_world().world_size > 1:
            raise UsageError(f"{args.command} runs in one process: start it without torchrun")
        return commands.COMMANDS[args.command](args)
    except commands.USER_ERRORS as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"spikecompress: error: {msg}", file=sys.stderr)
        return 2
    finally:
        shutdown()
