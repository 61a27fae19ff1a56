"""Audio and bundle makers shared by the monitor unit tests and the integration tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.bundle import save_bundle
from models.detectors import get_detector
from models.features import LogMelConfig

SR = 8000


def machine_audio(seconds: float, seed: int, anomalous: bool = False, sr: int = SR) -> np.ndarray:
    """A steady hum with noise; the anomalous version adds a loud whine and clicks the model never heard."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 660 * t) + 0.03 * rng.standard_normal(t.size)
    if anomalous:
        x += 0.3 * np.sin(2 * np.pi * 2900 * t) + 0.4 * (rng.random(t.size) < 0.002)
    return x.astype(np.float32)


def make_tiny_bundle(out: Path, window_seconds: float = 1.0, hop_seconds: float = 0.25, sr: int = SR) -> Path:
    """A real `dcase_ae` bundle, small enough to train in about a second (tests only)."""
    feature = LogMelConfig(sample_rate=sr, n_fft=256, hop_length=128, n_mels=24, context=2)
    clips = [feature.extract(machine_audio(2.0, seed, sr=sr)) for seed in range(6)]
    det = get_detector("dcase_ae")(hidden=32, bottleneck=4, n_layers=1, epochs=15, batch_size=64, progress=False,
                                   device="cpu", validation_split=0.0, num_threads=1)
    det.fit(clips)
    normal = det.score(clips)
    threshold = float(normal.max() * 1.5)
    return save_bundle(out, det, feature, threshold, {"method": "fixed"}, "hum", ["00"], {"clips": len(clips)},
                       window_seconds=window_seconds, hop_seconds=hop_seconds)
