"""STgram-MFN's two inputs frame by frame: each frame's log-mel (the "Sgram") followed by the frame's raw samples,
from which the detector's learned temporal branch (the "Tgram") computes its own filterbank.

STgram-MFN (Liu et al. 2022) runs a 1-D convolution with kernel n_fft and stride hop over the waveform. That is a
linear map of each n_fft-sample frame, so giving the detector the frames cut by the shared framing machine (the
log-mel's own frames, before the Hann window) lets it compute exactly that convolution while the streaming
machinery stays the one every kind uses: frame i of both halves covers the same samples, and the monitor computes
each frame once. The reference pads the waveform by n_fft / 2 (`center=True`); here framing is `center=False`,
as everywhere else in the project, so a 10 s clip has 311 frames instead of 313.

A frame's vector is `n_mels + n_fft` values (1152 at the defaults), 9x a log-mel frame: a fit's training tensor is
about 1.4 MB per 10 s clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.features.base import FrameComputer, StftFeature, register_feature
from models.features.logmel import LogMelConfig, MelComputer


@register_feature
@dataclass(frozen=True)
class StgramConfig(StftFeature):
    """Log-mel settings as in `logmel` (dB = 20/power * log10(mel + eps)); the raw frame follows the mel values."""

    kind = "stgram"

    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    power: float = 2.0
    fmin: float = 0.0
    fmax: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive("n_mels")
        self.mel_config()  # its own checks (band, power)

    def mel_config(self) -> LogMelConfig:
        """The log-mel half as a `logmel` config: the same numbers as that kind computes."""
        return LogMelConfig(sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
                            n_mels=self.n_mels, power=self.power, fmin=self.fmin, fmax=self.fmax)

    @property
    def frame_dim(self) -> int:
        return self.n_mels + self.n_fft

    def make_computer(self, device: torch.device) -> "StgramComputer":
        return StgramComputer(self, device)


class StgramComputer(FrameComputer):
    """Raw frames in (no window: the framing machine copies them as they are), `[log-mel | raw]` out."""

    def __init__(self, cfg: StgramConfig, device: torch.device) -> None:
        super().__init__(cfg.n_fft, cfg.hop_length, None, device)
        self.mel = MelComputer(cfg.mel_config(), device)
        self.n_mels = cfg.n_mels

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        out = frames.new_empty((frames.shape[0], self.n_mels + self.frame_length))
        out[:, self.n_mels :] = frames
        assert self.mel.window is not None
        out[:, : self.n_mels] = self.mel(frames.mul_(self.mel.window))  # the frames are ours to consume now
        return out
