"""`asd-monitor --demo`: three synthetic machines (fan, pump, valve), one of which develops a fault for a while.

Nothing to download or record: the bundle is trained once from synthetic normal audio (well under a minute on two
CPU cores) and cached under `$XDG_CACHE_HOME/asd-monitor/demo-<version>/` (default `~/.cache/...`); later runs
load it. The demo streams go through the same source interface as wav replays (`SynthSource`), so the daemon,
pipeline, alarms and sinks are exactly the ones a real deployment runs.

Timeline (audio seconds, so `--speed 4` compresses it): the fan runs normally for `FAULT_START` seconds, has a
bearing fault for `FAULT_SECONDS`, then recovers; pump and valve stay normal throughout.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from models.synth.voices import MachineVoice

if TYPE_CHECKING:
    from models.bundle import Bundle

log = logging.getLogger(__name__)

DEMO_VERSION = 3  # bump when the recipe below changes: a new cache directory is trained
SAMPLE_RATE = 16000
MACHINES = ("fan", "pump", "valve")
FAULTY = ("fan", "bearing")
FAULT_START = 40.0
FAULT_SECONDS = 30.0
FAULT_BOOST = 3.0  # the fault at 3x its calibrated strength: a demo should be unmistakable, not a benchmark
WINDOW_SECONDS = 2.0
HOP_SECONDS = 0.5
TRAIN_CLIPS = 4
CLIP_SECONDS = 10.0
HELD_OUT_SECONDS = 60.0
THRESHOLD_PERCENTILE = 99.0
CLEAR_MARGIN = 1.15  # threshold = this x the 99th percentile of normal windows: they sit below the clear level


@dataclass(frozen=True)
class DemoStream:
    name: str
    generate: Callable[[int], np.ndarray]
    machine_id: str  # the machine's name: the bundle holds a threshold per demo machine


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "asd-monitor" / f"demo-{DEMO_VERSION}"


def _windows(x: np.ndarray) -> list[np.ndarray]:
    n, hop = int(WINDOW_SECONDS * SAMPLE_RATE), int(HOP_SECONDS * SAMPLE_RATE)
    return [x[i : i + n] for i in range(0, x.size - n + 1, hop)]


def train_demo_bundle(out: Path) -> Path:
    """Fit the DCASE AE baseline (quick settings) on normal audio of all demo machines through the training
    recipe's tensors-in entry, with each machine as a machine id. Its per-id thresholds are a margin above the 99th
    percentile of held-out normal window scores, so that normal windows sit below the alarm's clear level
    (0.9 x threshold) and a recovered machine's alarm ends. (A gamma quantile, the DCASE default, follows single
    outlier windows of the valve's strokes far up.)"""
    from models.detectors import get_detector
    from models.training.recipe import build_spec, fit_bundle

    quick = get_detector("dcase_ae").quick_params
    spec = build_spec("dcase_ae", {"params": {**quick, "device": "cpu"}, "feature": {"sample_rate": SAMPLE_RATE},
                                   "window_seconds": WINDOW_SECONDS, "hop_seconds": HOP_SECONDS})
    spec.threshold = {"method": "percentile", "percentile": THRESHOLD_PERCENTILE, "margin": CLEAR_MARGIN}
    n_clip = int(CLIP_SECONDS * SAMPLE_RATE)
    fit, fit_ids, hold, hold_ids = [], [], [], []
    for m in MACHINES:
        voice = MachineVoice(m, 0, SAMPLE_RATE, seed=0)
        fit += spec.feature.extract_batch([voice.generate(n_clip) for _ in range(TRAIN_CLIPS)])
        fit_ids += [m] * TRAIN_CLIPS
        held_out = MachineVoice(m, 0, SAMPLE_RATE, seed=0, instance=1).generate(int(HELD_OUT_SECONDS * SAMPLE_RATE))
        windows = spec.feature.extract_batch(_windows(held_out))
        hold += windows
        hold_ids += [m] * len(windows)
    summary = {"machines": list(MACHINES), "clips": len(fit), "clip_seconds": CLIP_SECONDS, "synthetic": True}
    return fit_bundle(out, spec, fit, fit_ids, hold, hold_ids, machine="demo", summary=summary,
                      extra={"generator": generator_fingerprint()})


def generator_fingerprint() -> str:
    """A hash of the first samples of every demo machine: a cached bundle trained on audio from another version
    of the generator would score the new audio as anomalous, so a changed fingerprint means retraining."""
    import hashlib

    digest = hashlib.sha256()
    for m in MACHINES:
        digest.update(MachineVoice(m, 0, SAMPLE_RATE, seed=0).generate(SAMPLE_RATE // 10).tobytes())
    return digest.hexdigest()[:16]


def load_or_train(path: Path | None = None) -> "Bundle":
    """The cached demo bundle, trained first when missing, unreadable or stale."""
    from models.bundle import BundleError, load_bundle

    path = path or cache_dir()
    try:
        bundle = load_bundle(path, device="cpu")
        if bundle.meta.get("extra", {}).get("generator") == generator_fingerprint():
            return bundle
        log.warning("demo bundle at %s was trained on another version of the synthetic machines", path)
    except BundleError as exc:
        if (path / "bundle.json").exists():
            log.warning("demo bundle at %s unusable (%s)", path, exc)
    log.warning("training the demo model once (cached in %s) ...", path)
    train_demo_bundle(path)
    return load_bundle(path, device="cpu")


def demo_streams() -> list[DemoStream]:
    """The three machines as endless generators; the faulty one switches its fault on and off by audio time."""
    streams = []
    for m in MACHINES:
        fault = FAULTY[1] if m == FAULTY[0] else None
        voice = MachineVoice(m, 0, SAMPLE_RATE, seed=0, instance=2)
        if fault is not None:
            boosted = {fault: FAULT_BOOST * voice.strength[fault]}
            voice = MachineVoice(m, 0, SAMPLE_RATE, seed=0, instance=2, strength=boosted)
        streams.append(DemoStream(m, _scheduled(voice, fault), m))
    return streams


def _scheduled(voice: MachineVoice, fault: str | None) -> Callable[[int], np.ndarray]:
    start, end = int(FAULT_START * SAMPLE_RATE), int((FAULT_START + FAULT_SECONDS) * SAMPLE_RATE)
    pos = 0

    def generate(n: int) -> np.ndarray:
        nonlocal pos
        parts, done = [], 0
        while done < n:  # split a block at the fault's start and end so the timeline is exact at any block size
            edges = [e for e in (start, end) if pos < e < pos + n - done]
            take = (edges[0] - pos) if edges else n - done
            on = fault if fault is not None and start <= pos < end else None
            parts.append(voice.generate(take, on))
            pos += take
            done += take
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    return generate
