"""Synthetic machine sounds: per-type, per-id sound models with faults (`MachineVoice`).

They live in `models` because both `asd-offline synth` (datasets) and the monitor's `--demo` (live streams)
use them, and `monitor` may not import `offline`. `catalog` is import-cheap; `voices`/`dsp` pull in scipy.
"""
