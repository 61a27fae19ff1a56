"""Min-max scaling to [0, 1] per dimension, fitted on the normal training vectors (the MIMII study scales its clip
statistics this way before PCA and the classical detectors). Values outside the training range map outside
[0, 1] on purpose: clipping would hide exactly the departures an anomaly detector looks for."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from models.detectors.base import ClipsLike, check_clips, check_state, check_vectors
from models.stages.base import Stage, register_stage


@register_stage
class MinMax(Stage):
    """Per-dimension (x - min) / (max - min) over the training vectors; a constant dimension maps to 0."""

    name = "minmax"

    def __init__(self) -> None:
        pass

    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "MinMax":
        X = torch.cat(check_clips(clips, what=f"{self.name}.fit clips"))
        lo, hi = X.min(dim=0).values, X.max(dim=0).values
        span = hi - lo
        self.min_, self.scale_ = lo, torch.where(span > 0, span, torch.ones_like(span))
        return self

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "min_")

    def out_dim(self) -> int:
        self._check_fitted()
        return int(self.min_.shape[0])

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        X = check_vectors(X, self.out_dim())
        return (X - self.min_.to(X.device)) / self.scale_.to(X.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {"min_": self.min_, "scale_": self.scale_}

    def load_state_dict(self, state: dict[str, torch.Tensor], learned: dict[str, Any] | None = None) -> "MinMax":
        lo = state.get("min_") if isinstance(state, dict) else None
        if not isinstance(lo, torch.Tensor) or lo.ndim != 1:
            raise ValueError(f"{self.name}: state needs a 1-D tensor 'min_'")
        check_state(state, {"min_": lo, "scale_": torch.zeros_like(lo)}, self.name)
        self.min_, self.scale_ = lo.float(), state["scale_"].float()
        return self
