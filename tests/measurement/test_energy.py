import copy
import math
from dataclasses import replace

import pytest

from spikecompress.measurement.energy import (
    PROFILES,
    EnergyProfile,
    ann_energy_pj,
    energy_pj,
    get_profile,
    op_energies_pj,
    sram_access_pj,
)

# Hand network, T = 2, one sample, no biases:
#   real input x (3 features) -> Linear 3->2 (6 weights, all non-zero) -> LIF (2 neurons)
#   -> Linear 2->2 (weights [[1, 0], [1, 1]]: input 0 reaches 2 non-zero weights, input 1
#   reaches 1) -> LIF (2 neurons).
#   LIF-1 spikes: t=0 [1, 0], t=1 [1, 1].
#   MACs = 6 per step x 2 steps = 12 (real input: MACs, not SOPs)
#   SOPs = t=0: 2 + t=1: (2 + 1) = 5
#   neuron updates = 4 neurons x 2 steps = 8; params_nonzero = 6 + 3 = 9
#   spike_input_elements = 2 (layer-2 input) x 2 steps = 4; real_input_elements = 3 x 2 = 6
HAND = {
    "sops": 5, "macs": 12, "neuron_updates": 8, "spikes": 3, "dense_macs": 20,
    "params_nonzero": 9, "samples": 1, "time_steps": 2,
    "spike_input_elements": 4, "real_input_elements": 6,
}
FP32 = get_profile("45nm")
PJ_KEYS_L1 = ("ac_pj", "mac_pj", "neuron_pj", "weight_mem_pj", "membrane_mem_pj", "spike_mem_pj",
              "real_input_mem_pj")


def _custom(**changes) -> EnergyProfile:
    """fp32 with a non-zero neuron cost (2 x E_AC, §5.1), so every term is exercised."""
    return replace(FP32, name="custom", e_neuron_pj=1.8, **changes)


def test_presets_and_sources():
    assert (FP32.e_ac_pj, FP32.e_mac_pj) == (0.9, 4.6)
    same = {"name": "x", "source": "x"}
    assert replace(PROFILES["45nm"], **same) == replace(PROFILES["45nm-fp32"], **same)
    expected = {"45nm-fp16": (0.4, 1.5, 16), "45nm-int8": (0.03, 0.23, 8),
                "45nm-int32": (0.1, 3.2, 32), "45nm-fp32": (0.9, 4.6, 32)}
    for name, (ac, mac, bits) in expected.items():
        p = get_profile(name)
        assert (p.name, p.e_ac_pj, p.e_mac_pj, p.op_bits) == (name, ac, mac, bits)
    for p in PROFILES.values():
        assert "Horowitz" in p.source and "ISSCC 2014" in p.source
        assert "[unverified" in p.source and "[D" in p.source
        assert p.e_neuron_pj == 0.0 and p.access_width_bits == 64


def test_unknown_profile_names_known_ones():
    with pytest.raises(ValueError, match="7nm") as err:
        get_profile("7nm")
    for name in ("45nm", "45nm-fp32", "45nm-fp16", "45nm-int8"):
        assert name in str(err.value)


def test_hand_network_l0():
    # E0 = 0.9 * 5 + 4.6 * 12 + 0 * 8 = 4.5 + 55.2 = 59.7 pJ
    e = energy_pj(HAND, FP32)
    assert e["ac_pj"] == pytest.approx(4.5)
    assert e["mac_pj"] == pytest.approx(55.2)
    assert e["neuron_pj"] == 0.0
    assert e["total_pj"] == pytest.approx(59.7)
    # with E_neuron = 1.8 pJ: + 1.8 * 8 = 14.4 -> 74.1 pJ
    assert energy_pj(HAND, _custom())["total_pj"] == pytest.approx(74.1)


def test_hand_network_l1():
    # 32 KB buffers -> 20 pJ per 64-bit access; 32-bit weights/membrane/activations.
    # weights, per_timestep: 9 * 2 * 1 = 18 reads * 32 b = 576 b = 9 accesses -> 180 pJ
    # membrane, per_neuron_step: 2 * 8 = 16 words * 32 b = 512 b = 8 accesses -> 160 pJ
    # spikes: (8 writes + 4 reads) * 1 b = 12 b = 0.1875 accesses -> 3.75 pJ
    # real inputs: 6 * 32 b = 192 b = 3 accesses -> 60 pJ
    # E1 = 59.7 + 180 + 160 + 3.75 + 60 = 463.45 pJ
    e = energy_pj(HAND, FP32, level="L1")
    assert e["weight_mem_pj"] == pytest.approx(180.0)
    assert (e["weight_mem_bits"], e["weight_mem_accesses"]) == (576, 9)
    assert e["membrane_mem_pj"] == pytest.approx(160.0)
    assert e["spike_mem_pj"] == pytest.approx(3.75)
    assert e["spike_mem_bits"] == 12
    assert e["real_input_mem_pj"] == pytest.approx(60.0)
    assert e["total_pj"] == pytest.approx(463.45)
    assert e["total_pj"] == pytest.approx(sum(e[k] for k in PJ_KEYS_L1))


