"""MIMII clip statistics: one 136-value vector per window, the handcrafted features of the MIMII per-SNR study.

- 128 values: the time mean of the orthonormal DCT (over the mel axis) of the natural log of a 128-band mel power
  spectrogram (n_fft 512, a 25 ms Hann window centred in each 512-sample frame, 10 ms hop), `log(mel + 1e-8)`.
- 8 values from the waveform itself: RMS, kurtosis (Fisher, 0 for a Gaussian), skewness, peak-to-peak, crest factor
  (peak |x| over RMS), mean, standard deviation, and the entropy (nats) of a 256-bin amplitude histogram.

Framing is `center=False`, as for every kind here (the study's librosa call padded the clip ends; a stream has no
end to pad). The mel front end reuses `MelComputer` (filterbank, framing, bit-exact row padding) with the study's
shorter window. Values are not scaled here: the study's min-max scaling is fitted on the normal training windows
and belongs in the bundle as learned state (a stage), not in the feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from models.features.base import WindowFeature, register_feature
from models.features.logmel import LogMelConfig, MelComputer
from models.features.mfcc import dct_matrix

WAVEFORM_STATS = ("rms", "kurtosis", "skewness", "peak_to_peak", "crest_factor", "mean", "std", "entropy")


@register_feature
@dataclass(frozen=True)
class ClipStatsConfig(WindowFeature):
    """Settings of the MIMII study's clip statistics (its values are the defaults)."""

    kind = "clipstats"

    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400  # 25 ms at 16 kHz
    hop_length: int = 160  # 10 ms
    n_mels: int = 128
    log_offset: float = 1e-8
    hist_bins: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive("n_fft", "win_length", "hop_length", "n_mels", "hist_bins")
        if self.win_length > self.n_fft:
            raise ValueError(f"clipstats: win_length {self.win_length} exceeds n_fft {self.n_fft}")
        if not self.log_offset > 0:
            raise ValueError(f"clipstats: log_offset must be positive, got {self.log_offset!r}")

    @property
    def dim(self) -> int:
        return self.n_mels + len(WAVEFORM_STATS)

    @property
    def min_window(self) -> int:
        return self.n_fft

    def mel_config(self) -> LogMelConfig:
        return LogMelConfig(sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
                            n_mels=self.n_mels, power=2.0)

    def compute(self, signals: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
        mel_part = _computer(self, str(device)).dct_means(signals)
        wave_part = torch.from_numpy(np.stack([waveform_stats(s, self.hist_bins) for s in signals])).float()
        return torch.cat([mel_part, wave_part.to(mel_part.device)], dim=1)


class ClipMelComputer(MelComputer):
    """`MelComputer` with a `win_length` Hann window centred in each n_fft frame (librosa's convention), then
    natural log, DCT over the mel axis and the mean over each signal's frames."""

    def __init__(self, cfg: ClipStatsConfig, device: torch.device) -> None:
        super().__init__(cfg.mel_config(), device)
        pad = (cfg.n_fft - cfg.win_length) // 2
        window = torch.zeros(cfg.n_fft)
        window[pad : pad + cfg.win_length] = torch.hann_window(cfg.win_length, periodic=True)
        self.window = window.to(device)
        self.clip_cfg = cfg
        self.dct = torch.from_numpy(dct_matrix(cfg.n_mels, cfg.n_mels)).to(device)

    def dct_means(self, signals: Sequence[np.ndarray]) -> torch.Tensor:
        """[len(signals), n_mels]: per signal, the time mean of the DCT of log(mel + offset)."""
        tensors = [torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32)) for s in signals]
        frames, n = self.frames(tensors)
        offset = self.clip_cfg.log_offset
        logmel = self.in_blocks(frames, self.FRAMES_PER_BLOCK, lambda block: self.mel(block).add_(offset).log_())
        coeffs = torch.mm(logmel, self.dct)[:n]
        counts = [self.cfg.n_frames(t.shape[0]) for t in tensors]
        return torch.stack([part.double().mean(dim=0).float() for part in torch.split(coeffs, counts)])


@lru_cache(maxsize=16)
def _computer(cfg: ClipStatsConfig, device: str) -> ClipMelComputer:
    return ClipMelComputer(cfg, torch.device(device))


def waveform_stats(x: np.ndarray, bins: int = 256) -> np.ndarray:
    """The eight waveform statistics of `WAVEFORM_STATS`, in float64. A constant signal has zero spread, so its
    kurtosis and skewness are defined as 0 and its crest factor as 0 (silence) or 1 (DC)."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean()
    centred = x - mean
    var = float(np.mean(centred**2))
    std = var**0.5
    rms = float(np.sqrt(np.mean(x**2)))
    if var > 0:
        skew = float(np.mean(centred**3) / var**1.5)
        kurt = float(np.mean(centred**4) / var**2 - 3.0)
    else:
        skew = kurt = 0.0
    peak = float(np.max(np.abs(x)))
    crest = peak / rms if rms > 0 else 0.0
    counts, _ = np.histogram(x, bins=bins)
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * np.log(p)).sum())
    return np.array([rms, kurt, skew, float(np.ptp(x)), crest, float(mean), std, entropy])
