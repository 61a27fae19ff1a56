"""Score ensemble (the modulation-spectral study's "system 1 + 2"): a detector over detectors.

Its input vector is the raw scores of its M member systems for one window, in member order. Members score on
unrelated scales (a kNN distance, a negative log-likelihood), so each member's score is first normalised by what
that member scored on held-out *normal* clips, never by test statistics:
- `zscore`: (s - mean) / std of the member's held-out normal scores;
- `rank`: the fraction of the member's held-out normal scores below s (ties count half), in [0, 1]; robust to a
  member whose normal scores have a long tail, but flat beyond the largest held-out score.
The normalised scores are combined by a weighted `mean` (weights normalised to sum 1) or by `max` (any member that
is alarmed raises the alarm; weights then scale each member's normalised score).

The bundle of an ensemble holds the complete member bundles (`members/NAME/`); its scorer feeds the same audio to
every member, computing features once for members with identical feature configs (`models.scoring`), and this
detector turns their window scores into one. Trained by `asd-offline train --model ensemble --config
configs/ensemble.yaml` (`models.training.ensemble`), which names the members.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from models.detectors.base import (
    ClipsLike,
    Detector,
    ExampleInput,
    check_clips,
    check_state,
    check_vectors,
    register,
)

NORMALIZERS = ("zscore", "rank")
COMBINERS = ("mean", "max")
_STD_FLOOR = 1e-12


@register
class ScoreEnsemble(Detector):
    """Normalise each member's score by its held-out normal scores, then combine (registry name `ensemble`)."""

    name = "ensemble"
    granularity = "vector"
    default_feature = {"kind": "vectors", "dim": 2}
    combines_members = True  # training builds member bundles first (models.training.ensemble)
    # tiny members on three front ends (two sharing clip statistics; the i-vector one streamed from summed
    # statistics), for tests that train the ensemble end to end (as quick_params)
    quick_members = (
        {"name": "forest", "model": "iforest", "config": {"params": {"n_estimators": 20}}},
        {"name": "svm", "model": "ocsvm"},
        {"name": "ae", "model": "dcase_ae", "config": {
            "feature": {"kind": "logmel", "n_fft": 512, "hop_length": 160, "n_mels": 16, "context": 2},
            "params": {"hidden": 16, "bottleneck": 4, "n_layers": 1, "epochs": 2, "batch_size": 64,
                       "progress": False, "device": "cpu", "num_threads": 1}}},
        {"name": "ivector", "model": "ivector_gmm", "config": {
            "feature": {"kind": "mfcc", "n_fft": 512, "hop_length": 160, "n_mels": 32, "n_mfcc": 12},
            "params": {"n_components": 4, "ivector_dim": 4, "n_iter": 3, "ubm_iter": 5, "backend_components": 1,
                       "backend_iter": 5}}},
    )

    def __init__(self, members: Sequence[Any] = (), normalize: str = "zscore", combine: str = "mean",
                 weights: Sequence[float] | None = None) -> None:
        self.members = members
        self.normalize = normalize
        self.combine = combine
        self.weights = weights

    @classmethod
    def example_input(cls) -> ExampleInput:
        return ExampleInput(dim=3, n_vectors=1, scores=True)

    def _check_params(self, dim: int) -> torch.Tensor:
        if self.normalize not in NORMALIZERS or self.combine not in COMBINERS:
            raise ValueError(f"{self.name}: normalize must be one of {NORMALIZERS} and combine one of {COMBINERS}, "
                             f"got {self.normalize!r} and {self.combine!r}")
        w = torch.ones(dim, dtype=torch.float64) if self.weights is None else torch.tensor(
            [float(v) for v in self.weights], dtype=torch.float64)
        if w.shape != (dim,) or not bool((w >= 0).all()) or float(w.sum()) <= 0:
            raise ValueError(f"{self.name}: weights {self.weights} must be {dim} non-negative numbers (one per member) "
                             "with a positive sum")
        return w

    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "ScoreEnsemble":
        """`clips`: the members' raw scores of held-out normal windows, `[n_i, M]` each."""
        X = torch.cat(check_clips(clips, what=f"{self.name}.fit member scores")).double()
        if X.shape[0] < 2:
            raise ValueError(f"{self.name}: normalising needs the scores of at least 2 held-out normal windows, "
                             f"got {X.shape[0]}")
        self.weights_ = self._check_params(X.shape[1])
        self.mean_, self.std_ = X.mean(dim=0), X.std(dim=0).clamp_min(_STD_FLOOR)
        self.reference_ = X.sort(dim=0).values  # [n_held_out, M]: each member's held-out normal scores, sorted
        self.dim_ = int(X.shape[1])
        return self

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "mean_")

    def member_names(self) -> list[str]:
        """The members' names in score-vector order (training records every entry as {name, model, config})."""
        try:
            return [str(entry["name"]) for entry in self.members]
        except (TypeError, KeyError):
            raise ValueError(f"{self.name}: members must be {{name, model, config}} entries, got {self.members!r}"
                             ) from None

    def normalized(self, X: torch.Tensor, members: Sequence[int]) -> torch.Tensor:
        """`[N, k]` raw scores of the members at positions `members` -> `[N, k]`, normalised by those members'
        held-out normal statistics."""
        idx = list(members)
        X = X.double()
        if self.normalize == "zscore":
            return (X - self.mean_[idx].to(X.device)) / self.std_[idx].to(X.device)
        ref = self.reference_[:, idx].to(X.device).T.contiguous()  # [k, n]
        below = torch.searchsorted(ref, X.T.contiguous(), right=False)
        not_above = torch.searchsorted(ref, X.T.contiguous(), right=True)
        return ((below + not_above).double() / (2.0 * ref.shape[1])).T

    def partial(self, raw: torch.Tensor, members: Sequence[int]) -> torch.Tensor:
        """`[N, k]` raw scores of the members at positions `members` -> `[N]` float64 partial combinations, which
        `merge` turns into the ensemble score: a scorer whose members need different feature streams scores each
        group on its own. Weighted sum (`mean`) or weighted max (`max`) of the normalised scores."""
        self._check_fitted()
        idx = list(members)
        Z = self.normalized(raw, idx)
        w = self.weights_[idx].to(Z.device)
        return (Z * w).sum(dim=1) if self.combine == "mean" else (Z * w).max(dim=1).values

    def merge(self, partials: Sequence[float]) -> float:
        """The ensemble score from the partial combinations of groups that together hold every member once."""
        total = float(self.weights_.sum())
        return float(sum(partials)) / total if self.combine == "mean" else float(max(partials))

    def score_vectors(self, X: torch.Tensor, ids: Sequence[str] | None = None) -> torch.Tensor:
        self._check_fitted()
        part = self.partial(check_vectors(X, self.dim_), range(self.dim_))
        out = part / float(self.weights_.sum()) if self.combine == "mean" else part
        return out.float().cpu()

    def learned(self) -> dict[str, Any]:
        self._check_fitted()
        return {"n_held_out": int(self.reference_.shape[0])}

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {"weights_": self.weights_, "mean_": self.mean_, "std_": self.std_, "reference_": self.reference_}

    def load_state_dict(self, state: dict[str, torch.Tensor], learned: dict[str, Any] | None = None
                        ) -> "ScoreEnsemble":
        ref = state.get("reference_") if isinstance(state, dict) else None
        if not isinstance(ref, torch.Tensor) or ref.ndim != 2:
            raise ValueError(f"{self.name}: state needs a 2-D tensor 'reference_'")
        m = ref.shape[1]
        check_state(state, {"weights_": torch.zeros(m), "mean_": torch.zeros(m), "std_": torch.zeros(m),
                            "reference_": ref}, self.name)
        self.weights_ = self._check_params(m)
        if not torch.equal(self.weights_, state["weights_"].double()):
            raise ValueError(f"{self.name}: stored weights differ from the hyper-parameters {self.weights}")
        self.mean_, self.std_ = state["mean_"].double(), state["std_"].double()
        self.reference_ = ref.double()
        self.dim_ = int(m)
        return self
