"""The MIMII study's clip statistics against a reference computed with librosa, scipy and numpy directly."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.fft
import scipy.stats

from models.features import feature_from_dict
from models.features.clipstats import BLOCK, WAVEFORM_STATS, ClipStatsConfig

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
    n = whole_blocks(x) * BLOCK  # the frames of whole blocks
    ref = scipy.fft.dct(np.log(mel[:, :n] + 1e-8), type=2, norm="ortho", axis=0).mean(axis=1)
    got = cfg.extract(x)
    assert got.shape == (1, 136) and cfg.dim == 136
    np.testing.assert_allclose(got[0, :128].numpy(), ref, rtol=1e-4, atol=2e-3)


def whole_blocks(x: np.ndarray, hop: int = 160, n_fft: int = 512) -> int:
    """Blocks of BLOCK mel frames in x (block i owns samples [i*B, (i+1)*B), B = BLOCK * hop)."""
    return (x.size - (n_fft + (BLOCK - 1) * hop)) // (BLOCK * hop) + 1


def reference_waveform_stats(x: np.ndarray, hop: int = 160) -> dict[str, float]:
    """The eight statistics with numpy and scipy over the samples the blocks own, the histogram on 256 full-scale
    bins."""
    x = x[: whole_blocks(x) * BLOCK * hop].astype(np.float64)
    rms = np.sqrt(np.mean(x**2))
    counts, _ = np.histogram(np.clip(x, -1, 1), bins=256, range=(-1.0, 1.0))
    return {"rms": rms, "kurtosis": scipy.stats.kurtosis(x), "skewness": scipy.stats.skew(x),
            "peak_to_peak": x.max() - x.min(), "crest_factor": np.abs(x).max() / rms, "mean": x.mean(),
            "std": x.std(), "entropy": scipy.stats.entropy(counts)}


def test_waveform_statistics_match_scipy() -> None:
    x = _audio(1.0, 1) + 0.01  # an offset: the moments must not assume zero mean
    got = dict(zip(WAVEFORM_STATS, ClipStatsConfig().extract(x)[0, 128:].double().numpy()))
    ref = reference_waveform_stats(x)
    for name in WAVEFORM_STATS:
        assert got[name] == pytest.approx(ref[name], rel=1e-4, abs=1e-6), name


def test_constant_signals_have_defined_statistics() -> None:
    cfg = ClipStatsConfig()
    silent = dict(zip(WAVEFORM_STATS, cfg.extract(np.zeros(2000, np.float32))[0, 128:].numpy()))
    dc = dict(zip(WAVEFORM_STATS, cfg.extract(np.full(2000, 0.5, np.float32))[0, 128:].numpy()))
    assert np.isfinite(list(silent.values())).all() and np.isfinite(list(dc.values())).all()
    assert dc["crest_factor"] == pytest.approx(1.0) and silent["crest_factor"] == 0.0
    assert dc["kurtosis"] == dc["skewness"] == 0.0 and dc["entropy"] == 0.0


def test_a_windows_statistics_are_the_reduction_of_its_frames() -> None:
    """What makes streaming cheap: the statistics of a window are a function of its frames alone."""
    cfg = ClipStatsConfig()
    x = _audio(2.0, 4)
    frames = cfg.frame_front().extract(x)
    assert frames.shape == (whole_blocks(x), 128 + 6 + 256)
    np.testing.assert_array_equal(cfg.reduce([frames]).numpy(), cfg.extract(x).numpy())
    half = frames[: frames.shape[0] // 2]
    np.testing.assert_array_equal(cfg.reduce([half, frames])[0].numpy(), cfg.reduce([half])[0].numpy())


def test_one_vector_per_window_and_config_checks() -> None:
    cfg = ClipStatsConfig()
    shortest = 512 + (BLOCK - 1) * 160  # one block
    assert cfg.window_level and cfg.n_vectors(shortest - 1) == 0 and cfg.n_vectors(shortest) == 1
    assert cfg.n_vectors(10**6) == 1
    assert feature_from_dict(cfg.to_dict()) == cfg
    batch = cfg.extract_batch([_audio(1.0, 2), _audio(1.5, 3)])
    np.testing.assert_array_equal(batch[1].numpy(), cfg.extract(_audio(1.5, 3)).numpy())
    with pytest.raises(ValueError, match="win_length 600 exceeds n_fft 512"):
        ClipStatsConfig(win_length=600)
    with pytest.raises(ValueError, match="hist_bins must be a positive integer"):
        ClipStatsConfig(hist_bins=0)
