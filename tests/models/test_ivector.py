"""The i-vector maths against known answers, and the `ivector_gmm` detector's own behaviour (the registry tests in
test_detectors.py / test_scoring.py / test_train_cli.py cover the shared contract).

The known answer: clips drawn from the total-variability model itself, a GMM whose means move to m_c + T_c w with
w ~ N(0, I) per clip. T trained by EM from a random start must span the same whitened subspace as the true T
(principal angles near zero), and the i-vectors must be the true w up to an invertible linear map.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.detectors import get_detector
from models.detectors.base import NotFittedError
from models.detectors.ivector import maths
from models.detectors.ivector.maths import (
    GaussianMixture,
    baum_welch,
    extract_ivectors,
    fit_gmm,
    train_total_variability,
    whiten_stats,
)
from models.features import feature_from_dict

C, D, R = 8, 5, 3  # components, feature dims, i-vector dims of the known model


def factor_model(seed: int = 0) -> dict[str, torch.Tensor]:
    """A UBM with well-separated means and known diagonal variances, and a known T (whitened entries ~ 0.7)."""
    g = torch.Generator().manual_seed(seed)
    var = 0.5 + torch.rand(C, D, generator=g, dtype=torch.float64)
    return {
        "weights": torch.full((C,), 1.0 / C, dtype=torch.float64),
        "means": 6.0 * torch.randn(C, D, generator=g, dtype=torch.float64),
        "var": var,
        "T": 0.7 * torch.randn(C, D, R, generator=g, dtype=torch.float64) * var.sqrt()[:, :, None],
    }


def sample_clips(model: dict[str, torch.Tensor], n_clips: int, n_frames: int, seed: int = 1,
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Clips `[n_frames, D]`, each frame's true component, and the true latent w `[n_clips, R]`."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_clips, R, generator=g, dtype=torch.float64)
    clips, comps = [], []
    for u in range(n_clips):
        comp = torch.multinomial(model["weights"], n_frames, replacement=True, generator=g)
        shifted = model["means"] + model["T"] @ w[u]  # [C, D]: the clip's supervector of means
        noise = torch.randn(n_frames, D, generator=g, dtype=torch.float64) * model["var"][comp].sqrt()
        clips.append(shifted[comp] + noise)
        comps.append(comp)
    return clips, comps, w


def max_principal_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest principal angle (radians) between the column spaces of two [n, k] matrices."""
    qa, qb = torch.linalg.qr(a)[0], torch.linalg.qr(b)[0]
    cosines = torch.linalg.svdvals(qa.T @ qb).clamp(max=1.0)
    return float(torch.arccos(cosines.min()))


def linear_fit_r2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """R² of each column of y regressed on x with an intercept (1 where y is an affine image of x)."""
    design = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    coef = torch.linalg.lstsq(design, y).solution
    resid = y - design @ coef
    return 1.0 - resid.square().sum(dim=0) / (y - y.mean(dim=0)).square().sum(dim=0)


# -- total variability: the known answer ----------------------------------------------------------------------------


