"""PCA: project feature vectors onto the principal subspace of the normal training vectors.

Why a stage: classical detectors (Gaussian, kNN, IsolationForest...) do better on a few decorrelated components
than on hundreds of correlated log-mel values, and a fixed linear map costs nothing in the monitor. The component
count is either given (`n_components` >= 1) or the smallest count that explains a fraction of the variance
(0 < `n_components` < 1); the count chosen is learned metadata, stored in the bundle's `learned` block.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from models.detectors.base import ClipsLike, check_clips, check_state, check_vectors
from models.stages.base import Stage, register_stage


def principal_axes(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, eigenvalues (descending) and eigenvectors (columns) of the covariance of float64 rows `X`. Each
    eigenvector's largest loading is made positive, so refits give identical projections."""
    mean = X.mean(dim=0)
    Xc = X - mean
    cov = Xc.T @ Xc / max(1, X.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
    signs = torch.sign(evecs.gather(0, evecs.abs().argmax(dim=0, keepdim=True)))
    return mean, evals, evecs * torch.where(signs == 0, torch.ones_like(signs), signs)


@register_stage
class PCA(Stage):
    """Principal component analysis on the training vectors (covariance in float64, eigenvectors by `eigh`)."""

    name = "pca"
    quick_params = {"n_components": 8}

    def __init__(self, n_components: float = 0.95, whiten: bool = False) -> None:
        self.n_components = n_components
        self.whiten = whiten

    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "PCA":
        X = torch.cat(check_clips(clips, what=f"{self.name}.fit clips")).double()
        k_req = float(self.n_components)
        dim = X.shape[1]
        if not (0 < k_req < 1 or (k_req >= 1 and k_req == int(k_req) and k_req <= dim)):
            raise ValueError(f"{self.name}: n_components must be a count in [1, {dim}] or a fraction in (0, 1), "
                             f"got {self.n_components}")
        mean, evals, evecs = principal_axes(X)
        ratio = evals / evals.sum().clamp_min(1e-300)
        if k_req < 1:
            k = int(torch.searchsorted(ratio.cumsum(0), torch.tensor(k_req, dtype=torch.float64)).item()) + 1
            k = min(k, dim)
        else:
            k = int(k_req)
        comps = evecs[:, :k].T
        scale = evals[:k].sqrt().clamp_min(1e-12) if self.whiten else torch.ones(k, dtype=torch.float64)
        self._set(mean.float(), comps.float(), scale.float(), float(ratio[:k].sum()))
        return self

    def _set(self, mean: torch.Tensor, components: torch.Tensor, scale: torch.Tensor, explained: float) -> None:
        self.mean_, self.components_, self.scale_ = mean, components, scale
        self.explained_variance_ratio_ = explained

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "components_")

    def out_dim(self) -> int:
        self._check_fitted()
        return int(self.components_.shape[0])

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        X = check_vectors(X, int(self.mean_.shape[0]))
        dev = X.device
        return ((X - self.mean_.to(dev)) @ self.components_.to(dev).T) / self.scale_.to(dev)

    def learned(self) -> dict[str, Any]:
        self._check_fitted()
        return {"n_components": self.out_dim(), "explained_variance_ratio": self.explained_variance_ratio_}

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {"mean_": self.mean_, "components_": self.components_, "scale_": self.scale_}

    def load_state_dict(self, state: dict[str, torch.Tensor], learned: dict[str, Any] | None = None) -> "PCA":
        comps = state.get("components_") if isinstance(state, dict) else None
        if not isinstance(comps, torch.Tensor) or comps.ndim != 2:
            raise ValueError(f"{self.name}: state needs a 2-D tensor 'components_'")
        k, dim = comps.shape
        check_state(state, {"mean_": torch.zeros(dim), "components_": comps, "scale_": torch.zeros(k)}, self.name)
        explained = float((learned or {}).get("explained_variance_ratio", float("nan")))
        self._set(state["mean_"].float(), comps.float(), state["scale_"].float(), explained)
        return self
