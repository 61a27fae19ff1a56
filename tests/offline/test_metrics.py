"""Metrics against cases worked out by hand (the McClish pAUC formula written out), not against sklearn itself."""

from __future__ import annotations

import math

import numpy as np
import pytest

from offline.metrics import (
    arithmetic_mean,
    auc_pauc,
    confusion_at,
    decisions,
    harmonic_mean,
)


def mcclish(partial_area: float, max_fpr: float = 0.1) -> float:
    """Standardised partial AUC: 0.5 * (1 + (A - min) / (max - min)), min = max_fpr**2 / 2, max = max_fpr."""
    lo, hi = max_fpr**2 / 2, max_fpr
    return 0.5 * (1 + (partial_area - lo) / (hi - lo))


def test_auc_and_pauc_hand_computed() -> None:
    # normals 0.1 0.2 0.3 0.4, anomalies 0.35 0.9: 7 of the 8 (anomaly, normal) pairs are ordered right.
    # ROC from the top: 0.9 (anomaly) gives TPR 0.5 at FPR 0, the next point is FPR 0.25, so on FPR [0, 0.1]
    # the curve is flat at 0.5: partial area 0.05.
    r = auc_pauc([0, 0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4, 0.35, 0.9])
    assert r.auc == pytest.approx(7 / 8)
    assert r.pauc == pytest.approx(mcclish(0.05))
    assert r.pauc == pytest.approx(0.7368421, abs=1e-6)
    assert (r.n_normal, r.n_anomaly) == (4, 2)


def test_perfect_and_inverted_detectors() -> None:
    y = [0, 0, 0, 1, 1]
    perfect = auc_pauc(y, [1, 2, 3, 4, 5])
    assert (perfect.auc, perfect.pauc) == (pytest.approx(1.0), pytest.approx(1.0))
    inverted = auc_pauc(y, [5, 4, 3, 2, 1])
    assert inverted.auc == pytest.approx(0.0)
    # McClish maps a zero partial area to 0.5 * (1 - 0.005 / 0.095), not to 0.
    assert inverted.pauc == pytest.approx(mcclish(0.0))
    assert inverted.pauc == pytest.approx(0.4736842, abs=1e-6)


def test_ties_count_half() -> None:
    assert auc_pauc([0, 1, 0, 1], [0.5, 0.5, 0.1, 0.9]).auc == pytest.approx(0.875)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1]])
def test_one_class_gives_none(labels: list[int]) -> None:
    r = auc_pauc(labels, np.linspace(0, 1, len(labels)))
    assert r.auc is None and r.pauc is None
    assert r.to_dict()["auc"] is None


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="length"):
        auc_pauc([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        auc_pauc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        auc_pauc([0, 2], [0.1, 0.2])


def test_means_skip_undefined_ids() -> None:
    assert arithmetic_mean([0.5, None, 1.0]) == pytest.approx(0.75)
    assert harmonic_mean([0.5, None, 1.0]) == pytest.approx(2 / (1 / 0.5 + 1 / 1.0))
    assert harmonic_mean([0.6, 0.0]) == 0.0
    assert arithmetic_mean([None, None]) is None
    assert harmonic_mean([]) is None
    assert harmonic_mean([0.9, 0.1]) < arithmetic_mean([0.9, 0.1])
    assert not math.isnan(arithmetic_mean([float("nan"), 0.4]))


def test_confusion_at_threshold() -> None:
    y = [0, 0, 0, 1, 1, 1]
    s = [0.1, 0.5, 0.7, 0.4, 0.5, 0.9]
    c = confusion_at(y, s, threshold=0.5)  # equal to the threshold = normal
    assert (c.tn, c.fp, c.fn, c.tp) == (2, 1, 2, 1)
    assert c.matrix.tolist() == [[2, 1], [2, 1]]
    assert c.precision == pytest.approx(0.5)
    assert c.recall == pytest.approx(1 / 3)
    assert c.f1 == pytest.approx(0.4)
    assert decisions(s, 0.5).tolist() == [0, 0, 1, 0, 0, 1]


def test_confusion_without_positives_has_undefined_ratios() -> None:
    c = confusion_at([0, 0], [0.1, 0.2], threshold=1.0)
    assert (c.tn, c.fp, c.fn, c.tp) == (2, 0, 0, 0)
    assert c.precision is None and c.recall is None and c.f1 is None
