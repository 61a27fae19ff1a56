"""Machine types and their fault kinds: no heavy imports, so the CLI parser can list them cheaply."""

from __future__ import annotations

ALL_MACHINES: tuple[str, ...] = ("fan", "pump", "slider", "valve", "ToyCar", "ToyConveyor")
MACHINES = ALL_MACHINES

# Fault kinds per machine type, after the fault classes DCASE 2020 / MIMII name for each type.
ANOMALIES: dict[str, tuple[str, ...]] = {
    "fan": ("bearing", "imbalance", "rubbing", "clogging"),
    "pump": ("leak", "clogging", "bearing"),
    "slider": ("missing_stroke", "irregular_stroke", "rubbing"),
    "valve": ("missing_stroke", "irregular_stroke", "leak"),
    "ToyCar": ("gear_damage", "bearing", "imbalance"),
    "ToyConveyor": ("gear_damage", "rubbing", "bearing"),
}
