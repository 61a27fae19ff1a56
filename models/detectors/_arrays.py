"""Glue shared by the classical detectors that scikit-learn fits and plain arrays score (IsolationForest,
OneClassSVM, LocalOutlierFactor): scikit-learn does the fitting, the fitted model is exported as tensors, and
scoring runs on those tensors in torch. A bundle therefore never holds a pickled estimator, and scoring needs no
scikit-learn object at all. Each subclass says how to fit and export (`_fit_arrays`) and how to score the arrays
(`_score_arrays`); a test per detector shows the array scores equal scikit-learn's own.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Sequence

import numpy as np
import torch

from models.detectors.base import ClipsLike, Detector, check_clips, check_state, check_vectors

_SCORE_CHUNK = 4096  # query rows per scoring step: bounds [rows, n_train] distance or kernel matrices


class ArrayDetector(Detector):
    """Vector-level detector: fit with scikit-learn on all training vectors, score from exported arrays."""

    granularity = "vector"
    default_feature = {"kind": "clipstats"}  # the MIMII study's front end

    @abstractmethod
    def _fit_arrays(self, X: np.ndarray) -> dict[str, torch.Tensor]:
        """Fit on float64 rows and return the learned arrays (names ending in `_`)."""

    @abstractmethod
    def _score_arrays(self, X: torch.Tensor) -> torch.Tensor:
        """Anomaly scores (higher = more anomalous) of float64 rows from the learned arrays."""

    @abstractmethod
    def _state_shapes(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors a valid state must match (derived from its own leading tensor)."""

    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "ArrayDetector":
        X = torch.cat(check_clips(clips, what=f"{self.name}.fit clips"))
        self._set(self._fit_arrays(X.double().numpy()), int(X.shape[1]))
        return self

    def _set(self, arrays: dict[str, torch.Tensor], dim: int) -> None:
        for k, v in arrays.items():
            setattr(self, k, v)
        self.array_names_ = tuple(arrays)
        self.dim_ = dim

    @property
    def is_fitted(self) -> bool:
        return getattr(self, "dim_", None) is not None

    def score_vectors(self, X: torch.Tensor, ids: Sequence[str] | None = None) -> torch.Tensor:
        self._check_fitted()
        X = check_vectors(X, int(self.dim_)).cpu().double()
        parts = [self._score_arrays(X[i : i + _SCORE_CHUNK]) for i in range(0, X.shape[0], _SCORE_CHUNK)]
        return (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)).float()

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {k: getattr(self, k) for k in self.array_names_}

    def load_state_dict(self, state: dict[str, torch.Tensor], learned: dict[str, Any] | None = None) -> Any:
        if not isinstance(state, dict) or not state:
            raise ValueError(f"{self.name}: state must be a non-empty dict of tensors")
        try:
            expected = self._state_shapes(state)
        except (KeyError, AttributeError, IndexError, TypeError) as exc:
            raise ValueError(f"{self.name}: state is missing or misshapes a leading tensor ({exc})") from None
        check_state(state, expected, self.name)
        dim = int(learned["dim"]) if learned and "dim" in learned else None
        self._set({k: state[k] for k in expected}, dim if dim is not None else self._dim_of(state))
        return self

    def _dim_of(self, state: dict[str, torch.Tensor]) -> int:
        raise ValueError(f"{self.name}: learned metadata must give the input dim")

    def learned(self) -> dict[str, Any]:
        return {"dim": int(self.dim_)} if self.is_fitted else {}
