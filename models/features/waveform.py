"""Raw waveform frames for learned front ends (1-D convolutions, SincNet-style filters), which want the samples
themselves and learn their own filterbank.

No window is applied: a network's first layer can learn any taper, and a fixed one would hide the frame edges
from it. The defaults (1024 / 512) are log-mel's framing, so frame i of both kinds covers the same samples and a
model can pair a waveform frame with its log-mel frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.features.base import FrameComputer, FramedFeature, register_feature


@register_feature
@dataclass(frozen=True)
class WaveformConfig(FramedFeature):
    """Frames of `frame_length` samples every `hop_length`; with `context` > 1 consecutive frames are concatenated
    (frame-major), as every framed kind does."""

    kind = "waveform"

    frame_length: int = 1024  # a field here: it overrides FramedFeature's abstract property
    hop_length: int = 512
    context: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive("frame_length", "hop_length", "context")

    @property
    def frame_hop(self) -> int:
        return self.hop_length

    @property
    def frame_dim(self) -> int:
        return self.frame_length

    def make_computer(self, device: torch.device) -> "WaveformComputer":
        return WaveformComputer(self.frame_length, self.hop_length, None, device)


class WaveformComputer(FrameComputer):
    """The identity: `frames` (unwindowed, since the window is None) already are the features."""

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return frames
