"""Models from SpikingJelly, snnTorch and Norse in (issue 19): agreement, SOPs, one compression.

For each framework a small conv net written the way its tutorials write it is trained **in that
framework** on sklearn digits (8×8, T = 4, Adam 5e-3, ``--epochs`` (15), seed 0), then
converted with ``sc.interop.from_<framework>`` and compared on the whole test set (360 samples):

* agreement: every neuron layer's spikes and the outputs, ours against the framework's own forward
  (the number of differing elements, and the largest output difference);
* SOPs per sample: ours (``sc.count``, zero weights skipped, so dense here) against the
  framework's own counter where it has one (SpikingJelly's ``SynOpCounter``; for snnTorch, which
  has none, NeuroBench's per-layer ``single_layer_MACs`` on the inputs each conv / linear gets in
  snnTorch's own run — NeuroBench's aggregate ``SynapticOperations`` reported 0.25 % more than
  the sum of its own per-layer counts on one trained net, so the per-layer path is used; Norse
  1.1.0 has none);
* one compression on the converted model: magnitude 80 % (cubic schedule) + 4-bit
  ``uniform_quant``, ``--compress-epochs`` (10) at Adam 1e-3 with our Trainer; accuracy before and
  after (our ``measure``: arg-max of the mean output over time), non-zero parameters and the
  artifact's bytes on disk (``measure``'s ``size_bytes``).

    python benchmarks/interop.py --threads 1 --out docs/interop.jsonl   # then --table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import spikecompress as sc
from spikecompress.compress import METHODS
from spikecompress.compress.session import attach
from spikecompress.data import DataConfig, load_data
from spikecompress.train import TrainConfig, Trainer

T = 4


def _batches(loader):
    yield from loader


# --- the nets, as each framework's tutorials write them -------------------------------------

def sj_net():
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    net = nn.Sequential(
        layer.Conv2d(1, 16, 3, padding=1, bias=False), layer.BatchNorm2d(16),
        neuron.IFNode(surrogate_function=surrogate.ATan()), layer.MaxPool2d(2),
        layer.Conv2d(16, 32, 3, padding=1, bias=False), layer.BatchNorm2d(32),
        neuron.IFNode(surrogate_function=surrogate.ATan()), layer.MaxPool2d(2),
        layer.Flatten(), layer.Linear(32 * 2 * 2, 10, bias=False),
        neuron.IFNode(surrogate_function=surrogate.ATan()))
    functional.set_step_mode(net, "m")
    return net


def sj_run(net, x_seq):  # multi-step: the whole [T, B, ...] at once
    from spikingjelly.activation_based import functional

    functional.reset_net(net)
    out = net(x_seq)
    functional.reset_net(net)
    return out


def snntorch_net():
    import snntorch as snn

    return nn.Sequential(
        nn.Conv2d(1, 12, 3, padding=1), nn.MaxPool2d(2), snn.Leaky(beta=0.5, init_hidden=True),
        nn.Conv2d(12, 32, 3, padding=1), nn.MaxPool2d(2), snn.Leaky(beta=0.5, init_hidden=True),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10),
        snn.Leaky(beta=0.5, init_hidden=True, output=True))


def snntorch_run(net, x_seq):  # the tutorial's loop: one call per step, utils.reset first
    from snntorch import utils

    utils.reset(net)
    out = torch.stack([net(x)[0] for x in x_seq])
    utils.reset(net)
    return out


def norse_net():
    import norse.torch as norse

    return norse.SequentialState(
        nn.Conv2d(1, 16, 3, padding=1), norse.LIFCell(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), norse.LIFCell(), nn.MaxPool2d(2),
        nn.Flatten(), norse.LILinearCell(32 * 2 * 2, 10))


def norse_run(net, x_seq):  # cells: one call per step, the state threaded through
    state, outs = None, []
    for x in x_seq:
        out, state = net(x, state)
        outs.append(out)
    return torch.stack(outs)


FRAMEWORKS = {  # name -> (net, run, example of what from_<name> takes)
    "spikingjelly": (sj_net, sj_run, lambda x_seq: x_seq),
    "snntorch": (snntorch_net, snntorch_run, lambda x_seq: x_seq[0]),
    "norse": (norse_net, norse_run, lambda x_seq: x_seq[0]),
}


def train_foreign(name, data, epochs):
    make, run, _ = FRAMEWORKS[name]
    torch.manual_seed(0)
    net = make()
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    for _ in range(epochs):
        net.train()
        for x_seq, y in _batches(data.train):
            loss = F.cross_entropy(run(net, x_seq).mean(0), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def _spikes(model, run, x_seq, neuron_types):
    """Every neuron layer's output [T, B, ...] by module name (single-step calls stacked)."""
    got: dict[str, list] = {}
    hooks = [m.register_forward_hook(
        lambda mod, a, out, n=n: got.setdefault(n, []).append(out[0] if isinstance(out, tuple)
                                                             else out))
        for n, m in model.named_modules() if isinstance(m, neuron_types)]
    with torch.no_grad():
        out = run(model, x_seq)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v) if v[0].dim() == x_seq.dim() else torch.stack(v)
            for n, v in got.items()}, out


