"""MIMII clip statistics: one 136-value vector per window, the handcrafted features of the MIMII per-SNR study.

- 128 values: the time mean of the orthonormal DCT (over the mel axis) of the natural log of a 128-band mel power
  spectrogram (n_fft 512, a 25 ms Hann window centred in each 512-sample frame, 10 ms hop), `log(mel + 1e-8)`.
- 8 values from the waveform itself: RMS, kurtosis (Fisher, 0 for a Gaussian), skewness, peak-to-peak, crest factor
  (peak |x| over RMS), mean, standard deviation, and the entropy (nats) of a 256-bin amplitude histogram.

Framing is `center=False`, as for every kind here (the study's librosa call padded the clip ends; a stream has no
end to pad). Values are not scaled here: the study's min-max scaling is fitted on the normal training windows and
belongs in the bundle as learned state (a stage), not in the feature.

Computed from a front end (`ClipFramesConfig`), so that the monitor pays one reduction per window and hop instead
of ten seconds of features: every block of `BLOCK` mel frames (100 ms) contributes the sum of its frames' DCTs of
log-mel and the power sums, extremes and histogram counts of the samples it owns (block i owns samples
[i*B, (i+1)*B), B = BLOCK * hop); a window's statistics come from summing its blocks'. Consequences, deliberate:
- a window's mel mean and waveform statistics cover its whole blocks (a 10 s clip: 990 of its 998 frames; the last
  n_fft - hop samples belong to no block yet), and the moments come from power sums (exact for zero-mean audio up
  to rounding; a large DC offset would cost precision);
- the histogram's 256 bins span full scale, [-1, 1], instead of each window's own [min, max] (which would need
  every sample of the window at every hop): the entropy then also reflects the level, and a window's histogram is
  the sum of its frames'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from models.features.base import FramedFeature, WindowFeature, register_feature
from models.features.logmel import LogMelConfig, MelComputer
from models.features.mfcc import dct_matrix

BLOCK = 10  # mel frames per front-end vector (100 ms at the study's 10 ms hop)
ROWS_PER_CALL = 64  # front-end vectors computed together (a multiple of ROW_BLOCK; see ClipFrameComputer)
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
        if self.hop_length > self.n_fft:
            raise ValueError(f"clipstats: hop_length {self.hop_length} exceeds n_fft {self.n_fft} (a frame owns "
                             "the first hop_length samples it covers)")
        if not self.log_offset > 0:
            raise ValueError(f"clipstats: log_offset must be positive, got {self.log_offset!r}")

    @property
    def dim(self) -> int:
        return self.n_mels + len(WAVEFORM_STATS)

    @property
    def min_window(self) -> int:
        return self.n_fft + (BLOCK - 1) * self.hop_length

    def frame_front(self) -> "ClipFramesConfig":
        return ClipFramesConfig(sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
                                n_mels=self.n_mels, win_length=self.win_length, log_offset=self.log_offset,
                                hist_bins=self.hist_bins)

    def reduce(self, frames: Sequence[torch.Tensor]) -> torch.Tensor:
        """Each window's blocks summed on their own (no stacked copy of all windows' blocks, which cost more than
        the sums), then the statistics of all windows at once. The sums run in float32 (a float64 reduction was ten
        times slower, and the monitor runs this every hop for every stream): exact for the histogram counts, ~1e-6
        relative for the means and power sums; the statistics are then formed in float64."""
        m = self.n_mels
        sums = torch.stack([f.sum(dim=0) for f in frames]).double()  # [n, frame_dim]
        lo = torch.stack([f[:, m + 4].min() for f in frames]).double()
        hi = torch.stack([f[:, m + 5].max() for f in frames]).double()
        blocks = torch.tensor([float(f.shape[0]) for f in frames], dtype=torch.float64)
        return self._statistics(sums, lo, hi, blocks)

    def _statistics(self, sums: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, blocks: torch.Tensor
                    ) -> torch.Tensor:
        """[n, frame_dim] block sums, extremes and block counts (float64) -> [n, dim] float32."""
        m = self.n_mels
        dct_mean = sums[:, :m] / (blocks * BLOCK)[:, None]
        s1, s2, s3, s4 = sums[:, m : m + 4].unbind(dim=1)
        counts = sums[:, m + 6 :]
        n = blocks * (BLOCK * self.hop_length)
        mean = s1 / n
        var = (s2 / n - mean**2).clamp_(min=0.0)
        m3 = s3 / n - 3 * mean * s2 / n + 2 * mean**3
        m4 = s4 / n - 4 * mean * s3 / n + 6 * mean**2 * s2 / n - 3 * mean**4
        spread = var > 0
        safe = torch.where(spread, var, torch.ones_like(var))
        skew = torch.where(spread, m3 / safe**1.5, torch.zeros_like(var))
        kurt = torch.where(spread, m4 / safe**2 - 3.0, torch.zeros_like(var))
        rms = (s2 / n).sqrt()
        peak = torch.maximum(lo.abs(), hi.abs())
        crest = torch.where(rms > 0, peak / torch.where(rms > 0, rms, torch.ones_like(rms)), torch.zeros_like(rms))
        p = counts / counts.sum(dim=1, keepdim=True)
        entropy = -torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p)).sum(dim=1)
        wave = torch.stack([rms, kurt, skew, hi - lo, crest, mean, var.sqrt(), entropy], dim=1)
        return torch.cat([dct_mean, wave], dim=1).float()


@dataclass(frozen=True)
class ClipFramesConfig(FramedFeature):
    """The clip statistics' front end, one vector per block of `BLOCK` mel frames: the sum of the frames' DCTs of
    log-mel (`n_mels`), then the power sums x, x^2, x^3, x^4 (float32: ~1e-7 relative over 1600 samples), min and
    max of the samples the block owns, and their counts in `hist_bins` full-scale bins. Not a registered kind: it
    exists inside `clipstats`. Blocks keep a window's front end small (99 vectors of 390 values for 10 s), which is what
    the monitor keeps and sums for every stream at every hop."""

    kind = "clipstats_blocks"

    sample_rate: int = 16000
    n_fft: int = 512
    hop_length: int = 160
    n_mels: int = 128
    win_length: int = 400
    log_offset: float = 1e-8
    hist_bins: int = 256

    @property
    def frame_length(self) -> int:
        return self.n_fft + (BLOCK - 1) * self.hop_length

    @property
    def frame_hop(self) -> int:
        return BLOCK * self.hop_length

    @property
    def frame_dim(self) -> int:
        return self.n_mels + 6 + self.hist_bins

    def make_computer(self, device: torch.device) -> "ClipFrameComputer":
        return ClipFrameComputer(self, device)


class ClipFrameComputer(MelComputer):
    """`MelComputer` with a `win_length` Hann window centred in each n_fft frame (librosa's convention) applied here
    rather than while framing (the owned samples are read raw first), natural log and the DCT over the mel axis."""

    def __init__(self, cfg: ClipFramesConfig, device: torch.device) -> None:
        super().__init__(LogMelConfig(sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                      n_mels=cfg.n_mels, power=2.0), device)
        pad = (cfg.n_fft - cfg.win_length) // 2
        window = torch.zeros(cfg.n_fft)
        window[pad : pad + cfg.win_length] = torch.hann_window(cfg.win_length, periodic=True)
        self.clip_window = window.to(device)
        self.window = None  # frames come raw
        self.frame_length, self.frame_hop = cfg.frame_length, cfg.frame_hop  # a block of BLOCK mel frames
        self.clip_cfg = cfg
        self.dct = torch.from_numpy(dct_matrix(cfg.n_mels, cfg.n_mels)).to(device)
        self._one = torch.ones(1, 1, device=device)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """In blocks of `ROWS_PER_CALL` rows: every step's temporaries (powers, histogram indices, the mel frames
        and their spectra) then stay in cache and reuse memory, which halved the cost of a 500-stream batch."""
        return self.in_blocks(frames, ROWS_PER_CALL, self._blocks)

    def _blocks(self, frames: torch.Tensor) -> torch.Tensor:
        cfg, bins_half = self.clip_cfg, self.clip_cfg.hist_bins / 2.0
        owned = frames[:, : BLOCK * cfg.hop_length]
        x2 = owned * owned
        sums = torch.stack([owned.sum(1), x2.sum(1), torch.linalg.vecdot(x2, owned), torch.linalg.vecdot(x2, x2)],
                           dim=1)
        extremes = torch.stack([owned.amin(dim=1), owned.amax(dim=1)], dim=1)
        # bin floor((x + 1) * bins / 2), clipped to the end bins; x2 is dead and takes the scaled values
        scaled = torch.mul(owned, bins_half, out=x2).add_(bins_half).clamp_(0.0, cfg.hist_bins - 0.5)
        bins = scaled.to(torch.int64)
        counts = torch.zeros(frames.shape[0], cfg.hist_bins, device=frames.device).scatter_add_(
            1, bins, self._one.expand(bins.shape))
        # the block's BLOCK mel frames, one per row (row count stays a multiple of 16), windowed
        sub = (frames.unfold(1, cfg.n_fft, cfg.hop_length) * self.clip_window).view(-1, cfg.n_fft)  # one pass
        logmel = self.in_blocks(sub, self.FRAMES_PER_BLOCK, lambda b: self.mel(b).add_(cfg.log_offset).log_())
        # the DCT is linear: the sum of the frames' DCTs is the DCT of their sum (one tenth of the product)
        dct_sums = torch.mm(logmel.view(frames.shape[0], BLOCK, cfg.n_mels).sum(dim=1), self.dct)
        return torch.cat([dct_sums, sums, extremes, counts], dim=1)
