"""Writing a synthetic dataset in DCASE 2020 Task 2 layout, one `MachineVoice` recording per clip.

A clip's samples depend only on (seed, machine, id, split, label, index) and the settings, never on the order in
which clips are rendered or on the number of worker processes, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import soundfile as sf

from models.synth.catalog import ALL_MACHINES, ANOMALIES
from models.synth.dsp import rng_for
from models.synth.voices import STRENGTH, MachineVoice

log = logging.getLogger(__name__)

LEVEL_DBFS = -26.0  # clip RMS level, centre of the range
LEVEL_SPREAD_DB = 3.0  # clip levels are uniform in LEVEL_DBFS +- this
_PEAK_LIMIT = 0.98
_LEVEL_TAG = 3  # seed-key tag for clip levels (0-2 are used by voices)


@dataclass(frozen=True)
class ClipJob:
    """One file to write: what it is and where it goes (path relative to the dataset root)."""

    machine: str
    machine_id: int
    split: str  # train | test
    label: str  # normal | anomaly
    index: int
    anomaly: str | None

    @property
    def relpath(self) -> str:
        return f"{self.machine}/{self.split}/{self.label}_id_{self.machine_id:02d}_{self.index:08d}.wav"

    @property
    def instance(self) -> int:
        """The recording a clip is: train i, test normal k and test anomaly k are three different recordings."""
        code = 0 if self.split == "train" else (1 if self.label == "normal" else 2)
        return 3 * self.index + code


@dataclass(frozen=True)
class RenderSettings:
    seed: int
    snr_db: float
    duration: float
    sample_rate: int
    strength: Mapping[str, Mapping[str, float]]


def machine_ids(ids: int) -> list[int]:
    """The ids a dataset with `ids` ids uses: 00, 02, 04, ... as in the DCASE 2020 development set."""
    return [2 * i for i in range(ids)]


def plan(machines: Sequence[str], ids: int, train_clips: int, test_clips: int) -> list[ClipJob]:
    """Every clip of a dataset. Per id: `train_clips` normal training clips; `test_clips` test clips, half of them
    anomalous (the odd one normal), the fault kinds taking turns so each kind is equally represented."""
    jobs: list[ClipJob] = []
    n_anomaly = test_clips // 2
    for machine in machines:
        kinds = ANOMALIES[machine]
        for mid in machine_ids(ids):
            jobs += [ClipJob(machine, mid, "train", "normal", i, None) for i in range(train_clips)]
            jobs += [ClipJob(machine, mid, "test", "normal", k, None) for k in range(test_clips - n_anomaly)]
            jobs += [ClipJob(machine, mid, "test", "anomaly", k, kinds[k % len(kinds)]) for k in range(n_anomaly)]
    return jobs


def clip_level(job: ClipJob, seed: int) -> float:
    """Target RMS of a clip. Test normal k and test anomaly k get the same level, so that over a test set the two
    classes have the same level distribution by construction: loudness carries no information about the label."""
    split = 0 if job.split == "train" else 1
    m = ALL_MACHINES.index(job.machine)
    offset_db = rng_for((seed, m, job.machine_id, _LEVEL_TAG, split, job.index)).uniform(-1, 1) * LEVEL_SPREAD_DB
    return float(10 ** ((LEVEL_DBFS + offset_db) / 20))


def render_clip(job: ClipJob, settings: RenderSettings) -> np.ndarray:
    """The clip's samples as int16, normalised to its target level."""
    voice = MachineVoice(job.machine, job.machine_id, settings.sample_rate, settings.seed, settings.snr_db,
                         instance=job.instance, strength=settings.strength.get(job.machine))
    x = voice.generate(int(round(settings.duration * settings.sample_rate)), job.anomaly).astype(np.float64)
    rms = float(np.sqrt(np.mean(x**2)))
    y = x * (clip_level(job, settings.seed) / max(rms, 1e-12))
    peak = float(np.max(np.abs(y)))
    if peak > _PEAK_LIMIT:  # would clip: quieter instead (rare; the level then deviates from the plan)
        log.warning("%s: peak %.2f after level normalisation; scaled down to avoid clipping", job.relpath, peak)
        y *= _PEAK_LIMIT / peak
    return np.round(y * 32767).astype(np.int16)


