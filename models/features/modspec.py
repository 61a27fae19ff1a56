"""Modulation spectrum: how fast, and how strongly, the level of each acoustic band fluctuates over a window; one
vector per window (system 1 of the modulation-spectral study, issue #10).

Per window:
1. Acoustic bands: a magnitude STFT framed like log-mel (`center=False`, periodic Hann) and log-mel's Slaney
   filterbank on the power spectrum (`MelComputer`, so framing and filters are not duplicated). A band's envelope is
   the square root of its mel power, the band amplitude (about what a filterbank followed by a Hilbert envelope
   measures); `log_envelope` takes it in dB instead, which makes the modulation values depend on the relative
   modulation depth only, not on the band level.
2. Each band's envelope over the window's frames: its mean removed (weighted by the taper, so the tapered envelope
   has no DC at all), a Hann taper over the whole window, an FFT zero-padded to at least four FFT bins in the
   narrowest modulation bin (a length 2^k, 3 * 2^k or 5 * 2^k).
3. The one-sided modulation power spectral density integrated over `n_mod_bins` bins between `mod_fmin` and
   `mod_fmax` Hz (log- or linearly spaced edges, [lo, hi) each). Integrated *power*, not the mean magnitude: a
   modulation line and a noise floor then keep their values whatever the window length, so monitor windows and
   offline clips of other lengths give comparable vectors of one fixed dimension. The bins sum to the taper-weighted
   variance of the envelope (Parseval), in envelope units squared.
4. `10 log10(power + EPS)`, band-major: `n_mels` blocks of `n_mod_bins` values.
5. `level_norm`: the mean of the window's values subtracted. A gain of g dB scales every linear envelope alike and
   so adds g dB to every value: without its mean the vector does not depend on the microphone's gain, and keeps
   the relative band levels and modulation depths (`log_envelope` removes the band levels as well).

Defaults, for 16 kHz machine sounds: n_fft 512 (32 ms): a frame's Hann window smooths the envelope, and at 32 ms it
passes 30 Hz modulations with at most 6 dB loss (1024 samples would lose 16-30 Hz almost entirely); hop 128 (an
envelope rate of 125 Hz, whose Nyquist, 62.5 Hz, is the frame window's first spectral null, so little envelope
content aliases into the analysed range); 32 mel bands; 12 half-octave modulation bins from 0.5 to 32 Hz (slow
slider and valve cycles up to rotation and pulsation rates), 384 values. A window needs 16 frames (0.15 s); bins
narrower than the window's own resolution (1 / its length, e.g. those below 2 Hz for a 1 s window) are sampled
from the zero-padded spectrum, i.e. smoothed over neighbouring rates, but are always defined. Values are not scaled
here: normalisation is the detector's learned state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from models.features.base import WindowFeature, register_feature
from models.features.logmel import EPS, LogMelConfig, MelComputer

MIN_FRAMES = 16  # fewer frames leave no envelope to speak of
POINTS_PER_BIN = 4  # FFT bins in the narrowest modulation bin, at least (zero padding)
REDUCE_BATCH = 4  # windows reduced per call: per-call overhead shared, their envelopes and FFT input (2.6 MB) near the L2
MOD_SCALES = ("log", "linear")


@register_feature
@dataclass(frozen=True)
class ModSpecConfig(WindowFeature):
    """Settings of the modulation spectrum; `dim` is `n_mels * n_mod_bins` whatever the window length."""

    kind = "modspec"

    sample_rate: int = 16000
    n_fft: int = 512
    hop_length: int = 128
    n_mels: int = 32
    fmin: float = 0.0
    fmax: float | None = None
    log_envelope: bool = False
    level_norm: bool = False
    mod_fmin: float = 0.5
    mod_fmax: float = 32.0
    n_mod_bins: int = 12
    mod_scale: str = "log"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive("n_fft", "hop_length", "n_mels", "n_mod_bins")
        nyquist = self.sample_rate / 2
        top = nyquist if self.fmax is None else self.fmax
        if not 0.0 <= self.fmin < top <= nyquist:
            raise ValueError(f"modspec: need 0 <= fmin < fmax <= {nyquist:g} Hz (Nyquist), "
                             f"got fmin={self.fmin!r}, fmax={self.fmax!r}")
        for name in ("log_envelope", "level_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"modspec: {name} must be true or false, got {getattr(self, name)!r}")
        env_nyquist = self.frame_rate / 2
        if not 0.0 < self.mod_fmin < self.mod_fmax <= env_nyquist:
            raise ValueError(f"modspec: need 0 < mod_fmin < mod_fmax <= {env_nyquist:g} Hz (half the envelope rate "
                             f"sample_rate / hop_length), got mod_fmin={self.mod_fmin!r}, mod_fmax={self.mod_fmax!r}")
        if self.mod_scale not in MOD_SCALES:
            raise ValueError(f"modspec: mod_scale must be one of {MOD_SCALES}, got {self.mod_scale!r}")

    @property
    def dim(self) -> int:
        return self.n_mels * self.n_mod_bins

    @property
    def min_window(self) -> int:
        return self.n_fft + (MIN_FRAMES - 1) * self.hop_length

    @property
    def frame_rate(self) -> float:
        """Envelope samples per second."""
        return self.sample_rate / self.hop_length

    @property
    def mod_edges(self) -> np.ndarray:
        """The `n_mod_bins + 1` modulation bin edges in Hz; bin j is [edges[j], edges[j+1])."""
        space = np.geomspace if self.mod_scale == "log" else np.linspace
        return space(self.mod_fmin, self.mod_fmax, self.n_mod_bins + 1)

    def fft_length(self, n_frames: int) -> int:
        """Zero-padded modulation FFT length for an envelope of `n_frames`: at least `n_frames` and fine enough for
        `POINTS_PER_BIN` FFT bins in the narrowest modulation bin, the shortest of the form 2^k, 3 * 2^k or 5 * 2^k
        (FFTs of those lengths are as fast per point as a power of two; the defaults' 10 s window needs 2414 points:
        2560 rather than 4096 halves the monitor's FFT time per window)."""
        narrowest = float(np.diff(self.mod_edges).min())
        need = max(n_frames, math.ceil(POINTS_PER_BIN * self.frame_rate / narrowest))
        return min(f << (math.ceil(need / f) - 1).bit_length() for f in (1, 3, 5))

    def mel_config(self) -> LogMelConfig:
        return LogMelConfig(sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
                            n_mels=self.n_mels, fmin=self.fmin, fmax=self.fmax, power=2.0)

    def frame_front(self) -> "BandAmplitudeConfig":
        """Mel band amplitudes per frame: computed once as audio arrives (each frame is in ten 10 s windows at a
        1 s hop); each window reduces its own frames."""
        return BandAmplitudeConfig(sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
                                   n_mels=self.n_mels, fmin=self.fmin, fmax=self.fmax, power=2.0)

    def reduce(self, frames: Sequence[torch.Tensor]) -> torch.Tensor:
        """[n, dim] float32 from each window's [n_frames, n_mels] band amplitudes: dB modulation power per (band,
        modulation bin), band-major.

        Consecutive windows of one length go through in batches of `REDUCE_BATCH` (the monitor's case: every
        stream's window has the same length), each step one call for the batch; every row is still its own FFT and
        its own dot products, so a window's numbers do not depend on which windows were reduced with it (tested).
        Band-major, one contiguous FFT row per band (three times faster than strided ones), in two precisions: the
        envelope and its taper-weighted mean in float64 (the dB envelope's modulation is a small difference of large
        values), the tapered, mean-free envelope transformed in float32, twice as fast as float64, with rounding
        relative to the modulation itself. The monitor runs this once per window and hop for every stream."""
        device = frames[0].device if len(frames) else None
        out = torch.empty((len(frames), self.dim), dtype=torch.float32, device=device)
        buffers: tuple[torch.Tensor, torch.Tensor] | None = None  # reused while the window length stays the same
        start = 0
        while start < len(frames):
            t, dev = frames[start].shape[0], frames[start].device
            stop = start + 1
            while stop < len(frames) and stop - start < REDUCE_BATCH and frames[stop].shape[0] == t:
                stop += 1
            plan = _plan(self, t, str(dev))
            if buffers is None or buffers[1].shape[2] != plan.m or buffers[0].shape[2] != t or buffers[0].device != dev:
                n = min(REDUCE_BATCH, len(frames) - start)
                buffers = (torch.empty((n, self.n_mels, t), dtype=torch.float64, device=dev),  # envelopes
                           torch.zeros((n, self.n_mels, plan.m), dtype=torch.float32, device=dev))  # FFT input
            self._reduce_batch(frames[start:stop], plan, buffers, out[start:stop])
            start = stop
        return out

    def _reduce_batch(self, frames: Sequence[torch.Tensor], plan: "_Plan", buffers: tuple[torch.Tensor, torch.Tensor],
                      out: torch.Tensor) -> None:
        """Windows of one length, `[b, n_frames, n_mels]` band amplitudes -> `out` `[b, dim]`; `buffers` hold at
        least b envelopes and FFT inputs (whose zero padding past n_frames is never written)."""
        b, t, bands = len(frames), frames[0].shape[0], self.n_mels
        env, buf = buffers[0][:b], buffers[1][:b]
        for k, amp in enumerate(frames):
            env[k].copy_(amp.T)
        if self.log_envelope:
            env.add_(EPS).log10_().mul_(20.0)
        mean = (env @ plan.taper).div_(plan.taper_sum)
        buf[:, :, :t] = env.sub_(mean[:, :, None]).mul_(plan.taper)
        # |X|^2 summed per modulation bin in one product: the squared (re, im) pairs against each bin's 0/1 mask
        sq = torch.view_as_real(torch.fft.rfft(buf, dim=2)).square_().view(b * bands, -1)
        rows = out.view(b * bands, self.n_mod_bins)
        torch.mm(sq[:, plan.lo : plan.hi], plan.pool, out=rows)
        rows.mul_(plan.scale).add_(EPS).log10_().mul_(10.0)
        if self.level_norm:
            out.sub_(out.mean(dim=1, keepdim=True))


@dataclass(frozen=True)
class _Plan:
    """What every window of one length needs: the taper, the FFT length, the bin masks and the PSD scale."""

    m: int
    taper: torch.Tensor  # [n_frames] float64
    taper_sum: float
    lo: int  # the (re, im) columns of the squared rfft that some modulation bin covers: [lo, hi)
    hi: int
    pool: torch.Tensor  # [hi - lo, n_mod_bins] float32: 1 where an rfft bin (re and im) is in a mod bin
    scale: float  # one-sided PSD of the tapered envelope: 2 / (m * sum(taper^2))


@lru_cache(maxsize=64)
def _plan(cfg: ModSpecConfig, t: int, device: str) -> _Plan:
    m = cfg.fft_length(t)
    taper = torch.hann_window(t, periodic=False, dtype=torch.float64, device=device)
    freqs = np.arange(m // 2 + 1) * cfg.frame_rate / m
    edges = cfg.mod_edges
    inside = np.repeat((freqs[:, None] >= edges[None, :-1]) & (freqs[:, None] < edges[None, 1:]), 2, axis=0)
    used = np.flatnonzero(inside.any(axis=1))  # bins outside every modulation bin add nothing: not multiplied
    lo, hi = int(used[0]), int(used[-1]) + 1
    pool = torch.from_numpy(inside[lo:hi].astype(np.float32)).to(device)
    return _Plan(m, taper, float(taper.sum()), lo, hi, pool, 2.0 / (m * float(taper.square().sum())))


@dataclass(frozen=True)
class BandAmplitudeConfig(LogMelConfig):
    """Mel band amplitude per frame, the square root of log-mel's band power (its framing and filterbank, without
    the dB): the modulation spectrum's front end. Not a registered kind of its own: it exists inside `modspec`."""

    kind = "modspec_bands"

    def make_computer(self, device: torch.device) -> "BandAmplitudeComputer":
        return BandAmplitudeComputer(self, device)


class BandAmplitudeComputer(MelComputer):
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return self.in_blocks(frames, self.FRAMES_PER_BLOCK, lambda b: self.mel(b).clamp_(min=0.0).sqrt_())
