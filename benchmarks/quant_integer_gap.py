"""Why 4-bit LSQ weights lost accuracy on MNIST-1D's integer grid: the LSQ paper's initial step.

Quantizes the dense model's BN-folded weights to 4 bits per output channel with each scale rule
and measures the test accuracy before any training: the LSQ paper's start 2·mean|W| / sqrt(qmax)
against the least-squares step (``lsq_init``'s default since) and the max-|W| step.

    python benchmarks/quant_integer_gap.py DENSE_ARTIFACT   (conv1d_net width 64, MNIST-1D)
"""

import copy
import sys

import torch
from torch.nn.utils import parametrize

import spikecompress as sc
from spikecompress.compress.quant.quantizers import WeightQuantizer
from spikecompress.compress.targets import select
from spikecompress.data import DataConfig, load_data
from spikecompress.models.bn_fold import fold_batchnorm_

torch.set_num_threads(1)
data = load_data(DataConfig(name="mnist1d", T=4, batch_size=64))
dense = sc.load(sys.argv[1]).eval()
for name, kw in [("max-|W| step", dict(scale="max")),
                 ("least-squares step", dict(scale="least_squares")),
                 ("LSQ, paper's start", dict(scale="lsq", lsq_init="paper")),
                 ("LSQ, least-squares start", dict(scale="lsq"))]:
    model = copy.deepcopy(dense)
    fold_batchnorm_(model)
    for _, layer in select(model):
        parametrize.register_parametrization(
            layer, "weight", WeightQuantizer(layer.weight, 4, per_channel=True, **kw))
    print(f"{name}: {100 * sc.evaluate(model, data.test)['accuracy']:.1f} %", flush=True)
