"""Small but real plug-ins that exercise the seams no shipped model uses yet: a window-level detector, an
id-conditioned detector, a window-level stage and a window-level feature kind.

They are registered only inside `plugins_registered()` (tests add them to their parametrizations by name), so the
shipped registries, `asd-offline models` and the other registry-parametrized tests never see them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from models.detectors import REGISTRY, Detector, ExampleInput
from models.detectors.base import check_clips, check_ids, check_state, check_vectors
from models.features import FEATURES, LogMelConfig, WindowFeature
from models.stages import STAGES, Stage


class _Gaussian:
    """Mean and regularised precision of vectors: the squared Mahalanobis distance of each row."""

    @staticmethod
    def fit(X: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
        X = X.double()
        mean = X.mean(dim=0)
        cov = torch.cov((X - mean).T).reshape(X.shape[1], X.shape[1])
        cov += ridge * torch.eye(X.shape[1], dtype=torch.float64) * max(float(cov.diagonal().mean()), 1e-12)
        return mean.float(), torch.linalg.inv(cov).float()

    @staticmethod
    def distance(X: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
        d = X - mean
        return ((d @ precision) * d).sum(dim=1)


class WindowQuantileGaussian(Detector):
    """Window-level: the `q` quantile of a window's per-vector Mahalanobis distances (a quantile is not a mean,
    so it is right only when the scorer hands over the whole window)."""

    name = "test_window_quantile"
    granularity = "window"

    def __init__(self, q: float = 0.9, ridge: float = 1e-3) -> None:
        self.q = q
        self.ridge = ridge

    def fit(self, clips: Any, ids: Sequence[str] | None = None) -> "WindowQuantileGaussian":
        X = torch.cat(check_clips(clips, what=f"{self.name}.fit clips"))
        self.mean_, self.precision_ = _Gaussian.fit(X, self.ridge)
        return self

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "mean_")

    @property
    def input_dim(self) -> int | None:
        return int(self.mean_.shape[0]) if self.is_fitted else None

    def score(self, clips: Any, ids: Sequence[str] | None = None) -> np.ndarray:
        self._check_fitted()
        checked = check_clips(clips, dim=self.input_dim, what=f"{self.name}.score clips")
        return np.array([float(torch.quantile(_Gaussian.distance(c, self.mean_, self.precision_).double(), self.q))
                         for c in checked])

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {"mean_": self.mean_, "precision_": self.precision_}

    def load_state_dict(self, state: dict, learned: dict | None = None) -> "WindowQuantileGaussian":
        mean = state.get("mean_")
        if not isinstance(mean, torch.Tensor) or mean.ndim != 1:
            raise ValueError(f"{self.name}: state needs a 1-D 'mean_'")
        d = mean.shape[0]
        check_state(state, {"mean_": torch.zeros(d), "precision_": torch.zeros(d, d)}, self.name)
        self.mean_, self.precision_ = state["mean_"].float(), state["precision_"].float()
        return self


class PerIdGaussian(Detector):
    """Vector-level and id-conditioned: one Gaussian per machine id; a vector is scored by its own id's."""

    name = "test_per_id_gaussian"
    needs_ids = True

    def __init__(self, ridge: float = 1e-3) -> None:
        self.ridge = ridge

    @classmethod
    def example_input(cls) -> ExampleInput:
        return ExampleInput(n_ids=2)

    def fit(self, clips: Any, ids: Sequence[str] | None = None) -> "PerIdGaussian":
        checked = check_clips(clips, what=f"{self.name}.fit clips")
        ids = check_ids(ids, len(checked), self)
        assert ids is not None
        self.ids_ = sorted(set(ids))
        fitted = [_Gaussian.fit(torch.cat([c for c, i in zip(checked, ids) if i == ident]), self.ridge)
                  for ident in self.ids_]
        self.means_ = torch.stack([m for m, _ in fitted])
        self.precisions_ = torch.stack([p for _, p in fitted])
        return self

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "means_")

    @property
    def input_dim(self) -> int | None:
        return int(self.means_.shape[1]) if self.is_fitted else None

    def score_vectors(self, X: torch.Tensor, ids: Sequence[str] | None = None) -> torch.Tensor:
        self._check_fitted()
        X = check_vectors(X, int(self.means_.shape[1]))
        ids = check_ids(ids, X.shape[0], self)
        assert ids is not None
        unknown = sorted(set(ids) - set(self.ids_))
        if unknown:
            raise ValueError(f"{self.name}: machine id(s) {unknown} were not trained; known: {self.ids_}")
        out = torch.empty(X.shape[0])
        for k, ident in enumerate(self.ids_):
            rows = torch.tensor([i == ident for i in ids])
            if rows.any():
                out[rows] = _Gaussian.distance(X[rows], self.means_[k], self.precisions_[k])
        return out

    def learned(self) -> dict[str, Any]:
        return {"ids": list(self.ids_)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {"means_": self.means_, "precisions_": self.precisions_}

    def load_state_dict(self, state: dict, learned: dict | None = None) -> "PerIdGaussian":
        means = state.get("means_")
        if not isinstance(means, torch.Tensor) or means.ndim != 2 or not learned or "ids" not in learned:
            raise ValueError(f"{self.name}: state needs a 2-D 'means_' and learned ids")
        k, d = means.shape
        check_state(state, {"means_": means, "precisions_": torch.zeros(k, d, d)}, self.name)
        self.ids_ = [str(i) for i in learned["ids"]]
        self.means_, self.precisions_ = means.float(), state["precisions_"].float()
        return self


class WindowCentre(Stage):
    """Window-level stage: subtract from each vector the mean vector of its own window, scaled per dimension by
    the training vectors' std (a window-dependent map, so it needs whole windows)."""

    name = "test_window_centre"
    granularity = "window"

    def __init__(self) -> None:
        pass

    def fit(self, clips: Any, ids: Sequence[str] | None = None) -> "WindowCentre":
        X = torch.cat(check_clips(clips, what=f"{self.name}.fit clips"))
        self.scale_ = X.std(dim=0).clamp_min(1e-6)
        return self

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "scale_")

    def out_dim(self) -> int:
        return int(self.scale_.shape[0])

    def transform_clips(self, clips: Any) -> list[torch.Tensor]:
        self._check_fitted()
        return [(c - c.mean(dim=0)) / self.scale_ for c in check_clips(clips, dim=self.out_dim())]

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {"scale_": self.scale_}

    def load_state_dict(self, state: dict, learned: dict | None = None) -> "WindowCentre":
        scale = state.get("scale_")
        if not isinstance(scale, torch.Tensor) or scale.ndim != 1:
            raise ValueError(f"{self.name}: state needs a 1-D 'scale_'")
        check_state(state, {"scale_": scale}, self.name)
        self.scale_ = scale.float()
        return self


