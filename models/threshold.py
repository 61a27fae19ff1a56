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
