"""The classical detectors score from exported arrays, never from a pickled scikit-learn object: the array scores
equal scikit-learn's own on the same data (signs flipped so that higher is more anomalous)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.svm import OneClassSVM

from models.detectors import get_detector

rng = np.random.default_rng(5)
W = rng.normal(size=(3, 10))
TRAIN = (rng.normal(size=(600, 3)) @ W + 0.2 * rng.normal(size=(600, 10))).astype(np.float32)
TEST = np.vstack([rng.normal(size=(100, 3)) @ W, 2.0 * rng.normal(size=(100, 10))]).astype(np.float32)


def _ours(name: str, **params) -> np.ndarray:
    det = get_detector(name)(**params).fit([torch.from_numpy(TRAIN[:300]), torch.from_numpy(TRAIN[300:])])
    return det.score_vectors(torch.from_numpy(TEST)).double().numpy()


def test_iforest_arrays_equal_sklearn() -> None:
    sk = IsolationForest(n_estimators=50, random_state=3, max_features=1.0).fit(TRAIN.astype(np.float64))
    np.testing.assert_allclose(_ours("iforest", n_estimators=50, seed=3), -sk.score_samples(TEST), rtol=1e-6)


def test_ocsvm_arrays_equal_sklearn() -> None:
    sk = OneClassSVM(kernel="rbf", nu=0.1, gamma="scale").fit(TRAIN.astype(np.float64))
    np.testing.assert_allclose(_ours("ocsvm", nu=0.1), -sk.decision_function(TEST), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [5, 20])
def test_lof_arrays_equal_sklearn(k: int) -> None:
    sk = LocalOutlierFactor(n_neighbors=k, novelty=True).fit(TRAIN.astype(np.float64))
    np.testing.assert_allclose(_ours("lof", n_neighbors=k), -sk.score_samples(TEST), rtol=1e-5)


@pytest.mark.parametrize("name", ["iforest", "ocsvm", "lof"])
def test_off_manifold_vectors_score_higher(name: str) -> None:
    s = _ours(name)
    assert np.median(s[100:]) > np.percentile(s[:100], 90)
