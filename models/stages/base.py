"""The stage contract: pre-processing learned on normal data (feature-cleaning autoencoders, PCA, denoisers).

A stage is fitted on the training clips' features before the detector sees them, then transforms every clip the
detector fits or scores, offline and in the monitor alike (the bundle stores it; the stream scorer runs it).
Hyper-parameters in `__init__`, learned attributes ending in `_`, tensors in `state_dict`, JSON-safe metadata in
`learned()`, as for detectors. A `vector` stage maps each vector on its own (`transform`), so the monitor runs it
once per vector; a `window` stage needs whole `[T, dim]` windows (`transform_clips`); a `causal` stage maps a
stream's vectors in order with carried state (the LSTM mel denoiser): `transform_clips` runs each clip from a fresh
state and `stream_transform(vectors, states)` continues many streams at once. Causal stages come first in a chain.
A stage that must agree with the feature config (the denoiser with the one it was trained on) implements
`check_feature`, which training calls before any audio is read.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar, Sequence

import torch

from models.detectors.base import ClipsLike, Learned, check_clips
from models.registry import Registry

# name -> class; filled by `@register_stage` as `models.stages` imports each module
STAGES = Registry("stage")
register_stage = STAGES.register


class Stage(Learned):
    """Base class: subclasses set `name` and implement `fit`, `out_dim`, `is_fitted`, `state_dict`,
    `load_state_dict`, and `transform` (vector stages) or `transform_clips` (window stages)."""

    name: ClassVar[str]
    # small settings for tests, as Detector.quick_params
    quick_params: ClassVar[dict] = {}

    @abstractmethod
    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "Stage":
        """Learn from the normal training clips' features `[n_i, dim]`; returns self."""

    @abstractmethod
    def out_dim(self) -> int:
        """The vector length `transform` produces (fitted stages only)."""

    def check_feature(self, feature: Any) -> None:
        """ValueError when this stage cannot take vectors of `feature` (default: any)."""

    def stream_transform(self, vectors: Sequence[torch.Tensor], states: Sequence[Any]) -> tuple[list[torch.Tensor],
                                                                                                 list[Any]]:
        """Causal stages: the next vectors of several streams and their carried states (None at a stream's start)
        -> the transformed vectors and the new states."""
        raise NotImplementedError(f"{self.name} is not a causal stage")

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        """`[N, dim] -> [N, out_dim]`, each vector on its own (vector stages)."""
        raise NotImplementedError(f"{self.name} transforms whole windows: use transform_clips()")

    def transform_clips(self, clips: ClipsLike) -> list[torch.Tensor]:
        """Each clip `[n_i, dim] -> [m_i, out_dim]`; vector stages transform all clips' vectors in one call."""
        self._check_fitted()
        checked = check_clips(clips, what=f"{self.name}.transform clips")
        out = self.transform(torch.cat(checked))
        return list(torch.split(out, [c.shape[0] for c in checked]))
