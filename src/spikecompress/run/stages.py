"""The stage runner: train → finalize → save → measure, stage after stage, resumable.

    run_recipe(load_recipe("magnitude_qat"), "runs/a")

Writes into ``out_dir``::

    recipe.effective.yaml            the recipe after overrides, every method field resolved
    stages/<i>-<name>/               the stage's Trainer checkpoints (resume point),
                      artifact/      its finalized model and
                      metrics.json   its measurement (written last: the stage's commit point)
    artifact/  metrics.json  report/ the final model, its metrics, a report comparing the stages

A killed run started again with the same ``out_dir`` skips every stage whose artifact and
metrics.json exist and resumes an interrupted stage from its last Trainer checkpoint. The methods
are attached *before* the Trainer resumes, so their parametrization buffers (masks, ...) live in
``model.state_dict()`` and come back with it; the resumed run ends with the same weights as an
uninterrupted one. Every stage after the first starts from the previous stage's saved artifact (in
memory or after a restart alike), so both paths see the same model.

This is the CLI's runner and sits above ``train`` and ``report`` (it imports them lazily).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

from torch import nn

from spikecompress.atomic import atomic_writer
from spikecompress.compress.session import attach
from spikecompress.data import load_data
from spikecompress.export import load, save
from spikecompress.export.artifact import SPEC_FILE, TENSOR_FILE
from spikecompress.measurement.metrics import measure
from spikecompress.models import from_spec
from spikecompress.report import write_report
from spikecompress.run.recipe import Recipe, Stage
from spikecompress.run.recipe_files import dump_yaml, parse_yaml
from spikecompress.snn.neuron import add_optional_state_
from spikecompress.train import TrainConfig, Trainer, load_checkpoint, seed_everything
from spikecompress.train.checkpoint import CheckpointError, atomic_write_json

EFFECTIVE = "recipe.effective.yaml"


def run_recipe(
    recipe: Recipe, out_dir: str | Path, verbose: bool = True, device: str = "cpu"
) -> dict:
    """Run every stage of ``recipe`` into ``out_dir`` (resuming what a killed run left).

    ``device``: where the stages train ("cpu", "cuda", "cuda:N"); every finalized model is moved
    to the CPU, saved and measured there.

    Returns ``{"stages": {stage name: metrics}, "metrics": final metrics, "artifact": path,
    "report": path of report.md}``.
    """

    out = Path(out_dir)
    _write_effective(recipe, out)
    loaded: dict[int, object] = {}  # T -> Data: each stage runs at its own T
    say = _printer(verbose)
    results: dict[str, dict] = {}
    previous: Path | None = None
    for i, stage in enumerate(recipe.stages):
        stage_dir = _stage_dir(out, i, stage)
        head = f"stage {i + 1}/{len(recipe.stages)} {stage.name!r}"
        if _stage_done(stage_dir):
            results[stage.name] = json.loads((stage_dir / "metrics.json").read_text())
            say(f"{head}: done in an earlier run, skipped")
        else:
            config = stage_data(recipe, stage)
            if config.T not in loaded:
                loaded[config.T] = load_data(config)
            data = loaded[config.T]
            say(f"{head}: T {config.T}, epochs {stage.epochs}, "
                f"methods {[m['name'] for m in stage.methods]}")
            model = _stage_input(recipe, stage, i, data, previous)
            results[stage.name] = _run_stage(
                recipe, stage, model, data, stage_dir, verbose, device
            )
        say(f"{head}: {_summary(results[stage.name])}")
        previous = stage_dir / "artifact"
    final = out / "artifact"
    _copy_artifact(_stage_dir(out, len(recipe.stages) - 1, recipe.stages[-1]) / "artifact", final)
    metrics = results[recipe.stages[-1].name]
    atomic_write_json(out / "metrics.json", metrics)
    md, _ = write_report(results, out / "report")
    say(f"wrote {final}, {out / 'metrics.json'} and {md}")
    return {"stages": results, "metrics": metrics, "artifact": str(final), "report": str(md)}


def stage_data(recipe: Recipe, stage: Stage):
    """The data config a stage runs on: the recipe's, at the stage's ``T`` when it names one."""
    return recipe.data if stage.T is None else replace(recipe.data, T=stage.T)


def _run_stage(
    recipe: Recipe, stage: Stage, model: nn.Module, data, stage_dir: Path, verbose: bool,
    device: str,
) -> dict:
    """Attach, train (resuming), finalize, save the artifact, then metrics.json (commit point)."""

    session = attach(model, stage.build_methods(), stage=stage.name)
    opt = stage.optimizer
    cfg = TrainConfig(
        epochs=stage.epochs,
        lr=opt.lr,
        optimizer=opt.name,
        weight_decay=opt.weight_decay,
        momentum=opt.momentum,
        schedule=opt.schedule,
        loss=stage.loss,
        seed=recipe.seed,
        device=device,
    )
    config = stage_data(recipe, stage)
    meta = {"data": asdict(config), "stage": stage.name, "recipe": recipe.to_dict()}
    trainer = Trainer(
        model,
        data if stage.train_on == "train" else replace(data, train=data.holdout),
        cfg,
        out_dir=stage_dir,
        session=session,
        meta={"model": model.spec, **meta},
        verbose=verbose,
    )
    fit = trainer.fit()
    model = session.finalize().cpu()
    artifact = save(model, stage_dir / "artifact", meta={"T": config.T, **meta})
    metrics = measure(model, data, artifact=artifact).to_dict()
    metrics.update(
        stage=stage.name,
        data=asdict(config),
        train={
            "epochs": stage.epochs,
            "best_accuracy": fit["best_accuracy"],
            "resumed": fit["resumed"],
            "history": fit["history"],
        },
    )
    atomic_write_json(stage_dir / "metrics.json", metrics)
    return metrics


def _stage_input(recipe: Recipe, stage: Stage, index: int, data, previous: Path | None):
    """The model a stage starts from: its ``init``, else the previous artifact, else a new one."""

    if stage.init is not None:
        return load_init(stage.init, f"stages.{index}.init")
    if previous is not None:
        return load(previous)
    seed_everything(recipe.seed)
    return from_spec(model_spec(recipe.model, data))


def model_spec(model: dict, data) -> dict:
    """``model`` with the keys the data decides filled in when absent: ``classes``, and
    ``in_features`` (mlp) or ``in_channels`` + ``input_size`` (the rest)."""
    filled = {"classes": data.classes}
    if model["name"] == "mlp":
        filled["in_features"] = math.prod(data.input_shape)
    else:
        filled["in_channels"] = data.input_shape[0]
        filled["input_size"] = data.input_shape[-1]
    return {**filled, **model}


def load_init(path: str | Path, field: str = "init") -> nn.Module:
    """A model from an artifact folder, a run holding ``artifact/``, or a run's checkpoint."""

    p = Path(path)
    for folder in (p, p / "artifact"):
        if (folder / "spec.json").is_file():
            return load(folder)
    if not (p / "checkpoint.json").is_file():
        raise FileNotFoundError(
            f"{field}: {p} holds neither an artifact (spec.json) nor a checkpoint (checkpoint.json)"
        )
    tensors, meta = load_checkpoint(p)
    if "model" not in meta:
        raise CheckpointError(f"{field}: the checkpoint in {p} records no model spec")
    model = from_spec(meta["model"])
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    add_optional_state_(model, state)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(
            f"{field}: checkpoint in {p} does not fit its model: {first}"
        ) from None
    return model


