"""Segment embeddings of log-mel frames, the front end the few-normals detectors share (`embed_knn`,
`id_classifier`), so both cut, normalise and describe a window the same way (issue #13).

A window's frames `[T, n_mels]` are cut into segments of `segment_frames` consecutive frames (`crop_starts`: every
given hop from the window's start, plus one aligned to its end); a segment's embedding is, per band, the mean and
the standard deviation over its frames, after subtracting the segment's mean over all its values when
`level_norm` is on (log-mel is in dB, so a gain change of the clip leaves the embedding unchanged). Each detector's
module docstring records why these choices suit it; this one only holds the code.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch

from models.detectors.base import Detector, crop_starts
from models.features import LogMelConfig

# the defaults both detectors ship with: 32 frames of hop 512 at 16 kHz are 1.06 s, scored every 0.51 s; training
# clips are cut every 4 frames (0.13 s), so that every scored position of a training clip is among them
SEGMENT_FRAMES, SEGMENT_HOP, TRAIN_HOP = 32, 16, 4
SEGMENT_FEATURE = LogMelConfig(n_mels=128, n_fft=1024, hop_length=512, power=2.0, context=1).to_dict()
QUICK_SEGMENTS = {"segment_frames": 8, "segment_hop": 4}  # a fit well under a second (tests, the demo)


def segment_embeddings(X: torch.Tensor, frames: int, hop: int, level_norm: bool) -> torch.Tensor:
    """Embeddings `[S, 2 * dim]` (float64) of the segments of one `[T, dim]` matrix: per dimension the mean over
    the segment's `frames` frames, then the (population) standard deviation; with `level_norm` each segment's mean
    over all its values is subtracted first. Segments start every `hop` frames, plus one aligned to the end."""
    starts = torch.tensor(crop_starts(X.shape[0], frames, hop))
    seg = X.double()[starts[:, None] + torch.arange(frames)]  # [S, frames, dim]
    if level_norm:
        seg = seg - seg.mean(dim=(1, 2), keepdim=True)
    return torch.cat([seg.mean(dim=1), seg.std(dim=1, unbiased=False)], dim=1)


class SegmentDetector(Detector):
    """A window detector over segment embeddings: the parameter checks and the cutting of clips it shares.
    Subclasses have the hyper-parameters `segment_frames`, `level_norm` and the integer ones in `int_params`."""

    granularity = "window"
    feature_kinds = ("logmel",)  # dB values: a gain is an additive constant, what level_norm removes
    default_feature = SEGMENT_FEATURE
    int_params: ClassVar[tuple[str, ...]] = ("segment_frames", "segment_hop")

    def _check_params(self) -> None:
        for name in self.int_params:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{self.name}: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.level_norm, bool):
            raise ValueError(f"{self.name}: level_norm must be true or false, got {self.level_norm!r}")

    def check_feature(self, feature: Any) -> None:
        super().check_feature(feature)
        self._check_params()

    def _embed(self, clips: Sequence[torch.Tensor], hop: int, what: str) -> list[torch.Tensor]:
        """Each clip's segment embeddings (`segment_embeddings`), segments every `hop` frames; a clip shorter than
        one segment is a ValueError that names it."""
        frames = int(self.segment_frames)
        short = [i for i, c in enumerate(clips) if c.shape[0] < frames]
        if short:
            raise ValueError(f"{self.name}: {what}[{short[0]}] has {clips[short[0]].shape[0]} frames, fewer than one "
                             f"segment of segment_frames={frames} ({len(short)} such clip(s)): give longer clips "
                             f"or windows, or shorten segment_frames")
        return [segment_embeddings(c, frames, hop, bool(self.level_norm)) for c in clips]
