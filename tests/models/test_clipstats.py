"""The MIMII study's clip statistics against a reference computed with librosa, scipy and numpy directly."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.fft
import scipy.stats

from models.features import feature_from_dict
from models.features.clipstats import WAVEFORM_STATS, ClipStatsConfig, waveform_stats

SR = 16000


def _audio(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3100 * t) + 0.05 * rng.standard_normal(t.size)
    x[rng.integers(0, t.size, 30)] += 0.5  # impulses give the waveform statistics something to see
    return x.astype(np.float32)


def test_mel_part_is_the_time_mean_of_the_dct_of_log_mel() -> None:
    cfg = ClipStatsConfig()
    x = _audio(2.0, 0)
    mel = librosa.feature.melspectrogram(y=x, sr=SR, n_fft=512, hop_length=160, win_length=400, n_mels=128,
                                         power=2.0, center=False, window="hann")
    ref = scipy.fft.dct(np.log(mel + 1e-8), type=2, norm="ortho", axis=0).mean(axis=1)
    got = cfg.extract(x)
    assert got.shape == (1, 136) and cfg.dim == 136
    np.testing.assert_allclose(got[0, :128].numpy(), ref, rtol=1e-4, atol=2e-3)


def test_waveform_statistics_match_scipy() -> None:
    x = _audio(1.0, 1).astype(np.float64)
    stats = dict(zip(WAVEFORM_STATS, waveform_stats(x)))
    rms = np.sqrt(np.mean(x**2))
    assert stats["rms"] == pytest.approx(rms)
    assert stats["kurtosis"] == pytest.approx(scipy.stats.kurtosis(x))
    assert stats["skewness"] == pytest.approx(scipy.stats.skew(x))
    assert stats["peak_to_peak"] == pytest.approx(x.max() - x.min())
    assert stats["crest_factor"] == pytest.approx(np.abs(x).max() / rms)
    assert (stats["mean"], stats["std"]) == (pytest.approx(x.mean()), pytest.approx(x.std()))
    assert stats["entropy"] == pytest.approx(scipy.stats.entropy(np.histogram(x, 256, density=True)[0]))
    got = ClipStatsConfig().extract(x.astype(np.float32))[0, 128:].double().numpy()
    np.testing.assert_allclose(got, waveform_stats(x.astype(np.float32)), rtol=1e-6)


def test_constant_signals_have_defined_statistics() -> None:
    silent = waveform_stats(np.zeros(1000))
    dc = waveform_stats(np.full(1000, 0.5))
    assert np.isfinite(silent).all() and np.isfinite(dc).all()
    assert dict(zip(WAVEFORM_STATS, dc))["crest_factor"] == 1.0


def test_one_vector_per_window_and_config_checks() -> None:
    cfg = ClipStatsConfig()
    assert cfg.window_level and cfg.n_vectors(511) == 0 and cfg.n_vectors(512) == 1 and cfg.n_vectors(10**6) == 1
    assert feature_from_dict(cfg.to_dict()) == cfg
    batch = cfg.extract_batch([_audio(1.0, 2), _audio(1.5, 3)])
    np.testing.assert_array_equal(batch[1].numpy(), cfg.extract(_audio(1.5, 3)).numpy())
    with pytest.raises(ValueError, match="win_length 600 exceeds n_fft 512"):
        ClipStatsConfig(win_length=600)
    with pytest.raises(ValueError, match="hist_bins must be a positive integer"):
        ClipStatsConfig(hist_bins=0)
