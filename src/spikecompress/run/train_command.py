"""``spikecompress train``: one model on one dataset, resumable, with per-dataset default LRs.

Everything that can be checked is checked before the data is loaded: the ``--out`` folder, the
training and data settings, and the checkpoint a resumed run starts from.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import asdict
from pathlib import Path

import torch

from spikecompress.data import DATASETS, DataConfig, check_data, check_shards, load_data
from spikecompress.export import save
from spikecompress.models import MODELS, from_spec
from spikecompress.report.tables import print_firing_rates
from spikecompress.run.folders import check_out_dir
from spikecompress.snn.neuron import NEURONS
from spikecompress.train import TrainConfig, Trainer, seed_everything, set_threads
from spikecompress.train.checkpoint import POINTER, atomic_write_json, read_pointer
from spikecompress.train.distributed import barrier, env_world, init_distributed
from spikecompress.train.progress import printer

# Adam learning rates that train the default model well in a few epochs (benchmarks/); others 1e-3
DEFAULT_LR = {"digits": 5e-3, "event_digits": 5e-3, "mnist1d": 2e-3}
FALLBACK_LR = 1e-3


def default_lr(dataset: str) -> float:
    """The learning rate ``train`` uses for ``dataset`` when ``--lr`` is not given."""
    return DEFAULT_LR.get(dataset, FALLBACK_LR)


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


def dataset_arg(data: str, root: str | None) -> tuple[str, str | None]:
    """(dataset name, root) of ``--data``/``--root``: a path ending in .npz is the npz dataset
    read from that file; any other path is refused with how to point at a file."""
    if data in DATASETS:
        return data, root
    if data.endswith(".npz"):
        if root is not None and Path(root) != Path(data):
            raise ValueError(f"--data {data} is an .npz file and --root {root} another path: "
                             "give the file once (--data FILE.npz)")
        return "npz", data
    if os.sep in data or "/" in data or Path(data).exists():
        raise ValueError(f"--data {data}: not a dataset name; to train on your own arrays save "
                         "them in an .npz holding 'x' and 'y' and pass --data FILE.npz")
    return data, root  # DataConfig names the unknown dataset and lists the known ones


def data_config(args: argparse.Namespace) -> DataConfig:
    name, root = dataset_arg(args.data, args.root)
    return DataConfig(name=name, T=args.T, batch_size=args.batch_size, encoding=args.encoding,
                      root=root, seed=args.seed, limit=args.limit)


def train_config(args: argparse.Namespace, dataset: str) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs,
        lr=args.lr if args.lr is not None else default_lr(dataset),
        optimizer=args.optimizer,
        loss=args.loss,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        checkpoint_every=args.checkpoint_every,
        sync_batchnorm=args.sync_batchnorm,
    )


def check_device(device: str) -> None:
    """Refuse a CUDA device on a machine without CUDA before any work (the device string itself
    is validated by TrainConfig)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")


def check_model_names(model: str, neuron: str) -> None:
    """Refuse an unknown model or neuron name before the data is loaded (the builder checks the
    rest of the spec once the data's shapes are known)."""
    if model not in MODELS:
        raise ValueError(f"unknown model name {model!r} (known: {sorted(MODELS)})")
    if neuron not in NEURONS:
        raise ValueError(f"neuron must be one of {list(NEURONS)}, got {neuron!r}")


def resume_note(out: Path, epochs: int) -> str | None:
    """Where a run folder resumes ("resuming runs/a at epoch 2 of 4, step 12 ..."); None when
    it holds no checkpoint. A corrupt checkpoint raises CheckpointError before any work."""
    if not (out / POINTER).is_file():
        return None
    ptr = read_pointer(out)
    return (f"resuming {out} from its checkpoint ({out / POINTER}): epoch {ptr.get('epoch')} of "
            f"{epochs} done, step {ptr.get('step')}")


def train(args: argparse.Namespace) -> int:
    """``spikecompress train``: check, load the data, train (resuming), save and report. Under
    torchrun every rank trains its shard and rank 0 writes (``train.distributed``)."""
    set_threads(args.threads)
    out = check_out_dir(args.out, "--out")
    data_cfg = data_config(args)
    cfg = train_config(args, data_cfg.name)
    check_device(cfg.device)
    check_model_names(args.model, args.neuron)
    check_shards(data_cfg, env_world().rank, env_world().world_size)
    world, device = init_distributed(cfg.device)
    cfg = TrainConfig.from_dict({**cfg.to_dict(), "device": device})
    main = world.is_main
    say, note = printer(not args.quiet and main), resume_note(out, cfg.epochs)
    if note:
        printer(main)(note)
    check_data(data_cfg)
    say(f"loading {data_cfg.name} (T={data_cfg.T}) ...")
    data = load_data(data_cfg, world.rank, world.world_size)
    seed_everything(args.seed)
    model = from_spec(model_spec_for(args.model, data, args.widths, args.neuron, not args.ann))
    lr_from = "--lr" if args.lr is not None else f"the default for {data_cfg.name}"
    meta = {"model": model.spec, "data": asdict(data_cfg), "lr_from": lr_from}
    trainer = Trainer(model, data, cfg, out_dir=out, meta=meta, verbose=not args.quiet)
    metrics = trainer.fit()
    metrics["train"] = {**cfg.to_dict(), "lr_from": lr_from}
    if main:
        save(model, out / "artifact", meta={"T": args.T, "data": meta["data"]})
        atomic_write_json(out / "metrics.json", metrics)
    barrier()
    if not main:
        return 0
    print_firing_rates(metrics, title=f"{args.model} on {data_cfg.name}, T={args.T}")
    print(f"lr {cfg.lr:g} ({lr_from}), {cfg.epochs} epochs; wrote {out}")
    return 0
