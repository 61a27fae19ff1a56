"""Nearest-neighbour graph clusters of modulation spectra (system 1 of the modulation-spectral study, issue #10,
after Tiwari et al., "Modulation spectral signal representation and i-vectors for anomalous sound detection",
DCASE 2020 Task 2 report: a nearest-neighbour graph builds clusters that capture local variations of the normal
training data, and anomalies are scored by their distance from the cluster centroids).

Fit, on the normal training vectors (one modulation spectrum per window):
1. standardise each dimension (mean and std learned here: the bundle's normalisation); `scale_shrinkage` > 0 pulls
   each dimension's variance towards the mean over dimensions with the weight of that many vectors (see
   `standardizer`: with one vector per 10 s clip and a handful of clips, per-dimension variances are mostly
   chance; 0, the study's, leaves them as measured);
2. the k-nearest-neighbour graph of the standardised vectors (Euclidean, `n_neighbors`, symmetrised);
3. agglomerative clustering on that graph into `n_clusters` clusters: only clusters joined by a graph edge may
   merge, and of those the pair whose merge least increases the within-cluster variance (Ward) merges first
   (scikit-learn's structured Ward); each cluster's centroid is the mean of its members.
The report names no clustering rule. Graph-structured Ward keeps clusters local (each one a connected piece of the
graph) and still splits normal data that form one connected cloud, where the graph's connected components would
leave a single global mean (with one cluster, the registry tests' anomalies score below chance: AUC 0.31). It is
deterministic, with no random start, and scales to tens of thousands of windows (3 s for 4,000 vectors of 384
values on the 2-core machine); spectral clustering of the same graph took 14 s there, its shift-invert
eigen-solver growing with the cube of the count. A graph in several parts is joined at its parts' nearest points
(scikit-learn's completion) so the merging can finish; far-apart parts cost Ward the most to merge, so they stay
separate clusters when there are clusters enough.

Score, higher = more anomalous (`rule`, fixed in the config, never chosen on test labels):
- `centroid` (the study's, default): the distance of the standardised vector to the nearest centroid;
- `knn`: the mean distance to its `n_neighbors` nearest training vectors (no clustering; the state then holds the
  standardised training vectors instead of centroids).
Distances are computed in float64 in blocks of rows (bounded memory for any number of vectors), on the input's
device; every vector is scored on its own, so a window's score is the same however the vectors are batched.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Sequence

import numpy as np
import torch

from models.detectors.base import ClipsLike, Detector, check_clips, check_state, check_vectors, register, standardizer
from models.features.modspec import ModSpecConfig

log = logging.getLogger(__name__)

RULES = ("centroid", "knn")
_BLOCK_ENTRIES = 1 << 22  # distance-matrix entries per block: 32 MiB of float64


def nearest(X: torch.Tensor, ref: torch.Tensor, k: int,
            exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (ascending) and indices `[N, k]` of each row's k nearest rows of `ref`, float64, in row blocks;
    `exclude_self` (X is ref) skips each row itself."""
    X, ref = X.double(), ref.double()
    step = max(1, _BLOCK_ENTRIES // max(1, ref.shape[0]))
    dists, idxs = [], []
    for start in range(0, X.shape[0], step):
        d = torch.cdist(X[start : start + step], ref)
        if exclude_self:
            rows = torch.arange(d.shape[0], device=d.device)
            d[rows, rows + start] = float("inf")
        v, i = torch.topk(d, k, dim=1, largest=False, sorted=True)
        dists.append(v)
        idxs.append(i)
    if not dists:
        return X.new_zeros((0, k)), torch.zeros((0, k), dtype=torch.int64, device=X.device)
    return torch.cat(dists), torch.cat(idxs)


def knn_graph(Z: torch.Tensor, k: int) -> Any:
    """The k-nearest-neighbour graph of the rows of Z as a sparse 0/1 [N, N] matrix, symmetrised (i ~ j when
    either is among the other's k nearest)."""
    from scipy.sparse import csr_matrix

    n = Z.shape[0]
    _, idx = nearest(Z, Z, k, exclude_self=True)
    c = csr_matrix((np.ones(n * k), (np.repeat(np.arange(n), k), idx.cpu().numpy().ravel())), shape=(n, n))
    return ((c + c.T) > 0).astype(np.float64)


@register
class ModSpecGraph(Detector):
    """Distance to the nearest centroid of Ward clusters of the kNN graph (or to the k nearest training vectors),
    on standardised modulation spectra."""

    name = "modspec_graph"
    granularity = "vector"
    default_feature = ModSpecConfig().to_dict()
    quick_params = {"n_neighbors": 5, "n_clusters": 8}

    def __init__(self, n_neighbors: int = 10, n_clusters: int = 16, rule: str = "centroid",
                 scale_shrinkage: float = 0.0) -> None:
        self.n_neighbors = n_neighbors
        self.n_clusters = n_clusters
        self.rule = rule
        self.scale_shrinkage = scale_shrinkage

    def _check_params(self) -> None:
        for name in ("n_neighbors", "n_clusters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{self.name}: {name} must be a positive integer, got {value!r}")
        if self.rule not in RULES:
            raise ValueError(f"{self.name}: rule must be one of {RULES}, got {self.rule!r}")
        shrink = self.scale_shrinkage
        if isinstance(shrink, bool) or not isinstance(shrink, (int, float)) or not shrink >= 0:
            raise ValueError(f"{self.name}: scale_shrinkage must be a number >= 0, got {shrink!r}")

    @property
    def _ref_key(self) -> str:
        return "train_" if self.rule == "knn" else "centroids_"

    # -- fit ---------------------------------------------------------------------------------------------------------

    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "ModSpecGraph":
        self._check_params()
        X = torch.cat(check_clips(clips, what=f"{self.name}.fit clips"))
        mean, scale = standardizer(X, shrinkage=float(self.scale_shrinkage))
        self._warn_if_scales_cannot_be_measured(X.shape[0])
        Z = (X.double() - mean.double()) / scale.double()
        self.mean_, self.scale_ = mean, scale
        if self.rule == "knn":
            self.train_ = Z.float()
            return self
        labels = self._cluster(Z)
        _, labels, sizes = np.unique(labels, return_inverse=True, return_counts=True)
        index = torch.from_numpy(labels.astype(np.int64))
        sums = torch.zeros((len(sizes), Z.shape[1]), dtype=torch.float64).index_add_(0, index, Z)
        self.centroids_ = (sums / torch.from_numpy(sizes).double()[:, None]).float()
        self.cluster_sizes_ = [int(s) for s in sizes]
        return self

    def _warn_if_scales_cannot_be_measured(self, n: int) -> None:
        """One or two training vectors (10 s clips) do not measure a spread per dimension; the fit goes on, since
        `asd-offline train` with 2 clips fits such copies to cross-fit the threshold, but says what it means."""
        if n == 1:
            log.warning("%s fitted on 1 vector: no spread to standardise by, so its distances stay in the "
                        "feature's units; as a cross-fitting copy of a 2-clip training, its scores set a threshold "
                        "for a model that standardises (record 4 or more normal clips to trust it)", self.name)
        elif n == 2 and not self.scale_shrinkage:
            log.warning("%s fitted on 2 vectors with scale_shrinkage 0: each dimension's scale is half their "
                        "difference, so the two lie 2 sqrt(d) apart in d dimensions whatever they hold, and new "
                        "normal windows score far from both; set scale_shrinkage (1 in "
                        "configs/variants/modspec_graph_level_2clips.yaml) or record 4 or more clips", self.name)

    def _cluster(self, Z: torch.Tensor) -> np.ndarray:
        """Cluster label per row: Ward clustering on the kNN graph; with as many clusters as rows, each row is its
        own cluster, and one cluster is all rows."""
        n = Z.shape[0]
        c = min(self.n_clusters, n)
        if c == n:
            return np.arange(n)
        if c == 1:
            return np.zeros(n, dtype=np.int64)
        from sklearn.cluster import AgglomerativeClustering

        graph = knn_graph(Z, min(self.n_neighbors, n - 1))
        with warnings.catch_warnings():  # a disconnected graph is joined at its nearest points: intended, see above
            warnings.filterwarnings("ignore", message="the number of connected components")
            model = AgglomerativeClustering(n_clusters=c, connectivity=graph, linkage="ward")
            return model.fit_predict(Z.numpy())

    # -- score -------------------------------------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "mean_")

    @property
    def input_dim(self) -> int | None:
        return int(self.mean_.shape[0]) if self.is_fitted else None

    def score_vectors(self, X: torch.Tensor, ids: Sequence[str] | None = None) -> torch.Tensor:
        self._check_fitted()
        X = check_vectors(X, int(self.input_dim))
        device = X.device
        Z = (X.double() - self.mean_.to(device, torch.float64)) / self.scale_.to(device, torch.float64)
        ref = getattr(self, self._ref_key).to(device)
        if self.rule == "knn":
            dist, _ = nearest(Z, ref, min(self.n_neighbors, ref.shape[0]))
            return dist.mean(dim=1).float().cpu()
        dist, _ = nearest(Z, ref, 1)
        return dist[:, 0].float().cpu()

    # -- state -------------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {"mean_": self.mean_, "scale_": self.scale_, self._ref_key: getattr(self, self._ref_key)}

    def learned(self) -> dict[str, Any]:
        if not self.is_fitted or self.rule == "knn":
            return {}
        out: dict[str, Any] = {"n_clusters": int(self.centroids_.shape[0])}
        sizes = getattr(self, "cluster_sizes_", None)  # absent after loading a state without its metadata
        return out if sizes is None else {**out, "cluster_sizes": sizes}

    def load_state_dict(self, state: dict[str, torch.Tensor], learned: dict[str, Any] | None = None) -> "ModSpecGraph":
        self._check_params()
        key = self._ref_key
        mean, ref = (state.get(k) if isinstance(state, dict) else None for k in ("mean_", key))
        if not isinstance(mean, torch.Tensor) or mean.ndim != 1 or not isinstance(ref, torch.Tensor) or ref.ndim != 2:
            raise ValueError(f"{self.name}: state needs a 1-D 'mean_' and a 2-D {key!r} (rule {self.rule!r})")
        d = mean.shape[0]
        check_state(state, {"mean_": torch.zeros(d), "scale_": torch.zeros(d), key: torch.zeros(ref.shape[0], d)},
                    self.name)
        self.mean_, self.scale_ = state["mean_"].float(), state["scale_"].float()
        setattr(self, key, ref.float())
        if key == "centroids_" and learned and "cluster_sizes" in learned:
            self.cluster_sizes_ = [int(s) for s in learned["cluster_sizes"]]
        return self
