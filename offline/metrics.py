"""AUC, pAUC, their means and the confusion matrix, computed exactly as the DCASE 2020 Task 2 evaluator does.

The DCASE 2020 baseline scores a machine id with `sklearn.metrics.roc_auc_score(y, s)` and
`roc_auc_score(y, s, max_fpr=0.1)`; the latter is McClish-standardised (0.5 = chance, 1 = perfect), so our figures
line up with the published tables. When an id has only normal or only anomalous clips, an ROC curve does not exist:
we return None (JSON null) instead of a number, and every mean skips those ids.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

MAX_FPR = 0.1  # the DCASE 2020 Task 2 pAUC range


@dataclass(frozen=True)
class AucPauc:
    """AUC and pAUC of one group of clips; both None when the group has a single class."""

    auc: float | None
    pauc: float | None
    n_normal: int
    n_anomaly: int

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _labels_scores(
    y_true: Sequence[int | bool] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=int).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} labels, {s.size} scores")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (anomaly)")
    if not np.isfinite(s).all():
        raise ValueError(f"{int((~np.isfinite(s)).sum())} scores are NaN or infinite")
    return y, s


def auc_pauc(
    y_true: Sequence[int | bool] | np.ndarray, scores: Sequence[float] | np.ndarray, max_fpr: float = MAX_FPR
) -> AucPauc:
    """AUC and McClish-standardised pAUC (FPR <= `max_fpr`) with anomaly = 1; None for both if one class is missing."""
    from sklearn.metrics import roc_auc_score

    y, s = _labels_scores(y_true, scores)
    n_anomaly = int(y.sum())
    n_normal = int(y.size - n_anomaly)
    if n_anomaly == 0 or n_normal == 0:
        return AucPauc(None, None, n_normal, n_anomaly)
    return AucPauc(
        float(roc_auc_score(y, s)), float(roc_auc_score(y, s, max_fpr=max_fpr)), n_normal, n_anomaly
    )


def _defined(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def arithmetic_mean(values: Iterable[float | None]) -> float | None:
    """Mean of the defined values (None entries are ids without both classes); None when nothing is defined."""
    vals = _defined(values)
    return sum(vals) / len(vals) if vals else None


def harmonic_mean(values: Iterable[float | None]) -> float | None:
    """Harmonic mean of the defined values, the DCASE ranking statistic: one bad id drags it down more than the
    arithmetic mean. A value of 0 makes it 0 (its limit); None when nothing is defined."""
    vals = _defined(values)
    if not vals:
        return None
    if any(v < 0 for v in vals):
        raise ValueError(f"harmonic mean needs non-negative values, got {min(vals)}")
    if any(v == 0 for v in vals):
        return 0.0
    return len(vals) / sum(1.0 / v for v in vals)


@dataclass(frozen=True)
class Confusion:
    """Counts at a threshold; a clip is called anomalous when its score is strictly above the threshold."""

    threshold: float
    tn: int
    fp: int
    fn: int
    tp: int

    @property
    def matrix(self) -> np.ndarray:
        """[[tn, fp], [fn, tp]]: rows are the truth (normal, anomaly), columns the decision, as sklearn orders it."""
        return np.array([[self.tn, self.fp], [self.fn, self.tp]])

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p is not None and r is not None and p + r > 0 else None

    def to_dict(self) -> dict[str, float | int | None]:
        return {**asdict(self), "precision": self.precision, "recall": self.recall, "f1": self.f1}


def decisions(scores: Sequence[float] | np.ndarray, threshold: float) -> np.ndarray:
    """0/1 per clip, 1 = anomalous (score > threshold), the rule used by the DCASE decision files and the monitor."""
    return (np.asarray(scores, dtype=float) > threshold).astype(int)


def confusion_at(
    y_true: Sequence[int | bool] | np.ndarray, scores: Sequence[float] | np.ndarray, threshold: float,
    per_clip: np.ndarray | None = None,
) -> Confusion:
    """Confusion counts of the decisions `score > threshold` against the labels (anomaly = 1); `per_clip`
    thresholds (a bundle's per-id ones) replace the single threshold in the decisions when given."""
    y, s = _labels_scores(y_true, scores)
    d = decisions(s, threshold if per_clip is None else np.asarray(per_clip, dtype=float))
    return Confusion(
        threshold=float(threshold),
        tn=int(((y == 0) & (d == 0)).sum()),
        fp=int(((y == 0) & (d == 1)).sum()),
        fn=int(((y == 1) & (d == 0)).sum()),
        tp=int(((y == 1) & (d == 1)).sum()),
    )
