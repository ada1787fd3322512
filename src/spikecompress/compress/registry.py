"""METHODS: the one literal table of registered compression methods (name → class).

Adding a method touches two places: its own file and this table; the contract test picks it up.
"""

from spikecompress.compress.activity.activity import ActivityPenalty
from spikecompress.compress.coding.tsc import TSCConversion
from spikecompress.compress.coding.ttfs import TTFSConversion
from spikecompress.compress.distill.bntt_kd import BNTTDistillation
from spikecompress.compress.distill.kdsnn import KDSNN
from spikecompress.compress.distill.kl_kd import KLDistillation
from spikecompress.compress.distill.spike_kd import SpikeDistillation
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
from spikecompress.compress.search.autosnn import AutoSNN
from spikecompress.compress.temporal.ann_conversion import ANNConversion
from spikecompress.compress.temporal.lite_snn import LiteSNN
from spikecompress.compress.temporal.seenn import SEENN
from spikecompress.compress.temporal.ssnn import SSNN
from spikecompress.compress.temporal.temporal_pruning import TemporalPruning

METHODS = {
    "magnitude": MagnitudePruning,
    "esl": ESLSNN,
    "admm": ADMMPruning,
    "gradr": GradR,
    "stds": STDS,
    "lats": LATS,
    "sops_aware": SOPsAwarePruning,
    "sca": SCA,
    "pca_width": PCAWidth,
    "slimming": NetworkSlimming,
    "l1_filter": L1FilterPruning,
    "sdsnn": SDSNN,
    "uniform_quant": UniformQuantization,
    "istbp": IntegerSTBP,
    "admm_quant": ADMMQuantization,
    "mint": MINT,
    "weight_sharing": WeightSharing,
    "binary": BinaryWeights,
    "temporal_pruning": TemporalPruning,
    "ann_conversion": ANNConversion,
    "tsc": TSCConversion,
    "ttfs": TTFSConversion,
    "ssnn": SSNN,
    "seenn": SEENN,
    "lite_snn": LiteSNN,
    "autosnn": AutoSNN,
    "kl_kd": KLDistillation,
    "spike_kd": SpikeDistillation,
    "kdsnn": KDSNN,
    "bntt_kd": BNTTDistillation,
    "activity": ActivityPenalty,
}