def _write(job: ClipJob, settings: RenderSettings, root: Path) -> None:
    sf.write(root / job.relpath, render_clip(job, settings), settings.sample_rate, subtype="PCM_16", format="WAV")


def _write_many(jobs: list[ClipJob], settings: RenderSettings, root: Path) -> int:
    for job in jobs:
        _write(job, settings, root)
    return len(jobs)


def _prepare(out: Path, machines: Sequence[str], overwrite: bool) -> None:
    for machine in machines:
        old = sorted((out / machine).glob("*/*.wav"))
        if old and not overwrite:
            raise ValueError(f"{out / machine} already holds {len(old)} wav files; pass overwrite "
                             f"(--overwrite) to replace them, or choose another output folder")
        for path in old:
            path.unlink()
        for split in ("train", "test"):
            (out / machine / split).mkdir(parents=True, exist_ok=True)


def resolve_machines(machines: Sequence[str]) -> list[str]:
    """Canonical type names (case-insensitive match, duplicates dropped); ValueError naming an unknown one."""
    by_lower = {m.lower(): m for m in ALL_MACHINES}
    names: list[str] = []
    for name in machines:
        canonical = by_lower.get(str(name).strip().lower())
        if canonical is None:
            raise ValueError(f"unknown machine type {name!r}; known: {', '.join(ALL_MACHINES)}")
        if canonical not in names:
            names.append(canonical)
    if not names:
        raise ValueError("no machine types given")
    return names


