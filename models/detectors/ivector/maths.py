"""The i-vector maths in float64 torch: Gaussian mixtures trained by EM, Baum-Welch statistics of clips against a
universal background model (UBM), the total-variability matrix T trained by EM, and i-vector extraction.

Notation (C components, D feature dims, R i-vector dims, U clips). The UBM has weights pi_c, means m_c and diagonal
covariances Sigma_c. A clip's zeroth-order statistics are N_c = sum_t gamma_tc and its centred first-order ones
F~_c = sum_t gamma_tc (x_t - m_c), gamma_tc being the UBM posterior of component c for frame t. The total-variability
model (Kenny 2005; Dehak et al. 2011) says a clip's frames come from the UBM with its means moved to m_c + T_c w,
with one latent w ~ N(0, I) per clip. Everything here works in the UBM-whitened space, T~_c = Sigma_c^-1/2 T_c and
f_c = Sigma_c^-1/2 F~_c, where the posterior of w is Gaussian with precision L = I + sum_c N_c T~_c^T T~_c and mean
L^-1 sum_c T~_c^T f_c: that mean is the i-vector.
"""

from __future__ import annotations

import math
from typing import Iterator, Literal, Sequence

import torch

LOG_2PI = math.log(2.0 * math.pi)
_ELEMENTS = 1 << 22  # doubles per intermediate [rows, components(, dims)] block: 32 MiB
_CLIPS = 128  # clips per posterior block in T training: bounds the [clips, R, R] posterior covariances
_INIT_ROWS = 20_000  # rows k-means++ draws from: a seeded subsample places the initial means as well, much faster
_ALIVE = 1e-10  # a component with less posterior mass than this keeps its parameters (no division by ~0)
_SOLVE_RIDGE = 1e-10  # keeps a component no clip visits solvable in the T update (its rows of T become 0)

Covariance = Literal["diag", "full"]