def agreement(name, net, ours, data):
    """(differing spike elements, spikes compared, largest output difference) on the test set."""
    from spikecompress.measurement.spikes import is_neuron

    foreign = tuple(type(m) for _, m in net.named_modules() if _is_foreign_neuron(m))
    ours_types = tuple({type(m) for m in ours.modules() if is_neuron(m)})
    diff = total = 0
    worst = 0.0
    run = FRAMEWORKS[name][1]
    for x_seq, _ in _batches(data.test):
        theirs, out_t = _spikes(net, run, x_seq, foreign)
        sc.reset_state(ours)
        mine, out_o = _spikes(ours, lambda m, x: m(x), x_seq, ours_types)
        sc.reset_state(ours)
        a = torch.cat([t.flatten() for t in theirs.values()])
        b = torch.cat([t.flatten() for t in mine.values()])
        if a.shape != b.shape:
            raise RuntimeError(f"{name}: {a.numel()} vs {b.numel()} neuron outputs")
        diff += int((a != b).sum())
        total += int(a.sum())
        worst = max(worst, float((out_t - out_o).abs().max()))
    return diff, total, worst


def _is_foreign_neuron(m):
    from spikecompress.snn.foreign import neuron_like

    return neuron_like(m) and "LILinear" not in type(m).__name__  # the read-out: the output


def their_sops(name, net, data):
    """SOPs per sample by the framework's own counter (or the one its users reach for)."""
    if name == "spikingjelly":
        from spikingjelly.activation_based import functional
        from spikingjelly.activation_based.op_counter import DispatchCounterMode, SynOpCounter

        sops = n = 0
        for x_seq, _ in _batches(data.test):
            functional.reset_net(net)
            counter = SynOpCounter()
            with torch.no_grad(), DispatchCounterMode([counter]):
                net(x_seq)
            sops += int(counter.get_total())
            n += x_seq.shape[1]
        functional.reset_net(net)
        return sops / n, "SpikingJelly SynOpCounter"
    if name == "snntorch":  # NeuroBench's per-layer count on the inputs snnTorch's run feeds
        from neurobench.metrics.utils.layers.macs import single_layer_MACs

        layers = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        total = n = 0
        for x_seq, _ in _batches(data.test):
            seen: list = []
            hooks = [m.register_forward_pre_hook(lambda m, a, seen=seen: seen.append((m, a[0])))
                     for m in layers]
            with torch.no_grad():
                snntorch_run(net, x_seq)
            for h in hooks:  # removed before counting: NeuroBench copies the layer, hooks too
                h.remove()
            for layer, inp in seen:
                ops, spiking = single_layer_MACs(inp, layer)
                total += ops if spiking else 0
            n += x_seq.shape[1]
        return total / n, "NeuroBench single_layer_MACs (effective ACs)"
    return None, "none (Norse 1.1.0 has no counter)"


def compress(model, data, epochs):
    methods = [METHODS["magnitude"](sparsity=0.8, schedule="cubic", until=0.6),
               METHODS["uniform_quant"](weight_bits=4)]
    session = attach(model, methods)
    Trainer(model, data, TrainConfig(epochs=epochs, lr=1e-3, seed=0), session=session,
            verbose=False).fit()
    return session.finalize()


def row(name, data, args) -> dict:
    start = time.perf_counter()
    net = train_foreign(name, data, args.epochs)
    x_seq, _ = next(iter(data.test))
    convert = getattr(sc.interop, f"from_{name}")
    ours = convert(net, FRAMEWORKS[name][2](x_seq)).eval()
    diff, spikes, worst = agreement(name, net, ours, data)
    theirs, counter = their_sops(name, net, data)
    before = sc.measure(ours, data, latency_repeats=1)
    small = compress(ours.train(), data, args.compress_epochs).eval()
    after = sc.measure(small, data, latency_repeats=1)
    return {"framework": name, "model": ours.spec, "spikes_compared": spikes,
            "spikes_differing": diff, "max_output_difference": worst,
            "sops_ours": before.sops_per_sample, "sops_theirs": theirs, "counter": counter,
            "accuracy": before.accuracy, "accuracy_compressed": after.accuracy,
            "params": before.params, "nonzero_compressed": after.params_nonzero,
            "bytes": before.size_bytes, "bytes_compressed": after.size_bytes,
            "seconds": round(time.perf_counter() - start, 1),
            "command": " ".join(sys.argv[1:])}


def table(path: Path) -> str:
    lines = ["| framework | model | spikes compared | differing | max output diff | SOPs / sample "
             "ours | theirs (counter) | accuracy | magnitude 80 % + 4-bit | non-zero weights | "
             "bytes on disk |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for line in path.read_text().splitlines():
        r = json.loads(line)
        kinds = " → ".join(n["type"] for n in r["model"]["nodes"])
        theirs = "n/a" if r["sops_theirs"] is None else f"{r['sops_theirs']:,.0f}"
        lines.append(
            f"| {r['framework']} | {kinds} | {r['spikes_compared']:,} | {r['spikes_differing']} "
            f"| {r['max_output_difference']:.3g} | {r['sops_ours']:,.0f} | {theirs} "
            f"({r['counter']}) | {100 * r['accuracy']:.2f} % | "
            f"{100 * r['accuracy_compressed']:.2f} % | {r['params']:,} → "
            f"{r['nonzero_compressed']:,} | {r['bytes']:,} → {r['bytes_compressed']:,} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--compress-epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs/interop.jsonl")
    ap.add_argument("--table", default=None)
    args = ap.parse_args()
    if args.table:
        print(table(Path(args.table)))
        return
    torch.set_num_threads(args.threads)
    data = load_data(DataConfig(name="digits", T=T, batch_size=64))
    out = Path(args.out)
    out.write_text("")
    for name in args.frameworks.split(","):
        r = row(name, data, args)
        print(json.dumps(r), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