# -- files ---------------------------------------------------------------------------------------
def _write_effective(recipe: Recipe, out: Path) -> None:
    """Write recipe.effective.yaml, refusing to mix a different recipe into an existing run."""
    path = out / EFFECTIVE
    text = dump_yaml(recipe)
    if path.is_file():
        try:
            same = Recipe.from_dict(parse_yaml(path.read_text(), str(path))) == recipe
        except ValueError:
            same = False
        if not same:
            raise ValueError(
                f"{out} holds a run of a different recipe (see {path}); "
                "pass a new --out or delete it"
            )
    with atomic_writer(path) as f:
        f.write(text.encode())


def _stage_dir(out: Path, index: int, stage: Stage) -> Path:
    return out / "stages" / f"{index}-{stage.name}"


def _stage_done(stage_dir: Path) -> bool:
    return (stage_dir / "metrics.json").is_file() and (stage_dir / "artifact/spec.json").is_file()


def _copy_artifact(src: Path, dst: Path) -> None:
    """Copy an artifact byte for byte (tensor file first, spec.json last), so the stage's
    measured size holds for the copy."""

    for name in (TENSOR_FILE, SPEC_FILE):
        with atomic_writer(dst / name) as f:
            f.write((src / name).read_bytes())


def _summary(m: dict) -> str:
    nonzero = m["params_nonzero"] / m["params"] if m["params"] else 0.0
    return (
        f"accuracy {m['accuracy']:.4f}, non-zero {nonzero:.1%} of {m['params']:,} params, "
        f"{m['size_bytes']:,} bytes, {m['sops_per_sample']:,.0f} SOPs/sample"
    )


def _printer(verbose: bool):
    if not verbose:
        return lambda text: None
    from rich.console import Console

    console = Console(stderr=True)
    return lambda text: console.print(text, highlight=False)