@pytest.mark.parametrize("min_divergence", [True, False])
def test_total_variability_em_recovers_the_true_subspace_and_latents(min_divergence: bool) -> None:
    model = factor_model()
    clips, comps, w_true = sample_clips(model, n_clips=300, n_frames=400)
    # exact Baum-Welch statistics from the known component of each frame
    zeroth = torch.stack([torch.bincount(c, minlength=C).double() for c in comps])
    first = torch.stack([torch.zeros(C, D, dtype=torch.float64).index_add_(0, c, x) for x, c in zip(clips, comps)])
    first -= zeroth[:, :, None] * model["means"]
    ubm = GaussianMixture(model["weights"], model["means"], model["var"])
    f = whiten_stats(ubm, first)
    true_whitened = (model["T"] / model["var"].sqrt()[:, :, None]).reshape(C * D, R)
    # the very draw the EM starts from (same generator state, same count): far from the answer
    start = torch.randn(C * D, R, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert max_principal_angle(true_whitened, start) > 0.5

    tw = train_total_variability(zeroth, f, R, n_iter=10, generator=torch.Generator().manual_seed(3),
                                 min_divergence=min_divergence)
    assert tw.shape == (C, D, R)
    assert max_principal_angle(true_whitened, tw.reshape(C * D, R)) < math.radians(3)
    w_est = extract_ivectors(tw, zeroth, f)
    assert linear_fit_r2(w_est, w_true).min() > 0.98  # w up to an invertible linear map
    assert linear_fit_r2(w_true, w_est).min() > 0.98
    if min_divergence:  # the prior of w is back to N(0, I): the estimated latents have about unit second moment
        second = (w_est.T @ w_est) / w_est.shape[0]
        assert torch.allclose(second, torch.eye(R, dtype=torch.float64), atol=0.15)


def test_the_detector_recovers_the_latents_end_to_end() -> None:
    """Standardisation, UBM by EM, Baum-Welch posteriors, T by EM: the training clips' i-vectors (whitened, an
    invertible affine map of the posterior means) are an affine image of the true w."""
    model = factor_model(seed=4)
    clips, _, w_true = sample_clips(model, n_clips=200, n_frames=300, seed=5)
    det = get_detector("ivector_gmm")(n_components=C, ivector_dim=R, n_iter=10, ubm_iter=10, backend_components=1)
    det.fit([c.float() for c in clips])
    y = det.ivectors(clips)
    assert y.shape == (200, R)
    assert linear_fit_r2(y, w_true).min() > 0.95
    assert linear_fit_r2(w_true, y).min() > 0.95


@pytest.mark.parametrize("budget", [None, 150])  # 150 doubles: groups of one to three clips
def test_baum_welch_equals_a_per_clip_loop_whatever_the_grouping(budget: int | None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    if budget is not None:
        monkeypatch.setattr(maths, "_ELEMENTS", budget)
        assert list(maths._segment_groups([1, 17, 5, 40, 2], 3)) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    g = torch.Generator().manual_seed(2)
    ubm = GaussianMixture(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64),
                          torch.randn(3, 4, generator=g, dtype=torch.float64),
                          0.5 + torch.rand(3, 4, generator=g, dtype=torch.float64))
    clips = [torch.randn(n, 4, generator=g, dtype=torch.float64) for n in (1, 17, 5, 40, 2)]
    zeroth, first = baum_welch(ubm, clips)
    for i, x in enumerate(clips):
        logp = torch.stack([torch.distributions.Normal(ubm.means[k], ubm.covars[k].sqrt()).log_prob(x).sum(dim=1)
                            for k in range(3)], dim=1) + ubm.weights.log()
        resp = torch.softmax(logp, dim=1)
        torch.testing.assert_close(zeroth[i], resp.sum(dim=0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(first[i], resp.T @ x - resp.sum(dim=0)[:, None] * ubm.means, rtol=1e-10,
                                   atol=1e-12)
        one_n, one_f = baum_welch(ubm, [x])  # alone, no padding: the same numbers
        torch.testing.assert_close(one_n[0], zeroth[i], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(one_f[0], first[i], rtol=1e-12, atol=1e-12)


# -- Gaussian mixtures ----------------------------------------------------------------------------------------------


def mixture_sample(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.tensor([[-6.0, 0.0, 1.0], [0.0, 5.0, -2.0], [7.0, -3.0, 3.0]], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    comp = torch.multinomial(weights, 6000, replacement=True, generator=g)
    scales = torch.tensor([[1.0, 0.5, 2.0], [0.3, 1.0, 1.0], [1.5, 1.5, 0.2]], dtype=torch.float64)
    X = means[comp] + scales[comp] * torch.randn(6000, 3, generator=g, dtype=torch.float64)
    return X, means, weights


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_gmm_em_recovers_the_means_of_a_known_mixture(covariance: str) -> None:
    X, means, weights = mixture_sample()
    gmm, _ = fit_gmm(X, 3, covariance=covariance, n_iter=50, floor=1e-6, generator=torch.Generator().manual_seed(1))
    order = gmm.means[:, 0].argsort()
    torch.testing.assert_close(gmm.means[order], means, atol=0.1, rtol=0)
    torch.testing.assert_close(gmm.weights[order], weights, atol=0.02, rtol=0)
    if covariance == "full":
        torch.testing.assert_close(gmm.covars[order[2]].diagonal(), torch.tensor([1.5, 1.5, 0.2]).double() ** 2,
                                   atol=0.15, rtol=0)


@pytest.mark.parametrize("covariance,floor", [("diag", 1e-6), ("diag", 0.5), ("full", 1e-3)])
def test_gmm_log_likelihood_never_decreases_over_em(covariance: str, floor: float) -> None:
    X, _, _ = mixture_sample(seed=3)
    gmm, history = fit_gmm(X, 5, covariance=covariance, n_iter=30, floor=floor,
                           generator=torch.Generator().manual_seed(0))  # 5 components for 3 clusters: slow EM
    assert len(history) == 31 and np.all(np.isfinite(history))
    assert np.all(np.diff(history) >= -1e-10), np.diff(history).min()
    assert history[-1] > history[0]
    assert history[-1] == pytest.approx(float(gmm.log_likelihood(X).mean()), rel=1e-12)
    if covariance == "diag":
        assert float(gmm.covars.min()) >= floor  # the variance floor holds


def test_gmm_log_density_matches_torch_distributions() -> None:
    X, _, _ = mixture_sample()
    for covariance in ("diag", "full"):
        gmm, _ = fit_gmm(X[:500], 2, covariance=covariance, n_iter=5)
        cov = gmm.covars if gmm.full else torch.diag_embed(gmm.covars)
        comps = torch.distributions.MultivariateNormal(gmm.means, covariance_matrix=cov)
        ref = torch.logsumexp(comps.log_prob(X[:50, None, :]) + gmm.weights.log(), dim=1)
        torch.testing.assert_close(gmm.log_likelihood(X[:50]), ref, rtol=1e-10, atol=1e-10)


def test_gmm_refuses_more_components_than_rows_and_unknown_covariance() -> None:
    with pytest.raises(ValueError, match="at least as many rows"):
        fit_gmm(torch.zeros(3, 2), 4)
    with pytest.raises(ValueError, match="'diag' or 'full'"):
        fit_gmm(torch.zeros(3, 2), 1, covariance="spherical")  # type: ignore[arg-type]


# -- the detector ---------------------------------------------------------------------------------------------------


def _clips(n: int, seed: int, frames: int = 80, dim: int = 6, shift: float = 0.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0] * dim, [4.0] * dim, [-4.0, 4.0] * (dim // 2)])
    out = []
    for _ in range(n):
        comp = torch.randint(3, (frames,), generator=g)
        out.append(centres[comp] + shift + torch.randn(frames, dim, generator=g))
    return out


QUICK = {"n_components": 3, "ivector_dim": 4, "n_iter": 5, "ubm_iter": 10, "backend_components": 1}


def test_default_feature_is_mfcc_and_the_detector_scores_windows_in_one_pass() -> None:
    cls = get_detector("ivector_gmm")
    feature = feature_from_dict(cls.default_feature)
    assert feature.kind == "mfcc" and feature.dim == 20
    assert cls.granularity == "window" and not cls.iterative() and not cls.needs_ids


def test_shifted_clips_score_higher() -> None:
    det = get_detector("ivector_gmm")(**QUICK).fit(_clips(30, 0))
    normal, shifted = det.score(_clips(10, 1)), det.score(_clips(10, 2, shift=0.7))
    assert normal.dtype == np.float64 and normal.max() < shifted.min()


@pytest.mark.parametrize("extra", [{}, {"length_norm": True, "backend_covariance": "diag", "backend_components": 2}])
def test_state_dict_round_trip_gives_identical_scores(extra: dict) -> None:
    cls = get_detector("ivector_gmm")
    det = cls(**{**QUICK, **extra}).fit(_clips(20, 0))
    test = _clips(6, 1) + _clips(4, 2, shift=1.0)
    state = {k: v.clone() for k, v in det.state_dict().items()}
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    twin = cls(**det.get_params()).load_state_dict(state, det.learned())
    np.testing.assert_array_equal(twin.score(test), det.score(test))
    assert twin.learned() == det.learned()


def test_windows_scored_together_equal_windows_scored_alone() -> None:
    det = get_detector("ivector_gmm")(**QUICK).fit(_clips(20, 0))
    test = _clips(5, 3) + _clips(3, 4, frames=37) + _clips(2, 5, frames=1)  # unequal lengths: padded groups
    together = det.score(test)
    alone = np.concatenate([det.score([c]) for c in test])
    np.testing.assert_allclose(together, alone, rtol=1e-12)


def test_bad_input_raises_value_error() -> None:
    cls = get_detector("ivector_gmm")
    good = _clips(6, 0)
    with pytest.raises(ValueError, match="empty"):
        cls(**QUICK).fit([])
    nan = [c.clone() for c in good]
    nan[2][3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"\[2\].*NaN/inf"):
        cls(**QUICK).fit(nan)
    with pytest.raises(ValueError, match="dim 5, expected 6"):
        cls(**QUICK).fit([good[0], good[1][:, :5]])
    with pytest.raises(ValueError, match="at least 2 training clips"):
        cls(**QUICK).fit(good[:1])
    with pytest.raises(ValueError, match="n_components=64 needs at least 64 training frames"):
        cls(**{**QUICK, "n_components": 64}).fit([c[:10] for c in good[:3]])
    with pytest.raises(ValueError, match="i-vector dimension must be in"):
        cls(**{**QUICK, "ivector_dim": 3 * 6 + 1}).fit(good)
    with pytest.raises(ValueError, match="backend_covariance"):
        cls(**{**QUICK, "backend_covariance": "tied"}).fit(good)
    with pytest.raises(ValueError, match="n_iter=0"):
        cls(**{**QUICK, "n_iter": 0}).fit(good)
    det = cls(**QUICK)
    with pytest.raises(NotFittedError):
        det.score(good)
    det.fit(good)
    with pytest.raises(ValueError, match="dim 7, expected 6"):
        det.score([torch.zeros(5, 7)])
    with pytest.raises(ValueError, match="NaN/inf"):
        det.score([torch.full((5, 6), float("nan"))])
    with pytest.raises(ValueError, match="empty"):
        det.score([])
    with pytest.raises(ValueError, match="2 ids for 1 clips"):
        det.score(good[:1], ["a", "b"])
    state = det.state_dict()
    with pytest.raises(ValueError, match="misshapes"):
        cls(**QUICK).load_state_dict({k: v for k, v in state.items() if k != "tv_"})
    with pytest.raises(ValueError, match="invalid mixture"):
        cls(**QUICK).load_state_dict({**state, "backend_covars_": -state["backend_covars_"]})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_windows_score_as_cpu_ones() -> None:
    det = get_detector("ivector_gmm")(**QUICK).fit(_clips(20, 0))
    test = _clips(4, 1)
    np.testing.assert_array_equal(det.score([c.cuda() for c in test]), det.score(test))
