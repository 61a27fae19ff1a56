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


def make_tiny_bundle(out: Path, window_seconds: float = 1.0, hop_seconds: float = 0.25, sr: int = SR,
                     calibrated: bool = False) -> Path:
    """A real `dcase_ae` bundle, small enough to train in about a second (tests only); `calibrated`: with the
    calibration of its threshold on its training clips' scores, as `fit_bundle` records it with no held-out clips."""
    feature = LogMelConfig(sample_rate=sr, n_fft=256, hop_length=128, n_mels=24, context=2)
    clips = [feature.extract(machine_audio(2.0, seed, sr=sr)) for seed in range(6)]
    det = get_detector("dcase_ae")(hidden=32, bottleneck=4, n_layers=1, epochs=15, batch_size=64, progress=False,
                                   device="cpu", validation_split=0.0, num_threads=1)
    det.fit(clips)
    normal = det.score(clips)
    threshold = float(normal.max() * 1.5)
    info: dict = {"method": "fixed"}
    if calibrated:
        from models.threshold import calibration

        info["calibration"] = {**calibration(normal, threshold, None), "scores": "training"}
    return save_bundle(out, det, feature, threshold, info, "hum", ["00"], {"clips": len(clips)},
                       window_seconds=window_seconds, hop_seconds=hop_seconds)


def calibrated_info(source: str, scores: list[float], threshold: float, model: str = "dcase_ae"):
    """The ThresholdInfo of a gamma threshold calibrated on cross-fitted `scores`, as a bundle records it
    (`models.threshold.calibration`)."""
    from models.threshold import calibration
    from monitor.events import ThresholdInfo

    cal = calibration(scores, threshold, 0.9)
    return ThresholdInfo(source, model, threshold, "gamma", "cross-fitted", cal["n_scores"], cal["level"],
                         cal["false_alarm_rate"], tuple(cal["false_alarm_rate_interval"]), cal["quantile"],
                         tuple(cal["quantile_interval"]))


def noisy_pair_audio(seconds: float, seed: int, snr_db: float = 0.0, sr: int = SR) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy): `machine_audio` and the same samples with brown-ish background noise at `snr_db`."""
    from offline.datasets.pairs import mix_at_snr

    clean = machine_audio(seconds, seed, sr=sr)
    rng = np.random.default_rng(10_000 + seed)
    noise = np.cumsum(rng.standard_normal(clean.size)).astype(np.float32)
    noise = noise - np.convolve(noise, np.ones(64) / 64, mode="same")  # no drift: a low rumble
    return clean, mix_at_snr(clean, noise, snr_db)


def make_denoiser_bundle(out: Path, n_mels: int = 24, sr: int = SR, epochs: int = 3) -> Path:
    """A real `lstm_denoiser` bundle on the log-mel of `make_tiny_bundle` (context aside), trained in about a
    second on pairs of `noisy_pair_audio` (tests only)."""
    feature = LogMelConfig(sample_rate=sr, n_fft=256, hop_length=128, n_mels=n_mels)
    pairs = [noisy_pair_audio(2.0, seed, sr=sr) for seed in range(4)]
    den = get_detector("lstm_denoiser")(hidden=8, seq_frames=16, epochs=epochs, batch_size=16, progress=False,
                                        device="cpu")
    den.fit_pairs([feature.extract(n) for _, n in pairs], [feature.extract(c) for c, _ in pairs])
    return save_bundle(out, den, feature, 0.0, {"method": "none"}, "hum", ["00"], {"pairs": len(pairs)})


def make_noise_classifier_bundle(out: Path, sr: int = SR, epochs: int = 6) -> Path:
    """A real `lstm_classifier` bundle (kind `classifier`: a window's score is the probability that it is noisy,
    threshold 0.5) on the log-mel of `make_denoiser_bundle`, trained in about a second on pairs of
    `noisy_pair_audio` at 0 dB (tests only). Its 1 s window and 0.25 s hop match `make_tiny_bundle`'s."""
    feature = LogMelConfig(sample_rate=sr, n_fft=256, hop_length=128, n_mels=24)
    pairs = [noisy_pair_audio(2.0, seed, sr=sr) for seed in range(4)]
    det = get_detector("lstm_classifier")(hidden=8, seq_frames=16, epochs=epochs, batch_size=16, lr=1e-2,
                                          progress=False, device="cpu")
    det.fit_pairs([feature.extract(n) for _, n in pairs], [feature.extract(c) for c, _ in pairs])
    return save_bundle(out, det, feature, 0.5, {"method": "fixed"}, "hum", ["00"], {"pairs": len(pairs)},
                       window_seconds=1.0, hop_seconds=0.25)
