"""Local outlier factor in novelty mode (scikit-learn fits it; n_neighbors 20), scored from its training points,
their k-distances and local reachability densities: for a query x with k nearest training points o,
lrd(x) = 1 / (mean_o max(d(x, o), k-distance(o)) + 1e-10) and the score is mean_o lrd(o) / lrd(x) (sklearn's
`score_samples` negated, so higher is more anomalous)."""

from __future__ import annotations

import numpy as np
import torch

from models.detectors._arrays import ArrayDetector
from models.detectors.base import register


@register
class LocalOutlierFactor(ArrayDetector):
    name = "lof"
    quick_params = {"n_neighbors": 10}

    def __init__(self, n_neighbors: int = 20) -> None:
        self.n_neighbors = n_neighbors

    def _fit_arrays(self, X: np.ndarray) -> dict[str, torch.Tensor]:
        from sklearn.neighbors import LocalOutlierFactor as SkLOF

        if X.shape[0] < 2:
            raise ValueError(f"{self.name}: needs at least 2 training vectors, got {X.shape[0]}")
        model = SkLOF(n_neighbors=self.n_neighbors, novelty=True, algorithm="brute").fit(X)
        k = model.n_neighbors_
        return {
            "points_": torch.from_numpy(np.ascontiguousarray(model._fit_X, dtype=np.float64)),
            "k_distance_": torch.from_numpy(model._distances_fit_X_[:, k - 1].copy()),
            "lrd_": torch.from_numpy(model._lrd.copy()),
        }

    def _score_arrays(self, X: torch.Tensor) -> torch.Tensor:
        k = min(int(self.n_neighbors), self.points_.shape[0] - 1)
        dist, idx = torch.cdist(X, self.points_.double()).topk(k, dim=1, largest=False)
        reach = torch.maximum(dist, self.k_distance_.double()[idx])
        lrd_x = 1.0 / (reach.mean(dim=1) + 1e-10)
        return (self.lrd_.double()[idx] / lrd_x[:, None]).mean(dim=1)

    def _state_shapes(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n, d = state["points_"].shape
        return {"points_": torch.zeros(n, d), "k_distance_": torch.zeros(n), "lrd_": torch.zeros(n)}

    def _dim_of(self, state: dict[str, torch.Tensor]) -> int:
        return int(state["points_"].shape[1])