def synthesize(
    out: Path,
    machines: Sequence[str] = ALL_MACHINES,
    ids: int = 2,
    train_clips: int = 100,
    test_clips: int = 40,
    snr_db: float = 0.0,
    seed: int = 0,
    duration: float = 10.0,
    sample_rate: int = 16000,
    workers: int = 1,
    *,
    overwrite: bool = False,
    strength: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """Write a DCASE-layout dataset under `out` (clip counts are per machine id) and `out/synth.json`
    (settings and the fault kind of every anomalous clip). Returns `out`.

    `strength` overrides the fault strength table per machine type, e.g. {"fan": {"bearing": 0.5}}.
    """
    out = Path(out)
    names = resolve_machines(machines)
    for label, value, low in (("ids", ids, 1), ("train_clips", train_clips, 0), ("test_clips", test_clips, 0),
                              ("seed", seed, 0), ("workers", workers, 1)):
        if int(value) != value or value < low:
            raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
    if not duration > 0 or duration * sample_rate < 1:
        raise ValueError(f"duration must be positive (at least one sample), got {duration}")
    if not np.isfinite(snr_db):
        raise ValueError(f"snr must be finite, got {snr_db}")
    tables = {resolve_machines([m])[0]: dict(s) for m, s in (strength or {}).items()}
    for m, table in tables.items():  # fail on a bad setting before touching the disk
        MachineVoice(m, 0, sample_rate, seed, snr_db, strength=table)
    MachineVoice(names[0], 0, sample_rate, seed, snr_db)
    settings = RenderSettings(int(seed), float(snr_db), float(duration), int(sample_rate), tables)
    jobs = plan(names, int(ids), int(train_clips), int(test_clips))
    _prepare(out, names, overwrite)
    if workers == 1 or len(jobs) < 2:
        _write_many(jobs, settings, out)
    else:
        chunks = [jobs[i :: workers * 4] for i in range(workers * 4)]
        with ProcessPoolExecutor(max_workers=int(workers)) as pool:
            list(pool.map(_write_many, chunks, [settings] * len(chunks), [out] * len(chunks)))
    _write_manifest(out, names, ids, jobs, settings, train_clips, test_clips)
    log.info("wrote %d clips for %s to %s", len(jobs), ", ".join(names), out)
    return out


def _write_manifest(out: Path, names: list[str], ids: int, jobs: list[ClipJob], settings: RenderSettings,
                    train_clips: int, test_clips: int) -> None:
    doc = {
        "generator": "asd-offline synth",
        "seed": settings.seed,
        "snr_db": settings.snr_db,
        "duration": settings.duration,
        "sample_rate": settings.sample_rate,
        "train_clips_per_id": train_clips,
        "test_clips_per_id": test_clips,
        "level_dbfs": [LEVEL_DBFS - LEVEL_SPREAD_DB, LEVEL_DBFS + LEVEL_SPREAD_DB],
        "machines": {
            m: {
                "ids": [f"id_{i:02d}" for i in machine_ids(ids)],
                "anomalies": list(ANOMALIES[m]),
                "strength": {**STRENGTH[m], **settings.strength.get(m, {})},
            }
            for m in names
        },
        "anomaly_kinds": {job.relpath: job.anomaly for job in jobs if job.anomaly},
    }
    (out / "synth.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def synthesize_pairs(out: Path, machines: Sequence[str], *, ids: int = 2, train_clips: int = 10,
                     val_clips: int = 4, snrs: Sequence[float] = (6.0, 0.0, -6.0), seed: int = 0,
                     duration: float = 10.0, sample_rate: int = 16000, overwrite: bool = False) -> Path:
    """Paired clean/noisy clips in the seed's layout, `OUT/{train,val}/{clean,noisy}/<machine>_id_XX/NNNN_<snr>dB.wav`:
    the machine alone and the same samples with its factory background at each SNR (`MachineVoice.generate_pair`).
    Validation clips are other recordings (instances) than training ones. Each pair is scaled by one gain that puts
    the noisy clip at the generator's nominal level, so both files of a pair keep their true ratio."""
    out = Path(out)
    names = resolve_machines(machines)
    old = sorted(out.glob("*/*/*/*.wav"))
    if old and not overwrite:
        raise ValueError(f"{out} already holds {len(old)} wav files; pass --overwrite to replace them")
    for path in old:
        path.unlink()
    n = int(round(duration * sample_rate))
    dither = np.random.default_rng(seed)
    count = 0
    for split, n_clips, first in (("train", train_clips, 0), ("val", val_clips, 10_000)):
        for machine in names:
            for mid in machine_ids(ids):
                folder = f"{machine}_id_{mid:02d}"
                for side in ("clean", "noisy"):
                    (out / split / side / folder).mkdir(parents=True, exist_ok=True)
                for k in range(n_clips):
                    for snr in snrs:
                        voice = MachineVoice(machine, mid, sample_rate, seed, float(snr), instance=first + k)
                        clean, noisy = voice.generate_pair(n)
                        gain = 10 ** (LEVEL_DBFS / 20) / max(float(np.sqrt(np.mean(noisy.astype(np.float64) ** 2))),
                                                             1e-12)
                        gain = min(gain, _PEAK_LIMIT / max(float(np.abs(noisy).max()), float(np.abs(clean).max())))
                        name = f"{k:04d}_{snr:g}dB.wav"
                        for side, x in (("clean", clean), ("noisy", noisy)):
                            sf.write(out / split / side / folder / name, _dithered_int16(x * gain, dither),
                                     sample_rate, subtype="PCM_16", format="WAV")
                        count += 1
    log.info("wrote %d clean/noisy pairs to %s", count, out)
    return out


def _dithered_int16(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """int16 with triangular dither of one step, as a recorder writes: the machine alone is digitally silent between
    valve strokes, and a log-mel of exact zeros (-156 dB) is a floor no microphone has."""
    return np.clip(np.round(x * 32767 + rng.triangular(-1.0, 0.0, 1.0, x.shape)), -32768, 32767).astype(np.int16)
