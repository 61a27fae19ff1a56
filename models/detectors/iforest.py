"""Isolation forest (scikit-learn fits it; 100 trees of 256 samples), scored from the trees' node arrays: a vector
falls down each tree (left when x[feature] <= threshold) to a leaf, whose value is its depth plus the expected
path length of the training samples it still holds, c(n) - 1; the score is 2^(-mean leaf value / c(max_samples)),
the isolation score of Liu et al. (sklearn's `score_samples` negated, so higher is more anomalous). All features
are used by every tree (scikit-learn's `max_features=1.0`), so tree feature indices are input columns."""

from __future__ import annotations

import numpy as np
import torch

from models.detectors._arrays import ArrayDetector
from models.detectors.base import register


def average_path_length(n: np.ndarray) -> np.ndarray:
    """c(n): the mean path length of an unsuccessful search in a binary search tree of n points (0 for n <= 1)."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


@register
class IsolationForest(ArrayDetector):
    name = "iforest"
    quick_params = {"n_estimators": 30}

    def __init__(self, n_estimators: int = 100, max_samples: int | str = "auto", seed: int = 0) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.seed = seed

    def _fit_arrays(self, X: np.ndarray) -> dict[str, torch.Tensor]:
        from sklearn.ensemble import IsolationForest as SkIsolationForest

        model = SkIsolationForest(n_estimators=self.n_estimators, max_samples=self.max_samples, max_features=1.0,
                                  random_state=self.seed).fit(X)
        trees = [est.tree_ for est in model.estimators_]
        n_nodes = max(t.node_count for t in trees)
        shape = (len(trees), n_nodes)
        feature, left, right = (np.full(shape, -1, dtype=np.int64) for _ in range(3))
        threshold, leaf = np.zeros(shape), np.zeros(shape)
        for i, t in enumerate(trees):
            n = t.node_count
            feature[i, :n], threshold[i, :n] = t.feature, t.threshold
            left[i, :n], right[i, :n] = t.children_left, t.children_right
            leaf[i, :n] = t.compute_node_depths() + average_path_length(t.n_node_samples) - 1.0
        return {
            "feature_": torch.from_numpy(np.maximum(feature, 0)),  # leaves (-2 in sklearn) never read a feature
            "threshold_": torch.from_numpy(threshold),
            "left_": torch.from_numpy(left),
            "right_": torch.from_numpy(right),
            "leaf_value_": torch.from_numpy(leaf),
            "path_norm_": torch.tensor([float(average_path_length(np.array([model.max_samples_]))[0])],
                                       dtype=torch.float64),
        }

    def _score_arrays(self, X: torch.Tensor) -> torch.Tensor:
        n_trees = self.left_.shape[0]
        node = torch.zeros((n_trees, X.shape[0]), dtype=torch.int64)
        rows = torch.arange(n_trees)[:, None]
        for _ in range(self.left_.shape[1]):  # a path is never longer than the node count; usually ~log2(256)
            left = self.left_[rows, node]
            inner = left >= 0
            if not inner.any():
                break
            value = X.T[self.feature_[rows, node], torch.arange(X.shape[0])[None, :]]
            go = torch.where(value <= self.threshold_[rows, node], left, self.right_[rows, node])
            node = torch.where(inner, go, node)
        depth = self.leaf_value_[rows, node].sum(dim=0)
        norm = n_trees * float(self.path_norm_)
        return torch.exp2(-depth / norm) if norm > 0 else torch.ones(X.shape[0], dtype=torch.float64)

    def _state_shapes(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t, n = state["left_"].shape
        return {k: torch.zeros(t, n) for k in ("feature_", "threshold_", "left_", "right_", "leaf_value_")} | {
            "path_norm_": torch.zeros(1)}
