"""The stage runner: train → finalize → save → measure, stage after stage, resumable.

    run_recipe(load_recipe("magnitude_qat"), "runs/a")

Writes into ``out_dir``::

    recipe.effective.yaml            the recipe after overrides, every method field resolved
    stages/<i>-<name>/               the stage's Trainer checkpoints (resume point),
                      artifact/      its finalized model and
                      metrics.json   its measurement (written last: the stage's commit point)
    artifact/  metrics.json  report/ the final model, its metrics, a report comparing the stages

Before any training it loads every stage's ``init`` and checks it against the data, and loads the
data of every stage still to run. A killed run started again with the same ``out_dir`` skips every
stage whose artifact and metrics.json exist and resumes an interrupted stage from its last Trainer
checkpoint (and says where). A different recipe is refused in an ``out_dir`` where a stage has
finished; an unfinished start of a different recipe (it failed in its first stage) is replaced.
The methods are attached *before* the Trainer resumes, so their parametrization buffers (masks,
...) live in ``model.state_dict()`` and come back with it; the resumed run ends with the same
weights as an uninterrupted one. Every stage after the first starts from the previous stage's
saved artifact (in memory or after a restart alike), so both paths see the same model.

Distributed (under ``torchrun``, ``train.distributed``): every rank runs this same function. All
ranks check and load their data shard; rank 0 alone writes (recipe.effective.yaml, checkpoints,
artifacts, metrics, the report) while the others wait at a barrier where they would read what it
wrote; every rank measures the finalized model (the same model: the figures agree), so none waits
for a long measurement. Every rank resumes from the same checkpoint.

This is the CLI's runner and sits above ``train`` and ``report``.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from torch import nn

from spikecompress.atomic import atomic_writer
from spikecompress.compress.session import attach
from spikecompress.data import check_shards, load_data
from spikecompress.export import load, save
from spikecompress.export.artifact import SPEC_FILE, TENSOR_FILE
from spikecompress.measurement.metrics import measure
from spikecompress.models import EXTRAS, from_spec
from spikecompress.report import write_report
from spikecompress.run.folders import EFFECTIVE, load_model
from spikecompress.run.recipe import Recipe, Stage, stage_model, stage_ref
from spikecompress.run.recipe_files import check_run, dump_yaml, parse_yaml
from spikecompress.train import TrainConfig, Trainer, seed_everything
from spikecompress.train.checkpoint import POINTER, atomic_write_json, read_pointer
from spikecompress.train.distributed import World, barrier, env_world, init_distributed
from spikecompress.train.progress import printer


@dataclass
class _Run:
    """One call of ``run_recipe``: where it writes, how it talks, what it checked up front."""

    recipe: Recipe
    out: Path
    device: str
    verbose: bool
    world: World = field(default_factory=World)
    sync_batchnorm: bool = False
    inits: dict[int, nn.Module] = field(default_factory=dict)  # stage -> its ``init``'s model
    data: dict = field(default_factory=dict)  # T -> Data: each stage runs at its own T

    def say(self, text: str) -> None:  # progress (silent unless verbose; rank 0 only)
        printer(self.verbose and self.world.is_main)(text)

    def note(self, text: str) -> None:  # where a run resumes: always said (by rank 0)
        printer(self.world.is_main)(text)


def run_recipe(
    recipe: Recipe, out_dir: str | Path, verbose: bool = True, device: str = "cpu",
    sync_batchnorm: bool = False,
) -> dict:
    """Run every stage of ``recipe`` into ``out_dir`` (resuming what a killed run left).

    ``device``: where the stages train ("cpu", "cuda", "cuda:N"); every finalized model is moved
    to the CPU, saved and measured there. Under ``torchrun`` this joins the process group (see
    the module docstring; "cuda" becomes each rank's local GPU); ``sync_batchnorm``: BatchNorm
    over the global batch in every stage (``TrainConfig.sync_batchnorm``). Before any training:
    every stage's data at its T and ``init`` are checked (``recipe_files.check_run``), the data
    of every stage still to run is loaded, and each ``init`` that exists already is checked
    against its stage's data.

    Returns ``{"stages": {stage name: metrics}, "metrics": final metrics, "artifact": path,
    "report": path of report.md}``.
    """
    world = env_world()
    for stage in recipe.stages:  # before waiting for the other processes
        check_shards(stage_data(recipe, stage), world.rank, world.world_size)
    world, device = init_distributed(device)
    run = _Run(recipe, Path(out_dir), device, verbose, world, sync_batchnorm)
    effective = _prepare(run)
    results: dict[str, dict] = {}
    for i, stage in enumerate(recipe.stages):
        results[stage.name] = _do_stage(run, i)
    final = run.out / "artifact"
    metrics = results[recipe.stages[-1].name]
    md = run.out / "report" / "report.md"
    if world.is_main:
        last = _stage_dir(run.out, len(recipe.stages) - 1, recipe.stages[-1])
        _copy_artifact(last / "artifact", final)
        atomic_write_json(run.out / "metrics.json", metrics)
        md, _ = write_report(results, run.out / "report",
                             recipes=dict.fromkeys(results, effective))
    barrier()
    run.say(f"wrote {final}, {run.out / 'metrics.json'} and {md}")
    return {"stages": results, "metrics": metrics, "artifact": str(final), "report": str(md)}


def _prepare(run: _Run) -> str:
    """Check everything before the first stage, load the data, then (re)write the run folder's
    recipe.effective.yaml; returns its text."""
    recipe, out = run.recipe, run.out
    check_run(recipe, out)
    state = _out_state(recipe, out)
    barrier()  # every rank has read the folder before rank 0 writes into it
    todo = [i for i, s in enumerate(recipe.stages)
            if state != "resume" or not _stage_done(_stage_dir(out, i, s))]
    run.inits = {i: load_init(recipe.stages[i].init, f"stages.{i}.init") for i in todo
                 if recipe.stages[i].init is not None and not _inside(recipe.stages[i].init, out)}
    _load_stage_data(run, todo)
    for i in run.inits:
        _check_init_fits(run, i, run.inits[i])
    _check_teachers(run, todo)
    if state == "replace":
        run.note(f"{out}: replacing the unfinished start of another recipe (no stage of it had "
                 "finished)")
        if run.world.is_main:
            shutil.rmtree(out / "stages", ignore_errors=True)
    elif state == "resume":
        run.note(f"resuming the run in {out}")
        return (out / EFFECTIVE).read_text()
    effective = effective_text(recipe, run.inits)
    if run.world.is_main:
        with atomic_writer(out / EFFECTIVE) as f:
            f.write(effective.encode())
    barrier()
    return effective


def stage_data(recipe: Recipe, stage: Stage):
    """The data config a stage runs on: the recipe's, at the stage's ``T`` when it names one."""
    return recipe.data if stage.T is None else replace(recipe.data, T=stage.T)


def _do_stage(run: _Run, i: int) -> dict:
    """Stage ``i``: skipped when an earlier run finished it, else run (resuming its checkpoint)."""
    stage, n = run.recipe.stages[i], len(run.recipe.stages)
    stage_dir, head = _stage_dir(run.out, i, stage), f"stage {i + 1}/{n} {stage.name!r}"
    if _stage_done(stage_dir):
        result = json.loads((stage_dir / "metrics.json").read_text())
        run.say(f"{head}: done in an earlier run, skipped")
    else:
        if (stage_dir / POINTER).is_file():
            ptr = read_pointer(stage_dir)
            run.note(f"{head}: resuming from {stage_dir / POINTER}: epoch {ptr.get('epoch')} of "
                     f"{stage.epochs} done, step {ptr.get('step')}")
        T = stage_data(run.recipe, stage).T
        data = run.data[T]
        run.say(f"{head}: T {T}, epochs {stage.epochs}, "
                f"methods {[m['name'] for m in stage.methods]}")
        model = _stage_input(run, i, data)
        result = _run_stage(run, stage, model, data, stage_dir, head)
    run.say(f"{head}: {_summary(result)}")
    return result


def _run_stage(
    run: _Run, stage: Stage, model: nn.Module, data, stage_dir: Path, head: str
) -> dict:
    """Attach, train (resuming), finalize, save the artifact, then metrics.json (commit point)."""
    recipe = run.recipe
    session = attach(model, stage.build_methods(lambda name: str(_artifact_of_stage(run, name))),
                     stage=stage.name)
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
        device=run.device,
        sync_batchnorm=run.sync_batchnorm,
    )
    config = stage_data(recipe, stage)
    meta = {"data": asdict(config), "stage": stage.name, "recipe": recipe.to_dict()}
    train = data if stage.train_on == "train" else replace(data, train=data.holdout)
    trainer = Trainer(model, train, cfg, out_dir=stage_dir, session=session,
                      meta={"model": model.spec, **meta}, verbose=run.verbose)
    fit = trainer.fit()
    model = session.finalize().cpu()
    artifact = stage_dir / "artifact"
    if run.world.is_main:
        save(model, artifact, meta={"T": config.T, **meta})
    barrier()  # the artifact is on disk for every rank (measured, and the next stage's input)
    run.say(f"{head}: measuring the finalized model (accuracy, SOPs, energy, latency) ...")
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
    if "distributed" in fit:
        metrics["train"]["distributed"] = fit["distributed"]
    if run.world.is_main:
        atomic_write_json(stage_dir / "metrics.json", metrics)
    barrier()  # no rank reads this stage as unfinished once rank 0 has committed it
    return metrics


def _stage_input(run: _Run, index: int, data) -> nn.Module:
    """The model a stage starts from: its ``init``, else the previous artifact, else a new one."""
    stage = run.recipe.stages[index]
    if stage.init is not None:
        model = run.inits.pop(index, None)  # loaded and checked before the first stage
        if model is None:  # an init this run wrote (an earlier stage's folder)
            model = load_init(stage.init, f"stages.{index}.init")
            _check_init_fits(run, index, model)
        return model
    if stage.model is not None:
        seed_everything(run.recipe.seed)
        return from_spec(model_spec(stage_model(run.recipe, stage), data, stage_T(run, stage)))
    if index > 0:
        prev = run.recipe.stages[index - 1]
        return load(_stage_dir(run.out, index - 1, prev) / "artifact")
    seed_everything(run.recipe.seed)
    return from_spec(model_spec(run.recipe.model, data, stage_T(run, stage)))


def _artifact_of_stage(run: _Run, name: str) -> Path:
    """The artifact folder of the stage called ``name`` in this run."""
    i = [s.name for s in run.recipe.stages].index(name)
    return _stage_dir(run.out, i, run.recipe.stages[i]) / "artifact"


def stage_T(run: _Run, stage: Stage) -> int:
    """The time steps a stage runs at."""
    return stage_data(run.recipe, stage).T


def model_spec(model: dict, data, T: int | None = None) -> dict:
    """``model`` with the keys the data decides filled in when absent: ``classes``, and
    ``in_features`` (mlp) or ``in_channels`` + ``input_size`` (the rest); ``steps`` = ``T`` for
    a model with BNTT (``norm: bntt``: one BatchNorm per time step)."""
    filled = {"classes": data.classes}
    if model["name"] == "mlp":
        filled["in_features"] = math.prod(data.input_shape)
    else:
        filled["in_channels"] = data.input_shape[0]
        filled["input_size"] = data.input_shape[-1]
    spec = {**filled, **model}
    if spec.get("norm") == "bntt" and spec.get("steps") is None and T is not None:
        spec["steps"] = T
    return spec


def load_init(path: str | Path, field: str = "init") -> nn.Module:
    """A model from an artifact folder, a run or stage folder holding ``artifact/``, or a run's
    checkpoint; errors are one line starting with ``field``."""
    return load_model(path, field)


# -- checks before any work ----------------------------------------------------------------------
def _load_stage_data(run: _Run, todo: list[int]) -> None:
    """Load the data of every stage still to run (once per T), saying so: it can take a while."""
    for i in todo:
        config = stage_data(run.recipe, run.recipe.stages[i])
        if config.T not in run.data:
            run.say(f"loading {config.name} (T={config.T}) ...")
            run.data[config.T] = load_data(config, run.world.rank, run.world.world_size)


def _check_init_fits(run: _Run, index: int, model: nn.Module) -> None:
    """Stage ``index``'s ``init`` model must take its data's inputs and classes (one line naming
    the field and both values)."""
    stage = run.recipe.stages[index]
    data = run.data[stage_data(run.recipe, stage).T]
    spec = model.spec
    want = model_spec({"name": spec["name"]}, data)
    for key in ("classes", "in_channels", "input_size", "in_features"):
        if key in spec and key in want and spec[key] != want[key]:
            raise ValueError(
                f"stages.{index}.init: the {spec['name']} model in {stage.init} has {key} "
                f"{spec[key]}, but the data {data.name!r} needs {want[key]}"
            )


def _check_teachers(run: _Run, todo: list[int]) -> None:
    """Every teacher a stage names by path loads and has its stage's classes (one line naming
    the field); ``stage:NAME`` teachers are this run's own and checked by the recipe."""
    for i in todo:
        stage = run.recipe.stages[i]
        classes = run.data[stage_data(run.recipe, stage).T].classes
        for k, m in enumerate(stage.methods):
            teacher, field = m.get("teacher"), f"stages.{i}.methods.{k}.teacher"
            if not isinstance(teacher, str) or stage_ref(teacher) is not None:
                continue
            spec = getattr(load_init(teacher, field), "spec", None) or {}
            if spec.get("classes", classes) != classes:
                raise ValueError(f"{field}: the teacher in {teacher} has {spec['classes']} "
                                 f"classes, the data {classes}")


