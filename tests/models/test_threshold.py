"""Thresholds: the DCASE gamma rule, percentile, fixed, and the degenerate inputs that must not pass silently."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from models.threshold import MIN_GAMMA_SCORES, fit_threshold, parse_threshold_spec


@pytest.fixture(scope="module")
def gamma_scores() -> np.ndarray:
    return scipy.stats.gamma.rvs(2.5, loc=0.3, scale=0.4, size=4000, random_state=np.random.default_rng(1))


def test_gamma_threshold_is_the_fitted_quantile(gamma_scores: np.ndarray) -> None:
    thr, info = fit_threshold(gamma_scores)
    shape, loc, scale = scipy.stats.gamma.fit(gamma_scores)
    assert thr == pytest.approx(scipy.stats.gamma.ppf(0.9, shape, loc=loc, scale=scale), rel=1e-9)
    # and the fit recovers the generating distribution's 0.9 quantile
    assert thr == pytest.approx(scipy.stats.gamma.ppf(0.9, 2.5, loc=0.3, scale=0.4), rel=0.03)
    assert info["method"] == "gamma" and info["q"] == 0.9 and info["n"] == gamma_scores.size
    assert {"shape", "loc", "scale"} <= set(info)


def test_gamma_quantile_is_configurable(gamma_scores: np.ndarray) -> None:
    low, _ = fit_threshold(gamma_scores, q=0.5)
    high, _ = fit_threshold(gamma_scores, q=0.99)
    assert low < fit_threshold(gamma_scores)[0] < high
    assert np.mean(gamma_scores > high) == pytest.approx(0.01, abs=0.01)


def test_percentile_threshold() -> None:
    scores = np.arange(101, dtype=float)
    thr, info = fit_threshold(scores, "percentile", percentile=90)
    assert thr == 90.0 and info == {"method": "percentile", "percentile": 90.0, "n": 101}
    assert fit_threshold([3.0, 1.0, 2.0], "percentile", percentile=50)[0] == 2.0


def test_fixed_threshold_needs_no_scores() -> None:
    assert fit_threshold(None, "fixed", value=1.25) == (1.25, {"method": "fixed", "value": 1.25})


@pytest.mark.parametrize(
    ("scores", "kwargs", "message"),
    [
        ([2.0] * 50, {}, "all 50 scores are equal"),
        ([1.0, 2.0], {}, f"at least {MIN_GAMMA_SCORES} scores"),
        ([], {}, "no scores"),
        ([1.0, float("nan"), 2.0, 3.0], {}, "1 of 4 scores are NaN/inf"),
        ([1.0, 2.0, 3.0], {"q": 1.0}, "quantile q"),
        ([1.0, 2.0, 3.0], {"method": "percentile", "percentile": 120}, r"in \[0, 100\]"),
        ([1.0, 2.0, 3.0], {"method": "percentile"}, "needs a percentile"),
        (None, {"method": "fixed", "value": float("inf")}, "finite value"),
        ([1.0, 2.0, 3.0], {"method": "median"}, "unknown threshold method 'median'"),
    ],
)
def test_degenerate_or_bad_input_is_a_clear_error(scores, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_threshold(scores, **kwargs)


def test_degenerate_gamma_error_suggests_the_alternatives() -> None:
    with pytest.raises(ValueError, match="percentile or fixed"):
        fit_threshold([0.5] * 10)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("gamma", {"method": "gamma"}),
        ("gamma:0.95", {"method": "gamma", "q": 0.95}),
        ("percentile:99", {"method": "percentile", "percentile": 99.0}),
        ("fixed:-3.5", {"method": "fixed", "value": -3.5}),
    ],
)
def test_parse_threshold_spec(spec: str, expected: dict) -> None:
    assert parse_threshold_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "percentile", "fixed:", "fixed:abc", "gamma:x", "mean:3"])
def test_parse_threshold_spec_rejects_garbage(spec: str) -> None:
    with pytest.raises(ValueError, match="bad threshold spec"):
        parse_threshold_spec(spec)


def test_calibration_counts_exceedances_with_exact_intervals() -> None:
    import scipy.stats

    from models.threshold import calibration

    scores = np.arange(1.0, 11.0)  # 10 scores, 2 above 8.5
    c = calibration(scores, 8.5, 0.9)
    assert (c["n_scores"], c["exceedances"], c["false_alarm_rate"]) == (10, 2, 0.2)
    lo, hi = c["false_alarm_rate_interval"]
    assert lo == pytest.approx(scipy.stats.beta.ppf(0.025, 2, 9)) and hi == pytest.approx(scipy.stats.beta.ppf(0.975, 3, 8))
    assert c["quantile_interval"][1] is None  # 10 scores cannot bound the 0.9 quantile from above
    assert calibration(scores, 100.0, None)["false_alarm_rate_interval"][0] == 0.0
    assert "quantile" not in calibration(scores, 100.0, None)


def test_the_quantile_interval_covers_the_true_quantile() -> None:
    import scipy.stats

    from models.threshold import calibration

    rng = np.random.default_rng(3)
    true = scipy.stats.gamma.ppf(0.9, 3)
    hits = [calibration(x, 0.0, 0.9)["quantile_interval"] for x in rng.gamma(3, 1, size=(400, 100))]
    covered = np.mean([lo <= true < hi for lo, hi in hits])
    assert 0.93 <= covered <= 0.995
