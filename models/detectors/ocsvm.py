"""One-class SVM (RBF kernel; nu 0.1 and gamma "scale" as in the MIMII per-SNR study), fitted by scikit-learn and
scored from its support vectors, dual coefficients, intercept and gamma:
score(x) = -(sum_i a_i exp(-gamma |x - s_i|^2) + b), the negated decision function (sklearn's higher is normal)."""

from __future__ import annotations

import numpy as np
import torch

from models.detectors._arrays import ArrayDetector
from models.detectors.base import register


@register
class OneClassSVM(ArrayDetector):
    name = "ocsvm"
    quick_params = {"nu": 0.1}

    def __init__(self, nu: float = 0.1, gamma: float | str = "scale", tol: float = 1e-3) -> None:
        self.nu = nu
        self.gamma = gamma
        self.tol = tol

    def _fit_arrays(self, X: np.ndarray) -> dict[str, torch.Tensor]:
        from sklearn.svm import OneClassSVM as SkOneClassSVM

        model = SkOneClassSVM(kernel="rbf", nu=self.nu, gamma=self.gamma, tol=self.tol).fit(X)
        return {
            "support_vectors_": torch.from_numpy(model.support_vectors_.copy()),
            "dual_coef_": torch.from_numpy(model.dual_coef_[0].copy()),
            "intercept_": torch.tensor([float(model.intercept_[0])], dtype=torch.float64),
            "gamma_": torch.tensor([float(model._gamma)], dtype=torch.float64),
        }

    def _score_arrays(self, X: torch.Tensor) -> torch.Tensor:
        sq = torch.cdist(X, self.support_vectors_.double()).square()
        kernel = torch.exp(-self.gamma_.double() * sq)
        return -(kernel @ self.dual_coef_.double() + self.intercept_.double())

    def _state_shapes(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n, d = state["support_vectors_"].shape
        return {"support_vectors_": torch.zeros(n, d), "dual_coef_": torch.zeros(n), "intercept_": torch.zeros(1),
                "gamma_": torch.zeros(1)}

    def _dim_of(self, state: dict[str, torch.Tensor]) -> int:
        return int(state["support_vectors_"].shape[1])
