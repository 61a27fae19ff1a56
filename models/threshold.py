"""Decision thresholds from scores of normal clips.

The default follows the DCASE baselines: fit a gamma distribution (shape, loc and scale all free, as
`scipy.stats.gamma.fit` does by default) to the scores of held-out normal clips and take its 0.9 quantile, i.e.
accept a 10 % false-alarm rate on normal sound as modelled by the fit. `percentile` takes the empirical percentile
instead and `fixed` a given value.

Degenerate inputs are errors, not silent fallbacks: fewer than `MIN_GAMMA_SCORES` scores, scores that are all
equal, or a fit that does not converge to a finite quantile raise `ValueError` whose message suggests the
percentile or fixed method. A threshold that quietly means something else than what the bundle says would be worse.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

METHODS = ("gamma", "percentile", "fixed")
MIN_GAMMA_SCORES = 3  # a three-parameter fit needs at least three points
# percentiles of the training clips' own scores a bundle records; evaluate reports decisions at the 95th, the
# MIMII per-SNR study's rule, beside the bundle threshold (training scores run low: they are the fitted data)
STUDY_PERCENTILE = 95
TRAIN_PERCENTILES = (90, STUDY_PERCENTILE, 99)


def _as_scores(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("no scores to set a threshold from (is the held-out set empty?)")
    if not np.isfinite(arr).all():
        raise ValueError(f"{int((~np.isfinite(arr)).sum())} of {arr.size} scores are NaN/inf")
    return arr


def fit_threshold(
    scores: Sequence[float] | np.ndarray | None = None,
    method: str = "gamma",
    *,
    q: float = 0.9,
    percentile: float | None = None,
    value: float | None = None,
    margin: float = 1.0,
) -> tuple[float, dict[str, Any]]:
    """Return `(threshold, info)`; `info` records the method and its parameters for the bundle.

    gamma: quantile `q` of a gamma fit to `scores`. percentile: `np.percentile(scores, percentile)`.
    fixed: `value` (scores are not needed). `margin` multiplies a fitted threshold (e.g. 1.15 x the 99th
    percentile keeps normal windows below an alarm's clear level).
    """
    if margin != 1.0:
        if not (math.isfinite(margin) and margin > 0):
            raise ValueError(f"threshold margin must be positive, got {margin!r}")
        thr, info = fit_threshold(scores, method, q=q, percentile=percentile, value=value)
        return thr * margin, {**info, "margin": float(margin)}
    if method == "fixed":
        if value is None or not math.isfinite(float(value)):
            raise ValueError(f"fixed threshold needs a finite value, got {value!r}")
        return float(value), {"method": "fixed", "value": float(value)}
    if method == "percentile":
        if percentile is None or not 0.0 <= float(percentile) <= 100.0:
            raise ValueError(f"percentile threshold needs a percentile in [0, 100], got {percentile!r}")
        arr = _as_scores(scores)
        thr = float(np.percentile(arr, float(percentile)))
        return thr, {"method": "percentile", "percentile": float(percentile), "n": int(arr.size)}
    if method == "gamma":
        return _gamma(_as_scores(scores), q)
    raise ValueError(f"unknown threshold method {method!r}; use one of {', '.join(METHODS)}")


def _gamma(arr: np.ndarray, q: float) -> tuple[float, dict[str, Any]]:
    import scipy.stats

    if not 0.0 < q < 1.0:
        raise ValueError(f"gamma quantile q must be in (0, 1), got {q}")
    hint = "use a percentile or fixed threshold, or hold out more clips"
    if arr.size < MIN_GAMMA_SCORES:
        raise ValueError(f"a gamma threshold needs at least {MIN_GAMMA_SCORES} scores, got {arr.size}; {hint}")
    if np.ptp(arr) <= 1e-12 * max(1.0, float(np.abs(arr).max())):
        raise ValueError(f"all {arr.size} scores are equal ({arr[0]:.6g}): a gamma fit is undefined; {hint}")
    with np.errstate(all="ignore"):
        shape, loc, scale = scipy.stats.gamma.fit(arr)
        thr = float(scipy.stats.gamma.ppf(q, shape, loc=loc, scale=scale))
    if not (math.isfinite(thr) and scale > 0 and shape > 0):
        raise ValueError(f"gamma fit to {arr.size} scores failed (shape={shape}, scale={scale}); {hint}")
    info = {"method": "gamma", "q": q, "shape": float(shape), "loc": float(loc), "scale": float(scale),
            "n": int(arr.size)}
    return thr, info


def calibration(scores: Sequence[float] | np.ndarray, threshold: float, quantile: float | None,
                level: float = 0.95) -> dict[str, Any]:
    """How sure a threshold is, from the `n` normal scores it was set on (held-out or cross-fitted, which the model
    did not see): exact, distribution-free intervals, because a bootstrap of 5 scores has 126 distinct resamples and
    can never reach above the largest score.

    - `false_alarm_rate`: the share of the scores above the threshold, with its Clopper-Pearson interval: where the
      rate at which normal sound crosses the threshold lies (slightly optimistic when the threshold was fitted to
      these same scores, as the gamma rule is).
    - `quantile_interval`: for a threshold that estimates the `quantile` of normal scores (gamma's q, a percentile),
      the order-statistic interval [s_(r), s_(t)] holding that quantile with probability >= `level`; a bound that
      needs more scores than there are is None (with 5 scores nothing bounds the 0.9 quantile from above).
    """
    import scipy.stats

    arr = np.sort(_as_scores(scores))
    n = int(arr.size)
    k = int(np.sum(arr > threshold))
    a = (1.0 - level) / 2
    lo = 0.0 if k == 0 else float(scipy.stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(scipy.stats.beta.ppf(1 - a, k + 1, n - k))
    out: dict[str, Any] = {"n_scores": n, "level": level, "exceedances": k,
                           "false_alarm_rate": k / n, "false_alarm_rate_interval": [lo, hi]}
    if quantile is not None:
        out["quantile"] = float(quantile)
        out["quantile_interval"] = list(_quantile_interval(arr, float(quantile), level))
    return out


def _quantile_interval(sorted_scores: np.ndarray, q: float, level: float) -> tuple[float | None, float | None]:
    """Order statistics (1-based r < t) with P(s_(r) <= x_q < s_(t)) >= level, as even in the tails as the binomial
    allows; None where the bound would need an order statistic beyond the data."""
    import scipy.stats

    n = sorted_scores.size
    a = (1.0 - level) / 2
    # P(x_q < s_(r)) = P(B < r) with B ~ Bin(n, q) the count of scores below x_q: r is the largest with P(B < r) <= a
    r = int(scipy.stats.binom.ppf(a, n, q))
    if scipy.stats.binom.cdf(r - 1, n, q) > a:
        r -= 1
    t = int(scipy.stats.binom.ppf(1 - a, n, q)) + 1  # P(B >= t) <= a
    lower = float(sorted_scores[r - 1]) if r >= 1 else None
    upper = float(sorted_scores[t - 1]) if t <= n else None
    return lower, upper


def parse_threshold_spec(spec: str) -> dict[str, Any]:
    """`gamma`, `gamma:Q`, `percentile:P` or `fixed:V` (the `--threshold` syntax) -> `fit_threshold` keywords."""
    method, _, arg = spec.strip().partition(":")
    try:
        if method == "gamma":
            return {"method": "gamma", **({"q": float(arg)} if arg else {})}
        if method == "percentile" and arg:
            return {"method": "percentile", "percentile": float(arg)}
        if method == "fixed" and arg:
            return {"method": "fixed", "value": float(arg)}
    except ValueError:
        pass
    raise ValueError(f"bad threshold spec {spec!r}; use gamma, gamma:Q, percentile:P or fixed:V (e.g. percentile:95)")
