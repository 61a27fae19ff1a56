"""MFCC i-vectors + GMM (`ivector_gmm`; issue #10, system 2 of the modulation-spectral ASD study, whose seed ships
100-dim MFCC i-vectors): a clip (a monitor window) is summarised by one i-vector, and its score is the negative
log-likelihood of that i-vector under a small GMM fitted to the i-vectors of the normal training clips.

Fit, in order (the maths is in `maths.py`):
1. Frames are standardised with the training mean and std (learned state), so the variance floor and the float64
   expanded quadratic forms act on unit-scale numbers whatever the MFCC ranges.
2. UBM: a diagonal-covariance GMM (`n_components`, 64: the 10 s clips the study scores hold ~310 MFCC frames,
   a few thousand per machine, which 64 Gaussians cover without starving any) by EM (`ubm_iter`) from a seeded
   k-means++ start on all training frames, or a seeded subsample of `max_ubm_frames` of them.
3. Total variability: T `[C, D, ivector_dim]` by EM (`n_iter`) on the per-clip Baum-Welch statistics, with the
   minimum-divergence step; the training clips' i-vectors are the posterior means of w.
4. The i-vectors are centred and whitened (PCA whitening, LDA-free: there are no classes) with their training
   mean and covariance, the covariance ridged by `reg_covar` times its mean variance so fewer clips than
   dimensions still whiten. `length_norm` then scales each to length sqrt(ivector_dim) (Garcia-Romero 2011); it
   is off by default because the norm of an i-vector is how far a clip's sound moved from the UBM, which is what
   an anomaly does, while length normalisation serves cosine comparisons between speakers.
5. Backend: a GMM (`backend_components`, 2; `backend_covariance` full, ridged by `reg_covar` in whitened units) by
   EM (`backend_iter`) on the whitened i-vectors; two components let training sets of several machine ids form
   their own clusters without asking for more clips than one full 100-dim covariance needs.

Scoring is batched: all windows' statistics in padded groups, their i-vectors in blocks, the backend on all of
them at once, in float64 on the CPU (the inputs are moved there by `check_clips`), so GPU features and any batch
of windows give the same numbers. A window's Baum-Welch statistics are sums over its frames, so the detector is
`additive`: the monitor computes each frame's UBM posteriors once, keeps per-hop sums, and solves one i-vector
per window (not 10 windows' worth of posteriors per frame at a 10 s window and 1 s hop). One pass: no epochs,
so `--epochs` does not apply.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from models.detectors.base import ClipsLike, Detector, check_clips, check_ids, check_state, register, standardizer
from models.detectors.ivector.maths import (
    GaussianMixture,
    baum_welch,
    extract_ivectors,
    fit_gmm,
    segment_statistics,
    train_total_variability,
    whiten_stats,
)
from models.features.mfcc import MfccConfig

_TINY = 1e-12  # keeps a ridge or a length positive when training i-vectors coincide


@register
class IvectorGmm(Detector):
    """UBM -> total variability -> i-vectors -> GMM backend; window granularity (one i-vector per window)."""

    name = "ivector_gmm"
    granularity = "window"
    additive = True
    # 20 MFCCs (c0 included) of a 64-band log-mel, 1024 / 512 framing at 16 kHz, no deltas: the envelope the
    # i-vector literature models, at the scale of the DCASE clips
    default_feature = MfccConfig().to_dict()
    quick_params = {"n_components": 4, "ivector_dim": 8, "n_iter": 5, "ubm_iter": 10, "backend_components": 1,
                    "backend_iter": 10}

    def __init__(
        self,
        n_components: int = 64,
        ivector_dim: int = 100,
        n_iter: int = 10,
        ubm_iter: int = 20,
        max_ubm_frames: int = 200_000,
        var_floor: float = 1e-3,
        min_divergence: bool = True,
        length_norm: bool = False,
        backend_components: int = 2,
        backend_covariance: str = "full",
        backend_iter: int = 50,
        reg_covar: float = 1e-2,
        seed: int = 0,
    ) -> None:
        self.n_components = n_components
        self.ivector_dim = ivector_dim
        self.n_iter = n_iter
        self.ubm_iter = ubm_iter
        self.max_ubm_frames = max_ubm_frames
        self.var_floor = var_floor
        self.min_divergence = min_divergence
        self.length_norm = length_norm
        self.backend_components = backend_components
        self.backend_covariance = backend_covariance
        self.backend_iter = backend_iter
        self.reg_covar = reg_covar
        self.seed = seed

    def _check_params(self) -> None:
        counts = ("n_components", "ivector_dim", "n_iter", "ubm_iter", "max_ubm_frames", "backend_components",
                  "backend_iter")
        bad = [f"{k}={getattr(self, k)!r}" for k in counts if int(getattr(self, k)) < 1]
        bad += [f"{k}={getattr(self, k)!r}" for k in ("var_floor", "reg_covar") if not float(getattr(self, k)) > 0]
        if bad:
            raise ValueError(f"{self.name}: {', '.join(bad)} must be positive")
        if self.backend_covariance not in ("diag", "full"):
            raise ValueError(f"{self.name}: backend_covariance must be 'diag' or 'full', "
                             f"got {self.backend_covariance!r}")

    # -- fitting ----------------------------------------------------------------------------------------------------

    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "IvectorGmm":
        checked = check_clips(clips, what=f"{self.name}.fit clips")
        check_ids(ids, len(checked), self)
        self._check_params()
        n_clips, k = len(checked), int(self.backend_components)
        if n_clips < max(2, k):
            raise ValueError(f"{self.name}: needs at least {max(2, k)} training clips (i-vector spread, "
                             f"backend_components={k}), got {n_clips}")
        X = torch.cat(checked)
        c = int(self.n_components)
        if X.shape[0] < c:
            raise ValueError(f"{self.name}: n_components={c} needs at least {c} training frames, got {X.shape[0]}")
        gen = torch.Generator().manual_seed(int(self.seed))
        mean, scale = standardizer(X)
        Z = (X.double() - mean.double()) / scale.double()
        del X
        sub = Z
        if Z.shape[0] > int(self.max_ubm_frames):
            sub = Z[torch.randperm(Z.shape[0], generator=gen)[: int(self.max_ubm_frames)].sort().values]
        ubm, ubm_history = fit_gmm(sub, c, covariance="diag", n_iter=int(self.ubm_iter),
                                   floor=float(self.var_floor), generator=gen)
        frames = list(Z.split([t.shape[0] for t in checked]))
        zeroth, first = baum_welch(ubm, frames)
        f = whiten_stats(ubm, first)
        tw = train_total_variability(zeroth, f, int(self.ivector_dim), n_iter=int(self.n_iter), generator=gen,
                                     min_divergence=bool(self.min_divergence))
        w = extract_ivectors(tw, zeroth, f)
        centre, whitener = self._whitener(w)
        y = self._post(w, centre, whitener)
        backend, backend_history = fit_gmm(y, k, covariance=self.backend_covariance, n_iter=int(self.backend_iter),
                                           floor=float(self.reg_covar), generator=gen)
        state = {
            "mean_": mean, "scale_": scale,
            "ubm_weights_": ubm.weights, "ubm_means_": ubm.means, "ubm_vars_": ubm.covars,
            "tv_": tw * ubm.covars.sqrt()[:, :, None],  # T itself, in standardised feature units
            "ivector_mean_": centre, "ivector_whitener_": whitener,
            "backend_weights_": backend.weights, "backend_means_": backend.means, "backend_covars_": backend.covars,
        }
        self._set(state, {"dim": int(Z.shape[1]), "n_clips": n_clips, "ubm_frames": int(sub.shape[0]),
                          "ubm_loglik": ubm_history[-1], "backend_loglik": backend_history[-1]})
        return self

    def _whitener(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training mean `[R]` and PCA whitening matrix `[R, R]` of the i-vectors, the covariance ridged."""
        r = w.shape[1]
        cov = torch.cov(w.T, correction=0).reshape(r, r)
        ridge = float(self.reg_covar) * max(float(cov.diagonal().mean()), _TINY)
        evals, evecs = torch.linalg.eigh(cov + ridge * torch.eye(r, dtype=torch.float64))
        return w.mean(dim=0), evecs / evals.sqrt()

    def _post(self, w: torch.Tensor, centre: torch.Tensor, whitener: torch.Tensor) -> torch.Tensor:
        y = (w - centre) @ whitener
        if self.length_norm:
            y = y * (math.sqrt(y.shape[1]) / y.norm(dim=1, keepdim=True).clamp_min(_TINY))
        return y

    def _set(self, state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        """Install a state (from `fit` or a bundle). Contiguous float64 copies: a bundle stores its tensors
        contiguous, and a matmul's rounding depends on memory layout, so fit and load score through identical
        tensors and identical code paths."""
        s = {k: v.detach().double().contiguous() for k, v in state.items()}
        try:
            self.ubm_ = GaussianMixture(s["ubm_weights_"], s["ubm_means_"], s["ubm_vars_"])
            self.backend_ = GaussianMixture(s["backend_weights_"], s["backend_means_"], s["backend_covars_"])
        except (RuntimeError, ValueError) as exc:  # torch.linalg.LinAlgError is a RuntimeError
            raise ValueError(f"{self.name}: invalid mixture in state ({exc})") from None
        self.mean_, self.scale_ = s["mean_"], s["scale_"]
        self.tv_ = s["tv_"]
        self.tv_whitened_ = (self.tv_ / self.ubm_.covars.sqrt()[:, :, None]).contiguous()
        self.ivector_mean_, self.ivector_whitener_ = s["ivector_mean_"], s["ivector_whitener_"]
        self.dim_ = int(self.mean_.shape[0])
        self.info_ = {**info, "dim": self.dim_}

    # -- scoring ----------------------------------------------------------------------------------------------------

    def ivectors(self, clips: ClipsLike) -> torch.Tensor:
        """The whitened (and, with `length_norm`, length-normalised) i-vectors `[U, R]` the backend scores."""
        self._check_fitted()
        checked = check_clips(clips, dim=self.dim_, what=f"{self.name}.score clips")
        return self._ivectors(self._clip_statistics(checked))

    def _clip_statistics(self, checked: list[torch.Tensor]) -> torch.Tensor:
        return self.segment_statistics(torch.cat(checked), [c.shape[0] for c in checked])

    def segment_statistics(self, X: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        """`[S, C + C*D]`: each segment's zeroth-order statistics, then its uncentred first-order ones flattened
        (both sums over frames, so segments add up to windows)."""
        self._check_fitted()
        if X.ndim != 2 or X.shape[1] != self.dim_:
            raise ValueError(f"{self.name}: expected vectors [N, {self.dim_}], got {tuple(X.shape)}")
        Z = (X.detach().cpu().double() - self.mean_) / self.scale_
        zeroth, first = segment_statistics(self.ubm_, Z, lengths)
        return torch.cat([zeroth, first.reshape(first.shape[0], -1)], dim=1)

    def score_statistics(self, sums: torch.Tensor, ids: Sequence[str] | None = None) -> np.ndarray:
        self._check_fitted()
        check_ids(ids, sums.shape[0], self)
        return (-self.backend_.log_likelihood(self._ivectors(sums))).numpy()

    def _ivectors(self, sums: torch.Tensor) -> torch.Tensor:
        c, d = self.ubm_.means.shape
        if sums.ndim != 2 or sums.shape[1] != c * (1 + d):
            raise ValueError(f"{self.name}: expected statistics [U, {c * (1 + d)}], got {tuple(sums.shape)}")
        sums = sums.double()
        zeroth = sums[:, :c]
        first = sums[:, c:].reshape(-1, c, d) - zeroth[:, :, None] * self.ubm_.means
        w = extract_ivectors(self.tv_whitened_, zeroth, whiten_stats(self.ubm_, first))
        return self._post(w, self.ivector_mean_, self.ivector_whitener_)

    def score(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> np.ndarray:
        self._check_fitted()
        checked = check_clips(clips, dim=self.dim_, what=f"{self.name}.score clips")
        check_ids(ids, len(checked), self)
        return self.score_statistics(self._clip_statistics(checked), ids)

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "backend_")

    # -- persistence ------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {
            "mean_": self.mean_, "scale_": self.scale_,
            "ubm_weights_": self.ubm_.weights, "ubm_means_": self.ubm_.means, "ubm_vars_": self.ubm_.covars,
            "tv_": self.tv_, "ivector_mean_": self.ivector_mean_, "ivector_whitener_": self.ivector_whitener_,
            "backend_weights_": self.backend_.weights, "backend_means_": self.backend_.means,
            "backend_covars_": self.backend_.covars,
        }

    def _expected(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The shapes a valid state has, read off its UBM means, T and backend means."""
        c, d = state["ubm_means_"].shape
        r = state["tv_"].shape[2]
        k = state["backend_means_"].shape[0]
        z = torch.zeros
        return {
            "mean_": z(d), "scale_": z(d), "ubm_weights_": z(c), "ubm_means_": z(c, d), "ubm_vars_": z(c, d),
            "tv_": z(c, d, r), "ivector_mean_": z(r), "ivector_whitener_": z(r, r),
            "backend_weights_": z(k), "backend_means_": z(k, r),
            "backend_covars_": z(k, r, r) if self.backend_covariance == "full" else z(k, r),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor], learned: dict[str, Any] | None = None) -> "IvectorGmm":
        if not isinstance(state, dict):
            raise ValueError(f"{self.name}: state must be a dict of tensors, got {type(state).__name__}")
        try:
            expected = self._expected(state)
        except (KeyError, AttributeError, ValueError, IndexError, TypeError) as exc:
            raise ValueError(f"{self.name}: state is missing or misshapes ubm_means_, tv_ or backend_means_ "
                             f"({exc!r})") from None
        check_state(state, expected, self.name)
        self._set(state, dict(learned or {}))
        return self

    def learned(self) -> dict[str, Any]:
        return dict(self.info_) if self.is_fitted else {}