def test_hand_network_l1_other_dataflows():
    # per_event weights: sops + macs = 17 reads * 32 b / 64 = 8.5 accesses -> 170 pJ
    # per_event membrane: 2 * 5 + 8 = 18 words * 32 b / 64 = 9 accesses -> 180 pJ
    # stationary weights: 9 reads * 32 b / 64 = 4.5 accesses -> 90 pJ
    e = energy_pj(HAND, FP32, "L1", weight_reuse="per_event", state_traffic="per_event")
    assert e["weight_mem_pj"] == pytest.approx(170.0)
    assert e["membrane_mem_pj"] == pytest.approx(180.0)
    e = energy_pj(HAND, FP32, "L1", weight_reuse="stationary")
    assert e["weight_mem_pj"] == pytest.approx(90.0)
    # unpacked: each 1-bit spike still costs one 64-bit access: 12 accesses -> 240 pJ
    e = energy_pj(HAND, FP32, "L1", packed=False)
    assert (e["spike_mem_accesses"], e["spike_mem_pj"]) == (12, pytest.approx(240.0))
    assert e["weight_mem_pj"] == pytest.approx(18 * 20.0)


def test_ann_twin_hand():
    # dense twin: MACs 6 + 4 = 10 per pass, 4 ReLU outputs, 10 weights, inputs 3 + 2 = 5.
    # E0 = 4.6 * 10 = 46 pJ
    # weights: 10 * 32 b / 64 = 5 accesses -> 100 pJ
    # activations: (4 writes + 5 reads) * 32 b / 64 = 4.5 accesses -> 90 pJ;  E1 = 236 pJ
    e0 = ann_energy_pj(10, 4, FP32)
    assert (e0["ac_pj"], e0["total_pj"]) == (0.0, pytest.approx(46.0))
    e1 = ann_energy_pj(10, 4, FP32, "L1", params=10, input_elements=5, samples=1)
    assert e1["weight_mem_pj"] == pytest.approx(100.0)
    assert e1["activation_mem_pj"] == pytest.approx(90.0)
    assert e1["total_pj"] == pytest.approx(236.0)
    assert "membrane_mem_pj" not in e1
    with pytest.raises(ValueError, match="params"):
        ann_energy_pj(10, 4, FP32, "L1", input_elements=5, samples=1)
    # the twin pays the MAC at (b_w, b_a): int8 weights and activations cost 0.23 pJ on int8
    assert ann_energy_pj(10, 4, get_profile("45nm-int8"))["mac_pj"] == pytest.approx(2.3)


@pytest.mark.parametrize("field,term", [
    ("e_ac_pj", "ac_pj"), ("e_mac_pj", "mac_pj"), ("e_neuron_pj", "neuron_pj"),
])
def test_doubling_one_op_constant_doubles_only_its_term(field, term):
    base = _custom()
    doubled = replace(base, **{field: 2 * getattr(base, field)})
    e, e2 = energy_pj(HAND, base, "L1"), energy_pj(HAND, doubled, "L1")
    for key in PJ_KEYS_L1:
        assert e2[key] == (2 * e[key] if key == term else e[key]), key


def test_doubling_memory_constants_doubles_only_memory_terms():
    base = _custom(weight_buffer_bytes=16 * 1024)  # an interpolated point: 40/3 pJ
    doubled = replace(base, sram_pj_per_access=tuple(
        (c, 2 * e) for c, e in base.sram_pj_per_access))
    e, e2 = energy_pj(HAND, base, "L1"), energy_pj(HAND, doubled, "L1")
    for key in PJ_KEYS_L1:
        assert e2[key] == (2 * e[key] if "_mem_" in key else e[key]), key


def test_state_term_linear_in_membrane_bits_and_time_steps():
    def state(bits: int, t: int) -> float:
        counts = {**HAND, "neuron_updates": 4 * t, "time_steps": t}
        return energy_pj(counts, FP32, "L1", membrane_bits=bits)["membrane_mem_pj"]

    assert state(32, 2) == pytest.approx(16 * state(2, 2))  # 2-bit membrane: 16x less traffic
    assert state(8, 2) == pytest.approx(4 * state(2, 2))
    assert state(2, 8) == pytest.approx(4 * state(2, 2))
    assert state(4, 6) == pytest.approx(6 * state(2, 2))