class GaussianMixture:
    """Weights `[K]`, means `[K, D]` and covariances (`[K, D]` diagonal or `[K, D, D]` full), all float64; the
    per-component terms the log-densities need are computed once here, not per call."""

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covars: torch.Tensor) -> None:
        self.weights, self.means, self.covars = weights.double(), means.double(), covars.double()
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.covars.shape not in ((k, d), (k, d, d)):
            raise ValueError(f"mixture shapes do not agree: weights {tuple(self.weights.shape)}, means {(k, d)}, "
                             f"covariances {tuple(self.covars.shape)}")
        finite = all(bool(torch.isfinite(t).all()) for t in (self.weights, self.means, self.covars))
        if not finite or bool((self.weights < 0).any()) or (not self.full and bool((self.covars <= 0).any())):
            raise ValueError("mixture parameters must be finite, with weights >= 0 and variances > 0")
        if self.full:
            self._chol = torch.linalg.cholesky(self.covars)
            per_component = 2.0 * self._chol.diagonal(dim1=1, dim2=2).log().sum(dim=1)  # log det S_k
        else:  # log det S_k and the m_k^T S_k^-1 m_k term of the expanded quadratic form
            self._prec = self.covars.reciprocal()
            self._mean_prec = self.means * self._prec
            per_component = self.covars.log().sum(dim=1) + (self.means * self._mean_prec).sum(dim=1)
        self._const = self.weights.log() - 0.5 * (per_component + d * LOG_2PI)

    @property
    def full(self) -> bool:
        return self.covars.ndim == 3

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    def log_joint(self, X: torch.Tensor) -> torch.Tensor:
        """`[N, K]`: log pi_k + log N(x | m_k, S_k) for float64 rows `[N, D]`."""
        if self.full:
            diff = (X[None, :, :] - self.means[:, None, :]).transpose(1, 2)  # [K, D, N]
            quad = torch.linalg.solve_triangular(self._chol, diff, upper=False).square().sum(dim=1).T
        else:  # the expanded quadratic form: two matmuls instead of a [N, K, D] difference tensor
            quad = (X * X) @ self._prec.T - 2.0 * (X @ self._mean_prec.T)
        return self._const - 0.5 * quad

    def log_likelihood(self, X: torch.Tensor) -> torch.Tensor:
        """`[N]`: log p(x) of each row."""
        return torch.cat([torch.logsumexp(self.log_joint(part), dim=1) for part in self.row_blocks(X)])

    def row_blocks(self, X: torch.Tensor) -> Iterator[torch.Tensor]:
        """Row blocks of X whose intermediates stay within `_ELEMENTS` doubles."""
        per_row = self.n_components * (self.means.shape[1] if self.full else 1)
        return iter(X.split(max(1, _ELEMENTS // per_row)))


# -- Gaussian mixtures by EM ----------------------------------------------------------------------------------------


def kmeans_plus_plus(X: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """`k` initial means drawn by k-means++ (Arthur & Vassilvitskii 2007): each next one with probability
    proportional to its squared distance from the nearest chosen so far, so far-apart clusters all get one."""
    n = X.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [X[first]]
    d2 = (X - X[first]).square().sum(dim=1)
    for _ in range(1, k):
        total = float(d2.sum())
        if total > 0.0:
            idx = int(torch.multinomial(d2 / total, 1, generator=generator))
        else:  # every row coincides with a chosen mean
            idx = int(torch.randint(n, (1,), generator=generator))
        centres.append(X[idx])
        d2 = torch.minimum(d2, (X - X[idx]).square().sum(dim=1))
    return torch.stack(centres)


def fit_gmm(X: torch.Tensor, n_components: int, *, covariance: Covariance = "diag", n_iter: int = 20,
            floor: float = 1e-3, generator: torch.Generator | None = None) -> tuple[GaussianMixture, list[float]]:
    """Maximum-likelihood mixture of float64 rows `[N, D]` by EM from a k-means++ start (weights equal,
    covariances the data's). `floor`: diagonal covariances are floored at it (the constrained M-step, so the
    likelihood still never decreases); full ones get it added to their diagonal (a ridge that keeps them
    invertible). Returns the mixture and the mean log-likelihood per row before each M-step and after the last.
    """
    if covariance not in ("diag", "full"):
        raise ValueError(f"covariance must be 'diag' or 'full', got {covariance!r}")
    X = X.double()
    n, d = X.shape
    if n < n_components:
        raise ValueError(f"{n_components} mixture components need at least as many rows, got {n}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    seeds = X if n <= _INIT_ROWS else X[torch.randperm(n, generator=gen)[:_INIT_ROWS]]
    means = kmeans_plus_plus(seeds, n_components, gen)
    if covariance == "diag":
        covars = X.var(dim=0, correction=0).clamp_min(floor).expand(n_components, d).clone()
    else:
        cov = torch.cov(X.T, correction=0).reshape(d, d) + floor * torch.eye(d, dtype=torch.float64)
        covars = cov.expand(n_components, d, d).clone()
    gmm = GaussianMixture(torch.full((n_components,), 1.0 / n_components, dtype=torch.float64), means, covars)
    history = []
    for _ in range(n_iter):
        counts, first, second, total = _accumulate(gmm, X)
        history.append(total / n)
        gmm = _maximise(gmm, counts, first, second, n, floor)
    history.append(float(gmm.log_likelihood(X).sum()) / n)
    return gmm, history


def _accumulate(gmm: GaussianMixture, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """E-step: posterior counts `[K]`, first moments `[K, D]`, second moments (`[K, D]` or `[K, D, D]`) and the
    total log-likelihood, accumulated over row blocks."""
    k, d = gmm.means.shape
    counts = torch.zeros(k, dtype=torch.float64)
    first = torch.zeros(k, d, dtype=torch.float64)
    second = torch.zeros(gmm.covars.shape, dtype=torch.float64)
    total = 0.0
    for part in gmm.row_blocks(X):
        log_joint = gmm.log_joint(part)
        log_px = torch.logsumexp(log_joint, dim=1)
        resp = (log_joint - log_px[:, None]).exp()  # responsibilities from the log domain: no underflow to 0/0
        total += float(log_px.sum())
        counts += resp.sum(dim=0)
        first += resp.T @ part
        if gmm.full:
            second += torch.einsum("nk,nd,ne->kde", resp, part, part)
        else:
            second += resp.T @ (part * part)
    return counts, first, second, total


def _maximise(gmm: GaussianMixture, counts: torch.Tensor, first: torch.Tensor, second: torch.Tensor, n: int,
              floor: float) -> GaussianMixture:
    """M-step from the accumulated moments; a component that lost all its mass keeps its means and covariances."""
    alive = counts > _ALIVE
    safe = counts.clamp_min(_ALIVE)
    means = torch.where(alive[:, None], first / safe[:, None], gmm.means)
    if gmm.full:
        cov = second / safe[:, None, None] - means[:, :, None] * means[:, None, :]
        cov = 0.5 * (cov + cov.transpose(1, 2)) + floor * torch.eye(means.shape[1], dtype=torch.float64)
        covars = torch.where(alive[:, None, None], cov, gmm.covars)
    else:
        covars = torch.where(alive[:, None], (second / safe[:, None] - means.square()).clamp_min(floor), gmm.covars)
    return GaussianMixture(counts / n, means, covars)


# -- Baum-Welch statistics ------------------------------------------------------------------------------------------


def baum_welch(ubm: GaussianMixture, clips: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroth-order `[U, C]` and centred first-order `[U, C, D]` statistics of each float64 clip `[T_i, D]`."""
    lengths = [int(c.shape[0]) for c in clips]
    X = torch.cat(list(clips)) if clips else torch.zeros(0, ubm.means.shape[1], dtype=torch.float64)
    zeroth, first = segment_statistics(ubm, X, lengths)
    return zeroth, first - zeroth[:, :, None] * ubm.means


def segment_statistics(ubm: GaussianMixture, X: torch.Tensor,
                       lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroth-order `[S, C]` and uncentred first-order `[S, C, D]` statistics (sum_t gamma_tc, sum_t gamma_tc x_t)
    of consecutive segments of the float64 rows `X`, `lengths[s]` rows each.

    Both are sums over frames, so the statistics of a window are the sums of its segments' (the stream scorer's
    `statistics` mode keeps per-hop segment sums instead of every frame of the window). Segments go in groups
    whose padded [segments, rows, components] responsibilities fit in `_ELEMENTS`, one batched matmul per group;
    padding rows get zero responsibility, so a segment's statistics do not depend on its group.
    """
    c, d = ubm.means.shape
    if sum(lengths) != X.shape[0]:
        raise ValueError(f"segment lengths sum to {sum(lengths)}, not the {X.shape[0]} rows given")
    zeroth, first = [torch.zeros(0, c, dtype=torch.float64)], [torch.zeros(0, c, d, dtype=torch.float64)]
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + int(n))
    for lo, hi in _segment_groups(lengths, c):
        rows = X[offsets[lo] : offsets[hi]]
        resp = torch.softmax(ubm.log_joint(rows), dim=1)
        parts = torch.tensor(lengths[lo:hi])
        longest = int(parts.max())
        if bool((parts == longest).all()):  # equal lengths (offline windows): a reshape, no padding
            r, x = resp.reshape(hi - lo, longest, c), rows.reshape(hi - lo, longest, d)
        else:  # rows gathered into [segments, longest]; padding rows get zero responsibility
            starts = torch.tensor(offsets[lo:hi]) - offsets[lo]
            step = torch.arange(longest)
            index = (starts[:, None] + step).clamp_max_(rows.shape[0] - 1)
            r = resp[index] * (step < parts[:, None]).unsqueeze(2)
            x = rows[index]
        zeroth.append(r.sum(dim=1))
        first.append(r.transpose(1, 2) @ x)
    return torch.cat(zeroth), torch.cat(first)


def _segment_groups(lengths: Sequence[int], n_components: int) -> Iterator[tuple[int, int]]:
    """`(start, stop)` ranges of consecutive segments whose padded [segments, rows, components] responsibilities
    fit in `_ELEMENTS` (a segment longer than that is a group of its own)."""
    start, longest = 0, 0
    for i, n in enumerate(lengths):
        longest_with = max(longest, int(n))
        if i > start and (i - start + 1) * longest_with * n_components > _ELEMENTS:
            yield start, i
            start, longest_with = i, int(n)
        longest = longest_with
    if start < len(lengths):
        yield start, len(lengths)


def whiten_stats(ubm: GaussianMixture, first: torch.Tensor) -> torch.Tensor:
    """f_c = Sigma_c^-1/2 F~_c: centred first-order statistics in the UBM-whitened space."""
    if ubm.full:
        raise ValueError("i-vector statistics need a diagonal-covariance UBM")
    return first / ubm.covars.sqrt()


# -- the total-variability model ------------------------------------------------------------------------------------


def _posterior(tw: torch.Tensor, zeroth: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cholesky factor of each clip's posterior precision L `[U, R, R]` and its linear term `[U, R]`."""
    c, d, r = tw.shape
    gram = torch.einsum("cdr,cds->crs", tw, tw).reshape(c, r * r)  # T~_c^T T~_c, once for all clips
    precision = (zeroth @ gram).reshape(-1, r, r) + torch.eye(r, dtype=torch.float64)
    return torch.linalg.cholesky(precision), f.reshape(-1, c * d) @ tw.reshape(c * d, r)


def extract_ivectors(tw: torch.Tensor, zeroth: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Posterior means `[U, R]` of w given whitened T~ `[C, D, R]` and statistics `[U, C]`, `[U, C, D]`."""
    out = []
    for s in range(0, zeroth.shape[0], _CLIPS):
        chol, linear = _posterior(tw, zeroth[s : s + _CLIPS], f[s : s + _CLIPS])
        out.append(torch.cholesky_solve(linear[:, :, None], chol)[:, :, 0])
    return torch.cat(out) if out else torch.zeros(0, tw.shape[2], dtype=torch.float64)


def train_total_variability(zeroth: torch.Tensor, f: torch.Tensor, rank: int, *, n_iter: int = 10,
                            generator: torch.Generator | None = None,
                            min_divergence: bool = True) -> torch.Tensor:
    """Whitened T~ `[C, D, rank]` by EM on clip statistics `[U, C]` and whitened `[U, C, D]`, from a random start.

    E-step per clip: L = I + sum_c N_c T~_c^T T~_c, E[w] = L^-1 T~^T f, E[w w^T] = L^-1 + E[w] E[w]^T.
    M-step per component: T~_c = (sum_u f_c E[w]^T) (sum_u N_c E[w w^T])^-1.
    Minimum divergence (Brümmer; Kenny 2008), optional: with H = mean_u E[w w^T] = G G^T, T~ <- T~ G, which moves
    the prior of w back to N(0, I) without changing T w and speeds up convergence.
    """
    u, c, d = f.shape
    if not 1 <= rank <= c * d:
        raise ValueError(f"the i-vector dimension must be in [1, {c * d}] (components x feature dims), got {rank}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    # unit-variance supervector offsets a priori, the scale of the whitened within-component noise
    tw = torch.randn(c, d, rank, generator=gen, dtype=torch.float64) / math.sqrt(rank)
    eye = torch.eye(rank, dtype=torch.float64)
    for _ in range(n_iter):
        a = torch.zeros(c, rank * rank, dtype=torch.float64)
        cross = torch.zeros(c * d, rank, dtype=torch.float64)
        second = torch.zeros(rank, rank, dtype=torch.float64)
        for s in range(0, u, _CLIPS):
            n_part, f_part = zeroth[s : s + _CLIPS], f[s : s + _CLIPS]
            chol, linear = _posterior(tw, n_part, f_part)
            # L^-1 = G^-T G^-1 from the triangular inverse (torch's batched cholesky_inverse is ~40x slower on CPU)
            inv_chol = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
            cov = inv_chol.transpose(1, 2) @ inv_chol
            w = (cov @ linear[:, :, None])[:, :, 0]
            moment = cov + w[:, :, None] * w[:, None, :]
            a += n_part.T @ moment.reshape(-1, rank * rank)
            cross += f_part.reshape(-1, c * d).T @ w
            second += moment.sum(dim=0)
        a = a.reshape(c, rank, rank) + _SOLVE_RIDGE * eye
        tw = torch.linalg.solve(a, cross.reshape(c, d, rank).transpose(1, 2).contiguous()).transpose(1, 2)
        if min_divergence:
            tw = tw @ torch.linalg.cholesky(second / u)
    return tw
