"""PCA per feature group with the component count chosen by Velicer's minimum average partial (MAP) test, as the
MIMII per-SNR study reduces its clip statistics (the 128 DCT means and the 8 waveform statistics separately).

For each group the training vectors are standardised, and the MAP test runs on their correlation matrix R: after
removing the first m principal components (loadings A_m = V_m sqrt(L_m)), the partial correlations are
P_m = D^-1/2 (R - A_m A_m^T) D^-1/2 with D the diagonal of R - A_m A_m^T, and f_m is the mean squared off-diagonal
entry of P_m. The count is the m in 1..min(`max_components`, dim - 1) with the smallest f_m (Velicer 1976): the
components that leave the least systematic correlation behind. The standardised vectors are then projected on the
group's first m eigenvectors, and the groups' outputs are concatenated. The chosen counts and each f_m are learned
metadata in the bundle.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from models.detectors.base import ClipsLike, check_clips, check_state, check_vectors
from models.stages.base import Stage, register_stage
from models.stages.pca import principal_axes

_STD_FLOOR = 1e-12


def velicer_map(R: torch.Tensor, max_components: int) -> tuple[int, list[float]]:
    """(m, [f_1 .. f_M]): Velicer's MAP count for a correlation matrix R (float64), m in 1..min(max, p - 1)."""
    p = R.shape[0]
    evals, evecs = torch.linalg.eigh(R)
    evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
    scores = []
    for m in range(1, min(max_components, p - 1) + 1):
        A = evecs[:, :m] * evals[:m].sqrt()
        C = R - A @ A.T
        d = C.diagonal().clamp_min(_STD_FLOOR).rsqrt()
        P = C * d[:, None] * d[None, :]
        scores.append(float((P.square().sum() - P.diagonal().square().sum()) / (p * (p - 1))))
    best = min(range(len(scores)), key=scores.__getitem__) + 1
    return best, scores


@register_stage
class PcaMap(Stage):
    """Standardise, then PCA with Velicer's MAP count, per group of consecutive input dimensions."""

    name = "pca_map"
    quick_params = {"groups": [8, 4]}

    def __init__(self, groups: Sequence[int] | None = None, max_components: int = 19) -> None:
        self.groups = groups
        self.max_components = max_components

    def _group_sizes(self, dim: int) -> list[int]:
        sizes = [dim] if self.groups is None else [int(g) for g in self.groups]
        if any(g < 2 for g in sizes) or sum(sizes) != dim:
            raise ValueError(f"{self.name}: groups {sizes} must be sizes >= 2 that add up to the input dim {dim}")
        return sizes

    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "PcaMap":
        if self.max_components < 1:
            raise ValueError(f"{self.name}: max_components must be >= 1, got {self.max_components}")
        X = torch.cat(check_clips(clips, what=f"{self.name}.fit clips")).double()
        sizes = self._group_sizes(X.shape[1])
        mean, std = X.mean(dim=0), X.std(dim=0)
        std = torch.where(std > _STD_FLOOR, std, torch.ones_like(std))
        Z = (X - mean) / std
        blocks, counts, maps = [], [], []
        start = 0
        for g in sizes:
            zg = Z[:, start : start + g]
            R = torch.corrcoef(zg.T) if zg.shape[0] > 1 else torch.eye(g, dtype=torch.float64)
            R = torch.nan_to_num(R, nan=0.0).fill_diagonal_(1.0)  # a constant column correlates with nothing
            m, f = velicer_map(R, self.max_components)
            _, _, evecs = principal_axes(zg)
            block = torch.zeros(X.shape[1], m, dtype=torch.float64)
            block[start : start + g] = evecs[:, :m]
            blocks.append(block)
            counts.append(m)
            maps.append(f)
            start += g
        self.mean_, self.std_ = mean.float(), std.float()
        self.projection_ = torch.cat(blocks, dim=1).float()
        self.n_components_ = counts
        self.map_scores_ = maps
        return self

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "projection_")

    def out_dim(self) -> int:
        self._check_fitted()
        return int(self.projection_.shape[1])

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        X = check_vectors(X, int(self.mean_.shape[0]))
        dev = X.device
        return ((X - self.mean_.to(dev)) / self.std_.to(dev)) @ self.projection_.to(dev)

    def learned(self) -> dict[str, Any]:
        self._check_fitted()
        return {"n_components": list(self.n_components_), "map_scores": [list(f) for f in self.map_scores_]}

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {"mean_": self.mean_, "std_": self.std_, "projection_": self.projection_}

    def load_state_dict(self, state: dict[str, torch.Tensor], learned: dict[str, Any] | None = None) -> "PcaMap":
        proj = state.get("projection_") if isinstance(state, dict) else None
        if not isinstance(proj, torch.Tensor) or proj.ndim != 2:
            raise ValueError(f"{self.name}: state needs a 2-D tensor 'projection_'")
        dim = proj.shape[0]
        check_state(state, {"mean_": torch.zeros(dim), "std_": torch.zeros(dim), "projection_": proj}, self.name)
        self.mean_, self.std_, self.projection_ = state["mean_"].float(), state["std_"].float(), proj.float()
        meta = learned or {}
        self.n_components_ = [int(c) for c in meta.get("n_components", [proj.shape[1]])]
        self.map_scores_ = [list(map(float, f)) for f in meta.get("map_scores", [])]
        return self