def test_all_terms_scale_with_time_steps_at_fixed_rates():
    per_step = ("sops", "macs", "neuron_updates", "spike_input_elements", "real_input_elements")
    longer = {**HAND, **{k: 3 * HAND[k] for k in per_step}, "time_steps": 3 * HAND["time_steps"]}
    profile = _custom()
    e, e3 = energy_pj(HAND, profile, "L1"), energy_pj(longer, profile, "L1")
    for key in PJ_KEYS_L1 + ("total_pj",):
        assert e3[key] == pytest.approx(3 * e[key]), key
    # weight-stationary reads do not grow with T
    s, s3 = (energy_pj(c, profile, "L1", weight_reuse="stationary") for c in (HAND, longer))
    assert s3["weight_mem_pj"] == s["weight_mem_pj"]


def test_bit_width_scaling_as_documented():
    int8 = get_profile("45nm-int8")
    native = op_energies_pj(int8)
    assert native == op_energies_pj(int8, 8, 8, 8)
    assert (native["snn_ac"], native["snn_mac"], native["ann_mac"]) == (0.03, 0.23, 0.23)
    # add linear in the accumulator width max(b_w, b_u); multiply quadratic in b_w * b_a
    ops = op_energies_pj(int8, weight_bits=4, membrane_bits=4, activation_bits=8)
    assert ops["snn_ac"] == pytest.approx(0.03 * 4 / 8)  # 0.015
    assert ops["snn_mac"] == pytest.approx(0.2 * 32 / 64 + 0.015)  # 0.115
    ops = op_energies_pj(int8, weight_bits=4, membrane_bits=4, activation_bits=4)
    assert ops["ann_mac"] == pytest.approx(0.2 / 4 + 0.015)  # 0.065
    # int8 scaled to 32 bits lands near Horowitz's int32 row (0.1 / 3.2 pJ)
    ops = op_energies_pj(int8, 32, 32, 32)
    assert ops["snn_ac"] == pytest.approx(0.12) and ops["snn_mac"] == pytest.approx(3.32)
    # weights alone quantized: the adder stays membrane-wide, no AC saving
    assert op_energies_pj(FP32, weight_bits=8)["snn_ac"] == 0.9
    # the energy terms follow: defaults equal the explicit native width, exactly
    assert energy_pj(HAND, int8, "L1") == energy_pj(HAND, int8, "L1", 8, 8, 8)
    e = energy_pj(HAND, FP32, "L1", weight_bits=8, membrane_bits=8)
    assert e["ac_pj"] == pytest.approx(5 * 0.9 / 4)
    assert e["weight_mem_pj"] == pytest.approx(180.0 / 4)  # memory linear in bits moved


def test_sram_access_interpolation():
    assert sram_access_pj(FP32, 0) == 0.0
    assert sram_access_pj(FP32, 4 * 1024) == pytest.approx(5.0)
    assert sram_access_pj(FP32, 8 * 1024) == 10.0
    assert sram_access_pj(FP32, 16 * 1024) == pytest.approx(10 + 10 / 3)
    assert sram_access_pj(FP32, 1024 * 1024) == 100.0
    assert sram_access_pj(FP32, 64 * 1024 * 1024) == 100.0  # clamped above


@pytest.mark.parametrize("field,value", [
    ("e_ac_pj", -0.1), ("e_mac_pj", math.nan), ("e_neuron_pj", math.inf), ("e_ac_pj", "0.9"),
    ("e_mac_pj", 0.5), ("op_bits", 0), ("op_bits", True), ("access_width_bits", 1.5),
    ("weight_buffer_bytes", 0), ("membrane_buffer_bytes", -1.0),
    ("activation_buffer_bytes", math.inf), ("sram_pj_per_access", ()),
    ("sram_pj_per_access", ((32768, 20.0), (8192, 10.0))),
    ("sram_pj_per_access", ((8192, -10.0),)), ("name", ""), ("source", " "),
])
def test_bad_profile_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        replace(FP32, **{field: value})


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="real_input_elements"):
        energy_pj({k: v for k, v in HAND.items() if k != "real_input_elements"}, FP32, "L1")
    with pytest.raises(ValueError, match="'sops'"):
        energy_pj({**HAND, "sops": -1}, FP32)
    with pytest.raises(ValueError, match="macs"):
        energy_pj({**HAND, "macs": math.nan}, FP32)
    with pytest.raises(ValueError, match="level"):
        energy_pj(HAND, FP32, "L2")
    with pytest.raises(ValueError, match="weight_reuse"):
        energy_pj(HAND, FP32, "L1", weight_reuse="sometimes")
    with pytest.raises(ValueError, match="membrane_bits"):
        energy_pj(HAND, FP32, membrane_bits=0)
    # L0 needs only the compute counts
    assert energy_pj({"sops": 1, "macs": 0, "neuron_updates": 0}, FP32)["total_pj"] == 0.9


def test_counts_are_not_modified():
    counts = copy.deepcopy(HAND)
    e = energy_pj(counts, FP32, "L1")
    e["sops"] = -1
    assert counts == HAND
