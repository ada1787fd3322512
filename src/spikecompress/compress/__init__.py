"""Compression methods: the Method contract, the Session that drives them, and every registered
method, importable by its class name::

    from spikecompress.compress import SCA, MagnitudePruning, attach
    session = attach(model, [MagnitudePruning(sparsity=0.8)])

``METHODS`` maps each registered name (the recipes' ``name:``) to its class.
"""

from spikecompress.compress.activity.activity import ActivityPenalty
from spikecompress.compress.coding.tsc import TSCConversion
from spikecompress.compress.coding.ttfs import TTFSConversion
from spikecompress.compress.distill.bntt_kd import BNTTDistillation
from spikecompress.compress.distill.kdsnn import KDSNN
from spikecompress.compress.distill.kl_kd import KLDistillation
from spikecompress.compress.distill.spike_kd import SpikeDistillation
from spikecompress.compress.method import Context, Method
from spikecompress.compress.parametrize import bake_, is_plain
from spikecompress.compress.prune.admm import ADMMPruning
from spikecompress.compress.prune.esl import ESLSNN
from spikecompress.compress.prune.gradr import GradR
from spikecompress.compress.prune.l1_filter import L1FilterPruning
from spikecompress.compress.prune.lats import LATS
from spikecompress.compress.prune.magnitude import MagnitudePruning
from spikecompress.compress.prune.pca_width import PCAWidth
from spikecompress.compress.prune.sca import SCA
from spikecompress.compress.prune.sdsnn import SDSNN
from spikecompress.compress.prune.slimming import NetworkSlimming
from spikecompress.compress.prune.sops_aware import SOPsAwarePruning
from spikecompress.compress.prune.stds import STDS
from spikecompress.compress.quant.admm_quant import ADMMQuantization
from spikecompress.compress.quant.binary import BinaryWeights
from spikecompress.compress.quant.istbp import IntegerSTBP
from spikecompress.compress.quant.mint import MINT
from spikecompress.compress.quant.uniform import UniformQuantization
from spikecompress.compress.quant.weight_sharing import WeightSharing
from spikecompress.compress.registry import METHODS
from spikecompress.compress.schedules import SCHEDULES, schedule_value
from spikecompress.compress.search.autosnn import AutoSNN
from spikecompress.compress.session import Session, attach
from spikecompress.compress.targets import select
from spikecompress.compress.temporal.ann_conversion import ANNConversion
from spikecompress.compress.temporal.lite_snn import LiteSNN
from spikecompress.compress.temporal.seenn import SEENN
from spikecompress.compress.temporal.ssnn import SSNN
from spikecompress.compress.temporal.temporal_pruning import TemporalPruning

__all__ = [
    "ADMMPruning",
    "ActivityPenalty",
    "ANNConversion",
    "AutoSNN",
    "Context",
    "ESLSNN",
    "GradR",
    "L1FilterPruning",
    "LATS",
    "LiteSNN",
    "METHODS",
    "MagnitudePruning",
    "Method",
    "NetworkSlimming",
    "PCAWidth",
    "SCA",
    "SCHEDULES",
    "SDSNN",
    "SEENN",
    "SOPsAwarePruning",
    "SSNN",
    "STDS",
    "Session",
    "TemporalPruning",
    "TSCConversion",
    "TTFSConversion",
    "UniformQuantization",
    "ADMMQuantization",
    "BinaryWeights",
    "IntegerSTBP",
    "MINT",
    "WeightSharing",
    "KLDistillation",
    "SpikeDistillation",
    "KDSNN",
    "BNTTDistillation",
    "attach",
    "bake_",
    "is_plain",
    "schedule_value",
    "select",
]
