"""Log magnitude spectrum with a long FFT: narrow tonal lines (bearing and gear harmonics, a motor's slip lines, mains
hum) that a mel filterbank averages away above a few hundred hertz.

The defaults (n_fft 4096 at 16 kHz: 3.9 Hz bins, 256 ms frames; hop 1024: 75% overlap, a vector every 64 ms) trade
time resolution for frequency resolution, the opposite of log-mel. `fmin`/`fmax` keep only the FFT bins in that
band, which is how the dimension is kept manageable for a detector that looks at one band. dB is
`20/power * log10(|X|^power + EPS)` with log-mel's EPS. Framing is `center=False` with a periodic Hann window, as
`librosa.stft(center=False, window="hann")`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.features.base import FrameComputer, StftFeature, register_feature
from models.features.logmel import EPS


@register_feature
@dataclass(frozen=True)
class SpectrumConfig(StftFeature):
    """Hyper-parameters of the long-FFT log spectrum; `dim` is the number of FFT bins with fmin <= f <= fmax.

    `power` is 1 (magnitude) or 2 (power), the two conventions in use: both reach `|X|^power` through exact IEEE
    operations (squares, a sum, a square root), whose vectorised and scalar code paths round identically. A general
    exponent needs `pow`, whose vectorised and scalar paths may differ in the last bit, and which of them a value
    meets depends on where it falls in the batch: it would break streaming == offline.
    """

    kind = "spectrum"

    n_fft: int = 4096
    hop_length: int = 1024
    power: float = 1.0
    fmin: float = 0.0
    fmax: float | None = None
    context: int = 1  # consecutive frames concatenated into one vector

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.power not in (1.0, 2.0):
            raise ValueError(f"spectrum: power must be 1.0 (magnitude) or 2.0 (power), got {self.power!r}")
        self._check_band(self.fmin, self.fmax, allow_equal=True)
        top = self.sample_rate / 2 if self.fmax is None else self.fmax
        lo, hi = self.bin_range
        if hi <= lo:
            raise ValueError(
                f"spectrum: no FFT bin lies in [{self.fmin!r}, {top!r}] Hz (bins are "
                f"{self.sample_rate / self.n_fft:g} Hz apart); widen the band or raise n_fft"
            )

    @property
    def bin_range(self) -> tuple[int, int]:
        """[lo, hi): the kept rfft bins, those whose centre frequency k*sample_rate/n_fft lies in [fmin, fmax]."""
        freqs = np.fft.rfftfreq(self.n_fft, d=1.0 / self.sample_rate)
        top = self.sample_rate / 2 if self.fmax is None else self.fmax
        kept = np.flatnonzero((freqs >= self.fmin) & (freqs <= top))
        return (int(kept[0]), int(kept[-1]) + 1) if kept.size else (0, 0)

    @property
    def frequencies(self) -> np.ndarray:
        """Centre frequency (Hz) of each kept bin, i.e. of each value of a frame vector."""
        lo, hi = self.bin_range
        return np.fft.rfftfreq(self.n_fft, d=1.0 / self.sample_rate)[lo:hi]

    @property
    def frame_dim(self) -> int:
        lo, hi = self.bin_range
        return hi - lo

    def make_computer(self, device: torch.device) -> "SpectrumComputer":
        return SpectrumComputer(self, device)


class SpectrumComputer(FrameComputer):
    """rfft, the kept bins' |X|^power, dB in place, in blocks of `FRAMES_PER_BLOCK` frames so that the complex
    spectrum of one block (8 KB a frame at n_fft 4096) stays in cache."""

    FRAMES_PER_BLOCK = 128  # a multiple of ROW_BLOCK

    def __init__(self, cfg: SpectrumConfig, device: torch.device) -> None:
        window = torch.hann_window(cfg.n_fft, periodic=True, dtype=torch.float32)
        super().__init__(cfg.n_fft, cfg.hop_length, window, device)
        self.cfg = cfg
        self.lo, self.hi = cfg.bin_range
        self.scale = 20.0 / cfg.power

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """[rows, n_fft] windowed frames (consumed) -> [rows, n_bins] dB."""
        return self.in_blocks(frames, self.FRAMES_PER_BLOCK, self._db)

    def _db(self, frames: torch.Tensor) -> torch.Tensor:
        spec = torch.fft.rfft(frames, dim=-1)[:, self.lo : self.hi]
        sq = torch.view_as_real(spec).square_()
        # the sum goes over the frames, dead by now: rows * n_bins <= rows * n_fft values fit
        out = frames.view(-1)[: spec.numel()].view(spec.shape)
        pw = torch.add(sq[..., 0], sq[..., 1], out=out)
        if self.cfg.power == 1.0:
            pw.sqrt_()
        return pw.add_(EPS).log10_().mul_(self.scale)
