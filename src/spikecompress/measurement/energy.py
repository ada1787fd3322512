"""Energy from operation counts: compute-only (L0) and memory-aware (L1), from a named profile.

Implements the survey's energy model ``E = E_AC · SOPs + E_MAC · MACs`` (L0) and a
memory-aware L1 level; ``docs/energy.md`` states the counting rules, unit energies and sources.
Energies are totals over whatever the ``counts`` cover; divide by ``counts["samples"]`` for
per-sample figures. Raw counts are never modified and should be reported next to every energy
figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from spikecompress.measurement.profiles import (  # noqa: F401 (re-exported)
    LEVELS,
    PROFILES,
    STATE_TRAFFIC,
    WEIGHT_REUSE,
    EnergyProfile,
    _check_bits,
    _check_number,
    get_profile,
    sram_access_pj,
)

L0_KEYS = ("sops", "macs", "neuron_updates")
L1_KEYS = L0_KEYS + ("params_nonzero", "samples", "time_steps", "spike_input_elements",
                     "real_input_elements")


def op_energies_pj(
    profile: EnergyProfile,
    weight_bits: int | None = None,
    membrane_bits: int | None = None,
    activation_bits: int | None = None,
) -> dict[str, float]:
    """Per-operation pJ at the given bit-widths (None: the profile's ``op_bits``).

    Scaling rule (§5.2 [D]: add energy ~ linear in bits, multiply ~ quadratic), with b0 =
    ``op_bits``, E_mult = e_mac - e_ac, and within the profile's number format:

        add(b)        = e_ac * b / b0
        mult(bx, by)  = E_mult * bx * by / b0**2
        snn_ac        = add(max(b_w, b_u))             # a weight accumulated into the membrane
        snn_mac       = mult(b_w, b_a) + add(max(b_w, b_u))
        ann_mac       = mult(b_w, b_a) + add(max(b_w, b_a))
        snn_neuron    = e_neuron * b_u / b0             # leak/add/compare on the membrane
        ann_neuron    = e_neuron * b_a / b0             # activation function on b_a bits

    At the native width every value equals the profile's constant exactly. Quantizing only the
    weights (b_u left at 32 bits) buys no AC saving: the adder is as wide as the membrane.
    """
    b0 = profile.op_bits
    bw, bu, ba = _resolve_bits(profile, weight_bits, membrane_bits, activation_bits)

    def mac(bx: int, by: int, acc: int) -> float:
        # e_mac * s_mult + e_ac * (s_add - s_mult) == mult + add, exact at the native width
        s_mult, s_add = bx * by / b0**2, acc / b0
        return profile.e_mac_pj * s_mult + profile.e_ac_pj * (s_add - s_mult)

    return {
        "snn_ac": profile.e_ac_pj * max(bw, bu) / b0,
        "snn_mac": mac(bw, ba, max(bw, bu)),
        "ann_mac": mac(bw, ba, max(bw, ba)),
        "snn_neuron": profile.e_neuron_pj * bu / b0,
        "ann_neuron": profile.e_neuron_pj * ba / b0,
    }


def _resolve_bits(
    profile: EnergyProfile, weight_bits: int | None, membrane_bits: int | None,
    activation_bits: int | None,
) -> tuple[int, int, int]:
    """(b_w, b_u, b_a) with None replaced by the profile's ``op_bits``; each checked >= 1."""
    bw, bu, ba = (profile.op_bits if b is None else b
                  for b in (weight_bits, membrane_bits, activation_bits))
    for label, b in (("weight_bits", bw), ("membrane_bits", bu), ("activation_bits", ba)):
        _check_bits(label, b)
    return bw, bu, ba


def _read_counts(counts: Mapping, keys: tuple[str, ...], level: str) -> dict[str, float]:
    out = {}
    for key in keys:
        if key not in counts:
            raise ValueError(f"counts[{key!r}] is missing; level {level} needs {', '.join(keys)}")
        number = float(value := counts[key])
        if isinstance(value, bool) or not math.isfinite(number) or number < 0:
            raise ValueError(f"counts[{key!r}] must be a finite number >= 0, got {value!r}")
        out[key] = number
    return out


def _check_choice(label: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{label} must be one of {', '.join(choices)}; got {value!r}")


def _memory_term(
    out: dict[str, float], key: str, elements: float, bits: int, buffer_bytes: float,
    profile: EnergyProfile, packed: bool,
) -> None:
    """Adds ``{key}_bits``, ``{key}_accesses`` and ``{key}_pj`` for ``elements`` of ``bits``.

    accesses = elements * bits / W if packed, else elements * ceil(bits / W), W = access width;
    pJ = accesses * sram_access_pj(buffer_bytes).
    """
    width = profile.access_width_bits
    accesses = elements * bits / width if packed else elements * math.ceil(bits / width)
    out[f"{key}_bits"] = elements * bits
    out[f"{key}_accesses"] = accesses
    out[f"{key}_pj"] = accesses * sram_access_pj(profile, buffer_bytes)


def energy_pj(
    counts: Mapping,
    profile: EnergyProfile,
    level: str = "L0",
    weight_bits: int | None = None,
    membrane_bits: int | None = None,
    activation_bits: int | None = None,
    weight_reuse: str = "per_timestep",
    state_traffic: str = "per_neuron_step",
    packed: bool = True,
) -> dict[str, float]:
    """Energy of an SNN inference from its operation counts (``docs/energy.md``).

    L0 (compute only, literature-compatible), with unit energies from ``op_energies_pj``:
        E0 = E_AC * sops + E_MAC * macs + E_neuron * neuron_updates
    L1 (memory-aware) adds one SRAM term per traffic category,
        E1 = E0 + sum_c accesses_c * sram_access_pj(buffer_c),  accesses_c = bits_c / W (packed)
    with, in words of the stated width (§5.5 exactly; choices it leaves are marked [D]):
        weights  (b_w bits, weight buffer): stationary: params_nonzero * samples (read once per
                 inference [D]); per_timestep: params_nonzero * time_steps * samples;
                 per_event: sops + macs
        membrane (b_u bits, membrane buffer): per_neuron_step: 2 * neuron_updates (read + write);
                 per_event: 2 * sops + neuron_updates (read-modify-write per event plus a
                 one-access leak pass, as §5.5 writes it; MAC-driven updates ride on that pass)
        spikes   (1 bit, activation buffer): neuron_updates (each neuron writes its output bit
                 every step) + spike_input_elements (each binary input element read per step)
        real inputs (b_a bits, activation buffer) [D, §5.5 is silent]: real_input_elements.
    DRAM is not charged (on-chip buffers assumed; a large buffer saturates at the last SRAM
    point). ``packed=False`` charges ceil(bits / W) accesses per element instead of bits / W.

    Args:
        counts: totals over all samples, time steps and layers. L0 needs ``sops``, ``macs``,
            ``neuron_updates`` (neurons x T x samples). L1 also needs ``params_nonzero`` (non-zero
            weights of all synaptic layers, summed), ``samples``, ``time_steps`` (T per sample; a
            mean when T varies), ``spike_input_elements`` (elements of the binary inputs of
            synaptic layers, i.e. their [T, B, ...] numel, summed over layers and batches) and
            ``real_input_elements`` (the same for real-valued inputs, e.g. the first layer under
            direct coding). Other keys are ignored; values are read, never written.
        profile: unit energies, e.g. ``get_profile("45nm")``.
        level: "L0" or "L1".
        weight_bits, membrane_bits, activation_bits: b_w, b_u and b_a (real-valued inputs);
            None means the profile's ``op_bits``. Spikes are 1 bit.
        weight_reuse: "stationary", "per_timestep" or "per_event" (L1 only).
        state_traffic: "per_neuron_step" or "per_event" (L1 only).
        packed: dense bit-packing of memory words (L1 only).

    Returns:
        ``ac_pj``, ``mac_pj``, ``neuron_pj`` and ``total_pj``; for L1 also ``weight_mem_*``,
        ``membrane_mem_*``, ``spike_mem_*`` and ``real_input_mem_*`` each as ``_pj``, ``_bits``
        (bits moved) and ``_accesses``. ``total_pj`` is the sum of the other ``*_pj`` entries.
    """
    _check_choice("level", level, LEVELS)
    _check_choice("weight_reuse", weight_reuse, WEIGHT_REUSE)
    _check_choice("state_traffic", state_traffic, STATE_TRAFFIC)
    c = _read_counts(counts, L0_KEYS if level == "L0" else L1_KEYS, level)
    ops = op_energies_pj(profile, weight_bits, membrane_bits, activation_bits)
    out = {
        "ac_pj": ops["snn_ac"] * c["sops"],
        "mac_pj": ops["snn_mac"] * c["macs"],
        "neuron_pj": ops["snn_neuron"] * c["neuron_updates"],
    }
    if level == "L1":
        bits = _resolve_bits(profile, weight_bits, membrane_bits, activation_bits)
        _snn_memory_terms(out, c, profile, bits, weight_reuse, state_traffic, packed)
    out["total_pj"] = sum(v for k, v in out.items() if k.endswith("_pj"))
    return out


def _snn_memory_terms(
    out: dict[str, float], c: dict[str, float], profile: EnergyProfile,
    bits: tuple[int, int, int], weight_reuse: str, state_traffic: str, packed: bool,
) -> None:
    """The four L1 traffic categories of ``energy_pj`` (words per its docstring)."""
    bw, bu, ba = bits
    weight_reads = {
        "stationary": c["params_nonzero"] * c["samples"],
        "per_timestep": c["params_nonzero"] * c["time_steps"] * c["samples"],
        "per_event": c["sops"] + c["macs"],
    }[weight_reuse]
    state = {
        "per_neuron_step": 2 * c["neuron_updates"],
        "per_event": 2 * c["sops"] + c["neuron_updates"],
    }[state_traffic]
    spikes = c["neuron_updates"] + c["spike_input_elements"]
    for key, elements, b, buffer in (
        ("weight_mem", weight_reads, bw, profile.weight_buffer_bytes),
        ("membrane_mem", state, bu, profile.membrane_buffer_bytes),
        ("spike_mem", spikes, 1, profile.activation_buffer_bytes),
        ("real_input_mem", c["real_input_elements"], ba, profile.activation_buffer_bytes),
    ):
        _memory_term(out, key, elements, b, buffer, profile, packed)


def ann_energy_pj(
    dense_macs: float,
    neurons: float,
    profile: EnergyProfile,
    level: str = "L0",
    params: float | None = None,
    input_elements: float | None = None,
    samples: float | None = None,
    weight_bits: int | None = None,
    activation_bits: int | None = None,
    weight_reuse: str = "per_timestep",
    packed: bool = True,
) -> dict[str, float]:
    """Energy of the ANN twin (same topology, ReLU, one pass per sample) with the same profile.

    The twin pays dense MACs with every activation real-valued (b_a bits), no AC, no membrane:
        E0 = E_MAC(b_w, b_a) * dense_macs + E_neuron(b_a) * neurons
        E1 = E0 + weights: params * samples words of b_w bits (one step, so "stationary" and
             "per_timestep" coincide; "per_event": dense_macs reads), weight buffer
                + activations: (neurons + input_elements) words of b_a bits (each activation
             written once, each layer input read once), activation buffer
    Unit energies and memory costs follow ``op_energies_pj`` and ``energy_pj``.

    Args:
        dense_macs: MACs of the twin over ``samples`` inputs (no time dimension). From an SNN
            counter whose ``dense_macs`` span T steps: ``dense_macs / time_steps``.
        neurons: activations computed (ReLU outputs), total over samples; from an SNN record:
            ``neuron_updates / time_steps``.
        profile: unit energies.
        level: "L0" or "L1".
        params: weights the twin reads per inference (L1); the dense ``params`` for the usual
            unpruned baseline (§5.3), ``params_nonzero`` for an equally pruned one.
        input_elements: elements of every synaptic layer's input, total over samples (L1); from
            an SNN record: ``(spike_input_elements + real_input_elements) / time_steps``.
        samples: inferences covered (L1).
        weight_bits, activation_bits: b_w, b_a; None means the profile's ``op_bits``.
        weight_reuse, packed: as in ``energy_pj``.

    Returns:
        ``ac_pj`` (always 0), ``mac_pj``, ``neuron_pj``, ``total_pj``; for L1 also
        ``weight_mem_*`` and ``activation_mem_*`` as ``_pj``, ``_bits`` and ``_accesses``.
    """
    _check_choice("level", level, LEVELS)
    _check_choice("weight_reuse", weight_reuse, WEIGHT_REUSE)
    given = {"dense_macs": dense_macs, "neurons": neurons}
    if level == "L1":
        given.update(params=params, input_elements=input_elements, samples=samples)
        for key, value in given.items():
            if value is None:
                raise ValueError(f"{key} is required for the ANN twin at level L1")
    c = _read_counts(given, tuple(given), level)
    ops = op_energies_pj(profile, weight_bits, None, activation_bits)
    out = {"ac_pj": 0.0, "mac_pj": ops["ann_mac"] * c["dense_macs"],
           "neuron_pj": ops["ann_neuron"] * c["neurons"]}
    if level == "L1":
        bw, _, ba = _resolve_bits(profile, weight_bits, None, activation_bits)
        reads = c["dense_macs"] if weight_reuse == "per_event" else c["params"] * c["samples"]
        _memory_term(out, "weight_mem", reads, bw, profile.weight_buffer_bytes, profile, packed)
        _memory_term(out, "activation_mem", c["neurons"] + c["input_elements"], ba,
                     profile.activation_buffer_bytes, profile, packed)
    out["total_pj"] = sum(v for k, v in out.items() if k.endswith("_pj"))
    return out
