"""Thresholds from few normal clips: when cross-fitting is used, that every clip's score comes from a model that
did not see it, and what is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.scoring import Chain
from models.training.recipe import MAX_FOLDS, build_spec, cross_fitted_scores, fit_bundle, needs_cross_fit
from models.bundle import load_bundle

CONFIG = {"params": {"n_estimators": 20}, "seed": 3}


def clips(n: int, seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.normal(i % 3, 1.0, (1, 6)).astype(np.float32)) for i in range(n)]


def spec():
    return build_spec("iforest", CONFIG, feature_overrides={"kind": "vectors", "dim": 6})


@pytest.mark.parametrize(("n", "holdout", "gamma", "cross"), [
    (8, 0.1, True, True),     # 1 held out: a gamma fit needs 3
    (20, 0.1, True, True),    # 2 held out
    (30, 0.1, True, False),   # 3 held out: enough
    (20, 0.1, False, False),  # percentile: 2 held-out scores will do
    (2, 0.5, False, False),
    (2, 0.9, False, True),    # nothing left to fit on
    (5, 0.0, True, False),    # holdout 0 asks for the training scores themselves
])
def test_when_the_threshold_is_cross_fitted(n: int, holdout: float, gamma: bool, cross: bool) -> None:
    assert needs_cross_fit(n, holdout, gamma) is cross


def test_a_single_clip_is_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match="give at least 2"):
        needs_cross_fit(1, 0.1, True)


def test_every_clip_is_scored_by_a_model_fitted_without_it() -> None:
    feats = clips(8)
    oof = cross_fitted_scores(spec, feats, None, seed=5)
    order = np.random.default_rng(5).permutation(8)
    for f in range(MAX_FOLDS):  # rebuild each fold by hand
        held = order[f::MAX_FOLDS]
        model = spec()
        model.detector.fit([feats[i] for i in range(8) if i not in held])
        expected = Chain([], model.detector).score_windows([feats[i] for i in held])
        np.testing.assert_allclose(oof[held], expected, rtol=1e-6)
    seen = spec()
    seen.detector.fit(feats)  # a model that saw the clips scores them lower: the cross-fitted ones are honest
    assert np.mean(oof) > np.mean(seen.detector.score(feats))


def test_the_bundle_records_cross_fitted_scores_and_two_clips_fall_back_to_their_maximum(tmp_path) -> None:
    feats = clips(2)
    oof = cross_fitted_scores(spec, feats, None, seed=0)
    path = fit_bundle(tmp_path / "b", spec(), feats, None, machine="fan", cross_fitted=oof)
    b = load_bundle(path, device="cpu")
    assert b.meta["training"]["threshold_scores"] == "cross-fitted"
    assert b.threshold_method == "percentile" and b.threshold == pytest.approx(float(oof.max()))


def test_five_clips_give_a_threshold_with_its_uncertainty_in_the_bundle(tmp_path) -> None:
    feats = clips(5)
    oof = cross_fitted_scores(spec, feats, None, seed=0)
    b = load_bundle(fit_bundle(tmp_path / "b", spec(), feats, None, machine="fan", cross_fitted=oof), device="cpu")
    cal = b.meta["threshold"]["info"]["calibration"]
    assert cal["scores"] == "cross-fitted" and cal["n_scores"] == 5 and cal["quantile"] == 0.9
    assert cal["exceedances"] == int(np.sum(oof > b.threshold))
    lo, hi = cal["false_alarm_rate_interval"]
    assert 0.0 <= lo <= cal["false_alarm_rate"] <= hi <= 1.0 and hi > 0.4  # five scores cannot say much
    assert cal["quantile_interval"][1] is None


def test_each_id_with_its_own_threshold_gets_its_own_calibration_and_the_others_fall_back(tmp_path) -> None:
    from models.threshold import calibration

    feats = clips(14, seed=1)
    ids = ["a"] * 6 + ["b"] * 6 + ["c"] * 2  # c: 2 cross-fitted scores, too few for a gamma threshold of its own
    oof = cross_fitted_scores(spec, feats, ids, seed=0)
    b = load_bundle(fit_bundle(tmp_path / "b", spec(), feats, ids, machine="fan", cross_fitted=oof), device="cpu")
    assert sorted(b.per_id_thresholds) == ["a", "b"]
    for ident in ("a", "b"):
        own = oof[[i == ident for i in ids]]
        expected = {**calibration(own, b.threshold_for(ident), 0.9), "scores": "cross-fitted"}
        assert b.calibration_for(ident) == pytest.approx(expected)
        assert b.meta["threshold"]["info"]["per_id_calibration"][ident] == b.calibration_for(ident)
        assert b.calibration_for(ident)["n_scores"] == 6
    glob = b.meta["threshold"]["info"]["calibration"]
    assert glob["n_scores"] == 14 and glob["exceedances"] == int(np.sum(oof > b.threshold))
    for ident in ("c", "unknown", None):  # no threshold of its own: the global one, and its calibration
        assert b.threshold_for(ident) == b.threshold and b.calibration_for(ident) == glob


def test_bundles_without_calibration_still_load_and_say_none(tmp_path) -> None:
    import json
    from pathlib import Path

    feats = clips(14, seed=1)
    ids = ["a"] * 6 + ["b"] * 8
    oof = cross_fitted_scores(spec, feats, ids, seed=0)
    path = fit_bundle(tmp_path / "b", spec(), feats, ids, machine="fan", cross_fitted=oof)
    meta = json.loads((path / "bundle.json").read_text())
    del meta["threshold"]["info"]["per_id_calibration"]  # written before per-id calibration
    (path / "bundle.json").write_text(json.dumps(meta))
    b = load_bundle(path, device="cpu")
    assert b.threshold_for("a") != b.threshold  # its own threshold, whose calibration the bundle lacks:
    assert b.calibration_for("a") is None  # not the global one, which describes another number
    assert b.calibration_for(None) == meta["threshold"]["info"]["calibration"]
    schema1 = load_bundle(Path(__file__).resolve().parents[1] / "fixtures" / "bundle_schema1", device="cpu")
    assert schema1.calibration_for(None) is None and schema1.calibration_for("id_00") is None
