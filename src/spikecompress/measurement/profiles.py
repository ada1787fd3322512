"""Energy profiles: the unit energies of one hardware point (ops and SRAM accesses), the named
45 nm presets (Horowitz, ISSCC 2014) and the SRAM access energy by buffer capacity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

LEVELS = ("L0", "L1")
WEIGHT_REUSE = ("stationary", "per_timestep", "per_event")
STATE_TRAFFIC = ("per_neuron_step", "per_event")


@dataclass(frozen=True)
class EnergyProfile:
    """Unit energies of one hardware point, in pJ per operation or per memory access.

    Every field is required: a custom profile states each constant, none is defaulted.

    Attributes:
        name: short identifier, e.g. ``"45nm-int8"``.
        e_ac_pj: one accumulate (an add) at ``op_bits``.
        e_mac_pj: one multiply-accumulate (multiply + add) at ``op_bits``; must be >= ``e_ac_pj``.
        e_neuron_pj: one neuron update (leak, add, compare) at ``op_bits``; 0 reproduces the
            literature's compute-only figures (§5.1).
        op_bits: the bit-width at which the three energies above hold; other widths are scaled
            from it (see ``op_energies_pj``).
        access_width_bits: bits delivered by one SRAM access (Horowitz: 64).
        sram_pj_per_access: ``((capacity_bytes, pJ), ...)`` with strictly increasing capacities;
            the cost of one access to a buffer of any capacity is the piecewise-linear curve
            through (0, 0) and these points, clamped above the last one (§5.5).
        weight_buffer_bytes, membrane_buffer_bytes, activation_buffer_bytes: capacities of the
            on-chip buffers holding weights, membrane potentials, and spikes / real-valued
            activations; they pick the per-access cost of each traffic category.
        source: the paper and table each constant comes from, with unverified items marked.
    """

    name: str
    e_ac_pj: float
    e_mac_pj: float
    e_neuron_pj: float
    op_bits: int
    access_width_bits: int
    sram_pj_per_access: tuple[tuple[float, float], ...]
    weight_buffer_bytes: float
    membrane_buffer_bytes: float
    activation_buffer_bytes: float
    source: str

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("name", "source"):
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"EnergyProfile.{f.name} must be a non-empty string")
            elif f.name in ("op_bits", "access_width_bits"):
                _check_bits(f"EnergyProfile.{f.name}", value)
            elif f.name == "sram_pj_per_access":
                _check_sram_table(value)
            else:
                _check_number(f"EnergyProfile.{f.name}", value, positive=f.name.endswith("_bytes"))
        if self.e_mac_pj < self.e_ac_pj:
            raise ValueError(f"EnergyProfile.e_mac_pj ({self.e_mac_pj}) must be >= e_ac_pj "
                             f"({self.e_ac_pj}): a MAC is a multiply plus an add")


def _check_number(label: str, value: object, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{label} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{label} must be finite and {'> 0' if positive else '>= 0'}, got {value}")


def _check_bits(label: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{label} must be a positive integer, got {value!r}")


def _check_sram_table(table: object) -> None:
    label = "EnergyProfile.sram_pj_per_access"
    if not isinstance(table, tuple) or not table:
        raise ValueError(f"{label} must be a non-empty tuple of (capacity_bytes, pJ) pairs")
    previous = 0.0
    for point in table:
        if not isinstance(point, tuple) or len(point) != 2:
            raise ValueError(f"{label} entries must be (capacity_bytes, pJ) pairs, got {point!r}")
        _check_number(f"{label} capacity", point[0], positive=True)
        _check_number(f"{label} energy", point[1])
        if point[0] <= previous:
            raise ValueError(f"{label} capacities must be strictly increasing, got {table!r}")
        previous = point[0]


def sram_access_pj(profile: EnergyProfile, capacity_bytes: float) -> float:
    """pJ of one ``access_width_bits`` access to a buffer of ``capacity_bytes``.

    e(c) = e_i + (e_{i+1} - e_i) * (c - c_i) / (c_{i+1} - c_i) between table points, with
    (c_0, e_0) = (0, 0); e(c) = e_last for c above the last capacity (§5.5, "clamped above").
    """
    _check_number("capacity_bytes", capacity_bytes)
    c0, e0 = 0.0, 0.0
    for c1, e1 in profile.sram_pj_per_access:
        if capacity_bytes <= c1:
            return e0 + (e1 - e0) * (capacity_bytes - c0) / (c1 - c0)
        c0, e0 = c1, e1
    return e0


_HOROWITZ = (
    "Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014, "
    "pp. 10-14, 45 nm 0.9 V energy-per-operation table (Fig. 1.1.9 [unverified number]); the "
    "op energies match SpikingJelly 2.0 op_counter presets [code], the paper table itself was "
    "not re-read [unverified]."
)
_MEMORY = (
    " SRAM per 64-bit access 10/20/100 pJ at 8 KB/32 KB/1 MB (same table; KB = 1024 B; "
    "SpikingJelly's Lemaire model applies them per 32-bit word instead, §5.2), interpolated "
    "piecewise-linearly [D, §5.5]; 32 KB buffers [D, §5.5]; e_neuron = 0 literature default "
    "[D, §5.1]; other bit-widths scaled by the [D] rule of §5.2 (add linear, multiply quadratic)."
)
_SRAM_45NM = ((8 * 1024, 10.0), (32 * 1024, 20.0), (1024 * 1024, 100.0))


def _preset(name: str, e_ac_pj: float, e_mac_pj: float, bits: int, ops: str) -> EnergyProfile:
    """A 45 nm profile: Horowitz op and SRAM energies, 64-bit accesses, 32 KB buffers."""
    return EnergyProfile(
        name=name, e_ac_pj=e_ac_pj, e_mac_pj=e_mac_pj, e_neuron_pj=0.0, op_bits=bits,
        access_width_bits=64, sram_pj_per_access=_SRAM_45NM,
        weight_buffer_bytes=32 * 1024, membrane_buffer_bytes=32 * 1024,
        activation_buffer_bytes=32 * 1024, source=f"{ops} {_HOROWITZ}{_MEMORY}",
    )


_FP32 = _preset("45nm-fp32", 0.9, 4.6, 32, "fp32: ADD 0.9 pJ, MULT 3.7 pJ, MAC = 4.6 pJ.")

PROFILES: dict[str, EnergyProfile] = {
    "45nm": replace(_FP32, name="45nm", source="Alias of 45nm-fp32. " + _FP32.source),
    "45nm-fp32": _FP32,
    "45nm-fp16": _preset("45nm-fp16", 0.4, 1.5, 16, "fp16: ADD 0.4 pJ, MULT 1.1 pJ, MAC = 1.5 pJ."),
    "45nm-int32": _preset("45nm-int32", 0.1, 3.2, 32, "int32: ADD 0.1, MULT 3.1, MAC = 3.2 pJ."),
    "45nm-int8": _preset("45nm-int8", 0.03, 0.23, 8, "int8: ADD 0.03, MULT 0.2, MAC = 0.23 pJ."),
}


def get_profile(name: str) -> EnergyProfile:
    """The preset named ``name`` from ``PROFILES``."""
    if name not in PROFILES:
        raise ValueError(f"unknown energy profile {name!r}; known: {', '.join(PROFILES)}")
    return PROFILES[name]