@dataclass(frozen=True)
class BandStats(WindowFeature):
    """Window-level kind: per mel band, the mean and std of the log-mel frames of the whole window."""

    kind = "test_bandstats"

    sample_rate: int = 16000
    n_fft: int = 256
    hop_length: int = 128
    n_mels: int = 16
    min_frames: int = 4

    @property
    def dim(self) -> int:
        return 2 * self.n_mels

    @property
    def min_window(self) -> int:
        return self.n_fft + (self.min_frames - 1) * self.hop_length

    def _logmel(self) -> LogMelConfig:
        return LogMelConfig(sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
                            n_mels=self.n_mels)

    def compute(self, signals: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
        frames = self._logmel().extract_batch(list(signals), device)
        return torch.stack([torch.cat([f.mean(dim=0), f.std(dim=0)]) for f in frames])


DETECTORS: list[type[Detector]] = [WindowQuantileGaussian, PerIdGaussian]
STAGE_PLUGINS: list[type[Stage]] = [WindowCentre]
FEATURE_PLUGINS: list[type] = [BandStats]


@contextlib.contextmanager
def plugins_registered() -> Iterator[None]:
    """Register the plug-ins for the duration (bundles of them can then be saved and loaded), then remove them."""
    added = [(REGISTRY, c.name, c) for c in DETECTORS] + [(STAGES, c.name, c) for c in STAGE_PLUGINS]
    added += [(FEATURES, c.kind, c) for c in FEATURE_PLUGINS]
    clash = [key for registry, key, cls in added if registry.get(key, cls) is not cls]
    if clash:  # a shipped class took a test name: removing it on exit would break the registry
        raise RuntimeError(f"test plug-in names taken by other classes: {clash}")
    mine = [(registry, key, cls) for registry, key, cls in added if key not in registry]  # re-entrant: nested use
    for registry, key, cls in mine:
        registry[key] = cls
    try:
        yield
    finally:
        for registry, key, _ in mine:
            registry.pop(key, None)
