"""Where MNIST-1D loses accuracy on the integer grid: BN fold + input quantization alone (W8 U16,
with and without a fine-tune) vs 4-bit weights and membranes after 8 epochs.

    python benchmarks/quant_integer_gap.py DENSE_ARTIFACT   (conv1d_net width 64, MNIST-1D)
"""

import copy
import sys

import torch

import spikecompress as sc
from spikecompress.compress.quant.uniform import UniformQuantization
from spikecompress.compress.session import attach
from spikecompress.data import DataConfig, load_data
from spikecompress.train import TrainConfig, Trainer

torch.set_num_threads(1)
data = load_data(DataConfig(name="mnist1d", T=4, batch_size=64))
dense = sc.load(sys.argv[1])
for name, kw, epochs in [
    ("W8 U16, 3 epochs (fold + input only)", dict(weight_bits=8, membrane_bits=16), 3),
    ("W8 U16, no fine-tune", dict(weight_bits=8, membrane_bits=16), 0),
    ("W4 U4 LSQ per channel, 8 epochs",
     dict(weight_bits=4, membrane_bits=4, scale="lsq", per_channel=True), 8),
]:
    torch.manual_seed(0)
    model = copy.deepcopy(dense).train()
    session = attach(model, [UniformQuantization(**kw)])
    if epochs:
        Trainer(model, data, TrainConfig(epochs=epochs, lr=1e-3, seed=0), session=session,
                verbose=False).fit()
    else:  # one forward calibrates the input scale
        model.eval()
        model(next(iter(data.train))[0])
        sc.reset_state(model)
    final = session.finalize().eval()
    print(name, sc.evaluate(final, data.test)["accuracy"], flush=True)
