"""Paired noisy/clean audio for the noise models, from any of three sources (all give the same `Pair`s):

- a folder in the seed's layout, `ROOT/train/{noisy,clean}/<id>/*.wav` and `ROOT/val/{noisy,clean}/<id>/*.wav`,
  paired by relative path (`asd-offline synth OUT --pairs` writes this layout from the synthetic generator: the
  machine alone, and the same samples with its factory background at each of `--pair-snrs`);
- the user's own recordings (a dataset root or manifest: the normal training clips of one machine type) plus a
  recording of the site's noise (`--noise WAV`), mixed at each configured SNR; a seeded share of the recordings
  (`val_fraction`) is held out *before* mixing, so no recording is in both training and validation pairs;
- that same mixing with the synthetic generator's factory background when no noise recording is given.

SNR is the ratio of clean to added-noise power over the clip, in dB.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_SNRS = (6.0, 0.0, -6.0)  # MIMII's
PAIR_SPLITS = ("train", "val")
PAIR_CONFIG_KEYS = {"snrs", "val_fraction", "noise"}


@dataclass
class Pair:
    """One recording clean and noisy (float32 mono, equal lengths), with its machine id and SNR when known."""

    name: str
    machine_id: str
    clean: np.ndarray
    noisy: np.ndarray
    snr_db: float | None = None


def is_pair_folder(root: Path) -> bool:
    """True for a folder in the seed's layout (`train/noisy` and `train/clean` exist)."""
    return (root / "train" / "noisy").is_dir() and (root / "train" / "clean").is_dir()


def read_pair_folder(root: Path, sample_rate: int) -> tuple[list[Pair], list[Pair]]:
    """Training and validation pairs of a seed-layout folder (a missing `val/` gives no validation pairs). A file
    without its partner, or partners of different lengths, is an error naming it."""
    from models.audio import WavReader

    out: dict[str, list[Pair]] = {}
    for split in PAIR_SPLITS:
        base = root / split
        if not (base / "noisy").is_dir():
            out[split] = []
            continue
        noisy = {p.relative_to(base / "noisy") for p in (base / "noisy").rglob("*.wav")}
        clean = {p.relative_to(base / "clean") for p in (base / "clean").rglob("*.wav")}
        lonely = sorted(noisy ^ clean)
        if lonely:
            side = "clean" if lonely[0] in noisy else "noisy"
            raise ValueError(f"{base}: {len(lonely)} file(s) without a partner, e.g. {lonely[0]} has no {side} twin")
        if not noisy:
            raise ValueError(f"{base}/noisy: no wav files")
        pairs = []
        for rel in sorted(noisy):
            n = WavReader(base / "noisy" / rel, sample_rate=sample_rate, resample=True).read()
            c = WavReader(base / "clean" / rel, sample_rate=sample_rate, resample=True).read()
            if n.shape != c.shape:
                raise ValueError(f"{base}: {rel} is {n.shape[0]} samples noisy but {c.shape[0]} clean")
            pairs.append(Pair(f"{split}/{rel}", rel.parts[0] if len(rel.parts) > 1 else "", c, n))
        out[split] = pairs
    return out["train"], out["val"]


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`clean + g * noise` with g setting the clean-to-added-noise power ratio to `snr_db`."""
    p_clean, p_noise = float(np.mean(clean.astype(np.float64) ** 2)), float(np.mean(noise.astype(np.float64) ** 2))
    if p_noise <= 0:
        raise ValueError("the noise is silent: nothing to mix")
    g = np.sqrt(p_clean / (p_noise * 10 ** (snr_db / 10)))
    return (clean + g * noise).astype(np.float32)


def noise_for(n: int, noise: np.ndarray | None, rng: np.random.Generator, sample_rate: int, key: int) -> np.ndarray:
    """`n` samples of noise: a random stretch of the recording (looped when shorter), or the synthetic factory
    background (seeded by `key`) when there is none."""
    if noise is None:
        from models.synth.voices import factory_background

        return factory_background(n, sample_rate, key)
    if noise.shape[0] < n:
        noise = np.tile(noise, int(np.ceil(n / noise.shape[0])) + 1)
    start = int(rng.integers(0, noise.shape[0] - n + 1))
    return noise[start : start + n]


def pair_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The `pairs:` section of a noise model's config, checked: snrs, val_fraction, noise (a wav path)."""
    given = dict(config.get("pairs") or {})
    unknown = sorted(set(given) - PAIR_CONFIG_KEYS)
    if unknown:
        raise ValueError(f"pairs: unknown key(s) {unknown}; allowed: {sorted(PAIR_CONFIG_KEYS)}")
    snrs = [float(s) for s in given.get("snrs", DEFAULT_SNRS)]
    if not snrs or not all(np.isfinite(snrs)):
        raise ValueError(f"pairs.snrs must be a non-empty list of finite dB values, got {given.get('snrs')}")
    val = float(given.get("val_fraction", 0.2))
    if not 0.0 <= val < 1.0:
        raise ValueError(f"pairs.val_fraction must be in [0, 1), got {val}")
    return {"snrs": snrs, "val_fraction": val, "noise": given.get("noise")}


def mix_pairs(clips: Sequence[Any], noise_path: Path | None, snrs: Sequence[float], val_fraction: float,
              sample_rate: int, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Pairs from clean recordings (clip records with `path` and `id`) mixed with noise at each SNR; the seeded
    `val_fraction` of recordings (at least one when there are two or more) is held out before mixing."""
    from models.audio import WavReader, level_dbfs
    from models.levels import SILENCE_DBFS

    noise = None
    if noise_path is not None:
        noise = WavReader(noise_path, sample_rate=sample_rate, resample=True).read()
        if noise.shape[0] == 0 or level_dbfs(noise) < SILENCE_DBFS:
            raise ValueError(f"{noise_path}: the noise recording is empty or silent")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(clips))
    n_val = 0 if val_fraction <= 0 or len(clips) < 2 else max(1, round(val_fraction * len(clips)))
    val_idx = set(order[:n_val].tolist())
    train, val = [], []
    for i, clip in enumerate(clips):
        clean = WavReader(clip.path, sample_rate=sample_rate, resample=True).read()
        for snr in snrs:
            n = noise_for(clean.shape[0], noise, rng, sample_rate, key=seed * 1_000_003 + i)
            pair = Pair(f"{Path(clip.path).name}@{snr:g}dB", str(clip.id), clean, mix_at_snr(clean, n, snr), snr)
            (val if i in val_idx else train).append(pair)
    log.info("%d clean recordings (%d held out for validation) x %d SNRs (%s dB), noise: %s", len(clips), n_val,
             len(snrs), ", ".join(f"{s:g}" for s in snrs), noise_path or "the synthetic factory background")
    return train, val
