"""The detector contract (scikit-learn conventions) and the input checks every detector shares.

A detector is trained on normal clips only and gives each clip a score, higher = more anomalous. Hyper-parameters
live in `__init__` and nowhere else, so `cls(**get_params())` rebuilds an unfitted twin (that is how a bundle is
loaded); what `fit` learns ends in `_`, and the part a bundle must carry is a flat `dict[str, Tensor]`
(`state_dict`), so loading never needs pickle.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np
import torch

_STD_FLOOR = 1e-6  # a constant input dimension gets scale 1 instead of a division by ~0


class NotFittedError(ValueError, AttributeError):
    """`score` (or `state_dict`) called before `fit`/`load_state_dict`; subclasses both, as scikit-learn's does."""


ClipsLike = Sequence["torch.Tensor | np.ndarray"]

# name -> class; filled by `@register` as `models.detectors` imports each detector module.
REGISTRY: dict[str, type["Detector"]] = {}


def register(cls: type["Detector"]) -> type["Detector"]:
    """Class decorator: make a detector trainable and loadable by its `name` (the key stored in bundles)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} needs a non-empty class attribute `name` to be registered")
    prev = REGISTRY.get(name)
    if prev is not None and (prev.__module__, prev.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"detector name {name!r} already registered by {REGISTRY[name].__qualname__}")
    REGISTRY[name] = cls
    return cls


class Detector(ABC):
    """Base class: subclasses set `name`, declare hyper-parameters as explicit `__init__` keywords, and implement
    `fit`, `score`, `state_dict` and `load_state_dict` (plus `score_vectors` when `frame_level`)."""

    name: ClassVar[str]
    frame_level: ClassVar[bool] = False
    # Feature config (the JSON form `models.features.feature_from_dict` takes) this system was designed for; training
    # uses it when the config file does not say otherwise.
    default_feature: ClassVar[dict[str, Any]] = {}
    # Hyper-parameters that make a fit take well under a second on a few thousand vectors: tests and the demo use
    # them so that every registered detector can be exercised the same way.
    quick_params: ClassVar[dict[str, Any]] = {}

    # -- hyper-parameters -------------------------------------------------------------------------------------------

    @classmethod
    def param_names(cls) -> list[str]:
        """The `__init__` keywords, which by convention are stored under the same attribute names."""
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.param_names()}

    def set_params(self, **params: Any) -> "Detector":
        unknown = sorted(set(params) - set(self.param_names()))
        if unknown:
            raise ValueError(f"{self.name}: unknown hyper-parameter(s) {unknown}; valid: {self.param_names()}")
        for k, v in params.items():
            setattr(self, k, v)
        return self

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "Detector":
        """Build from a config/bundle dict, with an error that lists the valid names instead of a TypeError."""
        unknown = sorted(set(params) - set(cls.param_names()))
        if unknown:
            raise ValueError(f"{cls.name}: unknown hyper-parameter(s) {unknown}; valid: {cls.param_names()}")
        return cls(**params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- the work ---------------------------------------------------------------------------------------------------

    @abstractmethod
    def fit(self, clips: ClipsLike) -> "Detector":
        """Learn from normal clips, each `[n_vectors, dim]`; returns self."""

    @abstractmethod
    def score(self, clips: ClipsLike) -> np.ndarray:
        """One float64 score per clip, higher = more anomalous."""

    def score_vectors(self, X: torch.Tensor) -> torch.Tensor:
        """Per-vector scores `[N]` (CPU float32) whose mean over a clip is its `score`; frame-level detectors only."""
        raise NotImplementedError(f"{self.name} is not frame-level: score whole windows with score()")

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything `fit` learned that scoring needs, as a flat dict of tensors."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> "Detector":
        """Restore a fitted detector from `state_dict()`; ValueError on missing/extra keys or wrong shapes."""

    @property
    def is_fitted(self) -> bool:
        return getattr(self, "dim_", None) is not None

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"{self.name} is not fitted: call fit() or load it from a bundle first")


# -- input checks shared by every detector --------------------------------------------------------------------------


def check_clips(clips: ClipsLike, *, dim: int | None = None, what: str = "clips") -> list[torch.Tensor]:
    """Validate a list of `[n_i, dim]` feature matrices and return them as CPU float32 tensors.

    Every clip must have at least one vector: a clip too short for one context window has no score, and silently
    dropping it would shift the clip/score alignment the caller relies on.
    """
    if isinstance(clips, (torch.Tensor, np.ndarray)):
        raise ValueError(f"{what}: expected a list of [n_vectors, dim] matrices, got one {type(clips).__name__}")
    if len(clips) == 0:
        raise ValueError(f"{what}: empty list (need at least one clip)")
    out: list[torch.Tensor] = []
    for i, c in enumerate(clips):
        t = torch.as_tensor(c).detach()
        if t.ndim != 2:
            raise ValueError(f"{what}[{i}]: expected a [n_vectors, dim] matrix, got shape {tuple(t.shape)}")
        if t.shape[0] == 0:
            raise ValueError(f"{what}[{i}]: no feature vectors (clip shorter than one analysis window?)")
        if not torch.is_floating_point(t):
            raise ValueError(f"{what}[{i}]: expected floating-point features, got {t.dtype}")
        want = dim if dim is not None else out[0].shape[1] if out else t.shape[1]
        if t.shape[1] != want:
            source = "the fitted dimension" if dim is not None else f"{what}[0]"
            raise ValueError(f"{what}[{i}]: vectors have dim {t.shape[1]}, expected {want} ({source})")
        t = t.to(device="cpu", dtype=torch.float32)
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{what}[{i}]: {bad} NaN/inf feature values")
        out.append(t)
    return out


def check_vectors(X: torch.Tensor | np.ndarray, dim: int) -> torch.Tensor:
    """Validate one `[N, dim]` block (the monitor's path), returning it as float32 on its own device."""
    t = torch.as_tensor(X).detach()
    if t.ndim != 2 or t.shape[1] != dim:
        raise ValueError(f"expected vectors of shape [N, {dim}], got {tuple(t.shape)}")
    t = t.float()
    if not torch.isfinite(t).all():
        raise ValueError(f"{int((~torch.isfinite(t)).sum())} NaN/inf feature values")
    return t


def standardizer(X: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of training vectors.

    Two passes over row chunks accumulated in float64: millions of float32 rows summed at once drift, and a float64
    copy of the whole matrix would double the peak memory of a fit.
    """
    n = X.shape[0]
    total = torch.zeros(X.shape[1], dtype=torch.float64)
    for part in X.split(chunk):
        total += part.double().sum(dim=0)
    mean = total / n
    sq = torch.zeros_like(total)
    for part in X.split(chunk):
        sq += (part.double() - mean).square().sum(dim=0)
    std = (sq / n).sqrt()
    scale = torch.where(std > _STD_FLOOR, std, torch.ones_like(std))
    return mean.float(), scale.float()


def check_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], owner: str) -> None:
    """Compare a state dict with the one a freshly built model has: same keys, same shapes, tensors only."""
    if not isinstance(state, dict):
        raise ValueError(f"{owner}: state must be a dict of tensors, got {type(state).__name__}")
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"{owner}: state keys do not match the model: missing {missing}, unexpected {extra}")
    for k, ref in expected.items():
        v = state[k]
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{owner}: state[{k!r}] is a {type(v).__name__}, not a tensor")
        if tuple(v.shape) != tuple(ref.shape):
            raise ValueError(f"{owner}: state[{k!r}] has shape {tuple(v.shape)}, model expects {tuple(ref.shape)}")


def split_scores(per_vector: torch.Tensor, lengths: Iterable[int]) -> np.ndarray:
    """Mean of per-vector scores within each clip: the clip score of a frame-level detector."""
    parts = torch.split(per_vector.double(), list(lengths))
    return np.array([float(p.mean()) for p in parts], dtype=np.float64)