def _inside(path: str | Path, out: Path) -> bool:
    """Whether ``path`` lies in ``out`` (an init an earlier stage of this run writes)."""
    return Path(path).expanduser().resolve().is_relative_to(out.expanduser().resolve())


def effective_text(recipe: Recipe, inits: dict[int, nn.Module]) -> str:
    """recipe.effective.yaml: the recipe after overrides, every method field resolved, and the
    model the run really starts from: when the first stage starts from an ``init``, ``model`` is
    the model that init holds (the recipe's is not used); every ``init``'s model is a comment."""
    effective = recipe
    lines = ["# the recipe as run: overrides applied, every method field resolved"]
    for i, model in sorted(inits.items()):
        spec = {k: v for k, v in model.spec.items() if k not in EXTRAS}
        lines.append(f"# stages.{i}.init {recipe.stages[i].init} holds {json.dumps(spec)}")
        if i == 0:
            try:
                effective = replace(recipe, model=spec)
            except ValueError as e:  # a spec the recipe schema cannot hold: keep the comment
                lines.append(f"# (model left as written: {e})")
    return "\n".join(lines) + "\n" + dump_yaml(effective)


def _out_state(recipe: Recipe, out: Path) -> str:
    """"new" (no run in ``out``), "resume" (a run of this recipe) or "replace" (the unfinished
    start of a different recipe, e.g. one that diverged in its first stage: no stage finished).
    A different recipe that finished a stage is refused: its results must not mix with these."""
    path = out / EFFECTIVE
    if not path.is_file():
        return "new"
    try:
        same = _comparable(Recipe.from_dict(parse_yaml(path.read_text(), str(path)))) == (
            _comparable(recipe))
    except ValueError:
        same = False
    if same:
        return "resume"
    done = sorted(d.name for d in (out / "stages").glob("*") if _stage_done(d))
    if done:
        raise ValueError(f"{out} holds a run of a different recipe (see {path}) whose stage "
                         f"{done[0]!r} finished; pass a new --out or delete it")
    return "replace"


def _comparable(recipe: Recipe) -> dict:
    """The recipe as compared across runs: without ``model`` when the first stage starts from
    an ``init`` (the effective recipe records the init's model there, the recipe's is unused)."""
    d = recipe.to_dict()
    if recipe.stages[0].init is not None:
        d.pop("model")
    return d


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
