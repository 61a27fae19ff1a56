"""The detector contract (scikit-learn conventions) and the input checks every detector and stage shares.

A detector is trained on normal clips only and gives each clip a score, higher = more anomalous. Hyper-parameters
live in `__init__` and nowhere else, so `cls(**get_params())` rebuilds an unfitted twin (that is how a bundle is
loaded); what `fit` learns ends in `_`, and the part a bundle must carry is a flat `dict[str, Tensor]`
(`state_dict`) plus JSON-safe `learned()` metadata, so loading never needs pickle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Literal, Sequence

import numpy as np
import torch

from models.registry import HyperParams, Registry

_STD_FLOOR = 1e-6  # a constant input dimension gets scale 1 instead of a division by ~0

Granularity = Literal["vector", "window", "causal"]  # causal: stages only (the mel denoiser)


class NotFittedError(ValueError, AttributeError):
    """`score` (or `state_dict`) called before `fit`/`load_state_dict`; subclasses both, as scikit-learn's does."""


ClipsLike = Sequence["torch.Tensor | np.ndarray"]

# name -> class; filled by `@register` as `models.detectors` imports each detector module.
REGISTRY = Registry("detector")
register = REGISTRY.register


@dataclass(frozen=True)
class ExampleInput:
    """The shape of data a detector's generic tests feed it: clips of `n_vectors` vectors of `dim` values, and
    `n_ids` machine ids when the detector conditions on them (0: none). `scores`: the values are other detectors'
    anomaly scores (a detector over detectors), so anomalies are high values of some of them. `anomaly`: how the
    anomalous clips differ: `structure` (the normal data's correlations broken, every dimension's mean and variance
    kept) or `other_id` (a clip that sounds like another machine id than its own: what a classifier of ids
    detects). `id_offset`: how the ids' data differ: `level` (one constant added to every value) or `shape` (a
    constant per dimension that sums to 0: what a level-normalised model can still see)."""

    dim: int = 40
    n_vectors: int = 60
    n_ids: int = 0
    scores: bool = False
    anomaly: Literal["structure", "other_id"] = "structure"
    id_offset: Literal["level", "shape"] = "level"


class Learned(HyperParams, ABC):
    """What detectors and stages share: hyper-parameters, `fit`, and learned state that a bundle carries as a flat
    dict of tensors (`state_dict`) plus JSON-safe metadata (`learned`, e.g. a chosen component count)."""

    granularity: ClassVar[Granularity] = "vector"

    @property
    @abstractmethod
    def is_fitted(self) -> bool:
        """True once `fit` or `load_state_dict` has run."""

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything `fit` learned that scoring needs, as a flat dict of tensors."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor], learned: dict[str, Any] | None = None) -> Any:
        """Restore a fitted object from `state_dict()` (and `learned()`); ValueError on missing/extra keys or wrong
        shapes."""

    def learned(self) -> dict[str, Any]:
        """JSON-safe learned metadata for the bundle's `learned` block (default: none)."""
        return {}

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"{self.name} is not fitted: call fit() or load it from a bundle first")


class Detector(Learned):
    """Base class: subclasses set `name`, declare hyper-parameters as explicit `__init__` keywords, and implement
    `fit`, `is_fitted`, `state_dict`, `load_state_dict` and, by granularity:

    - `vector`: `score_vectors(X, ids)`, one score per vector; a clip's (window's) score is the mean of its
      vectors' scores, so the monitor scores each vector once however much windows overlap (`score` is derived);
    - `window`: `score(clips, ids)`, one score from each whole `[T, dim]` matrix.
    """

    name: ClassVar[str]
    # "detector" (higher = more anomalous), "classifier" or "denoiser": what the bundle holding it is
    bundle_kind: ClassVar[str] = "detector"
    # True when scores depend on the machine id (classifiers of ids, per-id models): `ids` are then required
    needs_ids: ClassVar[bool] = False
    # Feature config (the JSON form `models.features.feature_from_dict` takes) this system was designed for; training
    # uses it when the config file does not say otherwise.
    default_feature: ClassVar[dict[str, Any]] = {}
    # Hyper-parameters that make a fit take well under a second on a few thousand vectors: tests and the demo use
    # them so that every registered detector can be exercised the same way.
    quick_params: ClassVar[dict[str, Any]] = {}
    # Settings of `default_feature` that `quick_params` need changed (AEGAN-AD's square patches: n_mels = isize)
    quick_feature: ClassVar[dict[str, Any]] = {}
    # The feature kinds it can take (None: any): a network built around one kind's layout (STgram-MFN's log-mel
    # plus raw frames) refuses another before any data is read
    feature_kinds: ClassVar[tuple[str, ...] | None] = None
    # True for a detector over detectors (the ensemble): its inputs are member systems' scores, and training builds
    # the member bundles first
    combines_members: ClassVar[bool] = False
    # True for a window detector whose score depends on a window only through the sum of per-vector statistics
    # (the i-vector's Baum-Welch statistics): it implements `segment_statistics` and `score_statistics`, and the
    # stream scorer computes each vector's statistics once and a window's sum from its hops' sums (`statistics`
    # mode) instead of re-reading the window's W vectors every hop
    additive: ClassVar[bool] = False
    # True for a detector that learns a representation, self-supervised, from unlabeled clips (any ids, any types)
    # before `fit` (`ssl_knn`): it implements `pretrain(clips)`, and training passes it the user's unlabeled audio
    pretrains: ClassVar[bool] = False

    @classmethod
    def example_input(cls) -> ExampleInput:
        """The data shape the registry-parametrized tests generate for this detector."""
        return ExampleInput()

    @classmethod
    def iterative(cls) -> bool:
        """Trained for a number of epochs (`asd-offline train --epochs` applies)."""
        return "epochs" in cls.param_names()

    # -- the work ---------------------------------------------------------------------------------------------------

    @abstractmethod
    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "Detector":
        """Learn from normal clips, each `[n_vectors, dim]` (with their machine ids); returns self."""

    def learns_other_types(self) -> bool:
        """True for a classifier of machine ids configured to learn the normal clips of other machine types too
        (its `across_types` hyper-parameter, which such a detector takes): training then passes it those clips as
        extra classes, their ids `<type>/<id>`, as outliers of its own ids. Its bundle still serves its own type's
        ids only."""
        return bool(self.get_params().get("across_types", False))

    def pretrain(self, clips: ClipsLike) -> "Detector":
        """Detectors with `pretrains`: learn from unlabeled clips (no ids, no labels) before `fit`; returns self."""
        raise NotImplementedError(f"{self.name} does not pre-train on unlabeled audio")

    def score(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> np.ndarray:
        """One float64 score per clip, higher = more anomalous. Vector detectors: the mean of the vector scores."""
        if self.granularity != "vector":
            raise NotImplementedError(f"{self.name}: window-level detectors implement score()")
        self._check_fitted()
        checked = check_clips(clips, dim=self.input_dim, what=f"{self.name}.score clips")
        lengths = [c.shape[0] for c in checked]
        clip_ids = check_ids(ids, len(checked), self)
        row_ids = None if clip_ids is None else [i for i, n in zip(clip_ids, lengths) for _ in range(n)]
        return split_scores(self.score_vectors(torch.cat(checked), row_ids), lengths)

    def score_vectors(self, X: torch.Tensor, ids: Sequence[str] | None = None) -> torch.Tensor:
        """Per-vector scores `[N]` (CPU float32) whose mean over a clip is its `score`; vector detectors only."""
        raise NotImplementedError(f"{self.name} scores whole windows: use score()")

    def segment_statistics(self, X: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        """Additive detectors: the float64 statistics `[S, n_stats]` of consecutive segments of the vectors `X`
        (`lengths[s]` rows each); the statistics of rows a..c are those of a..b plus those of b..c."""
        raise NotImplementedError(f"{self.name} has no additive statistics")

    def score_statistics(self, sums: torch.Tensor, ids: Sequence[str] | None = None) -> np.ndarray:
        """Additive detectors: one score per row of summed `segment_statistics`, each row a whole window's."""
        raise NotImplementedError(f"{self.name} has no additive statistics")

    def check_feature(self, feature: Any) -> None:
        """Refuse (ValueError) a feature config this detector cannot take, before any data is read: a kind not in
        `feature_kinds`; subclasses add settings their network must agree with."""
        if self.feature_kinds is not None and feature.kind not in self.feature_kinds:
            raise ValueError(f"{self.name} takes the feature kind(s) {list(self.feature_kinds)}, not {feature.kind!r}")

    @property
    def input_dim(self) -> int | None:
        """The vector length the fitted detector takes (None before fitting)."""
        return getattr(self, "dim_", None)


# -- input checks shared by every detector --------------------------------------------------------------------------


def check_clips(clips: ClipsLike, *, dim: int | None = None, what: str = "clips") -> list[torch.Tensor]:
    """Validate a list of `[n_i, dim]` feature matrices and return them as CPU float32 tensors.

    Every clip must have at least one vector: a clip too short for one context window has no score, and silently
    dropping it would shift the clip/score alignment the caller relies on.
    """
    if isinstance(clips, (torch.Tensor, np.ndarray)):
        raise ValueError(f"{what}: expected a list of [n_vectors, dim] matrices, got one {type(clips).__name__}")
    if len(clips) == 0:
        raise ValueError(f"{what}: empty list (need at least one clip)")
    out: list[torch.Tensor] = []
    for i, c in enumerate(clips):
        t = torch.as_tensor(c).detach()
        if t.ndim != 2:
            raise ValueError(f"{what}[{i}]: expected a [n_vectors, dim] matrix, got shape {tuple(t.shape)}")
        if t.shape[0] == 0:
            raise ValueError(f"{what}[{i}]: no feature vectors (clip shorter than one analysis window?)")
        if not torch.is_floating_point(t):
            raise ValueError(f"{what}[{i}]: expected floating-point features, got {t.dtype}")
        want = dim if dim is not None else out[0].shape[1] if out else t.shape[1]
        if t.shape[1] != want:
            source = "the fitted dimension" if dim is not None else f"{what}[0]"
            raise ValueError(f"{what}[{i}]: vectors have dim {t.shape[1]}, expected {want} ({source})")
        t = t.to(device="cpu", dtype=torch.float32)
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{what}[{i}]: {bad} NaN/inf feature values")
        out.append(t)
    return out


def check_ids(ids: Sequence[str] | None, n: int, owner: Any) -> list[str] | None:
    """One machine id per clip (or row); None is refused when the owner conditions on ids."""
    if ids is None:
        if getattr(owner, "needs_ids", False):
            raise ValueError(f"{owner.name} scores per machine id: pass one id per clip")
        return None
    ids = [str(i) for i in ids]
    if len(ids) != n:
        raise ValueError(f"{owner.name}: {len(ids)} ids for {n} clips")
    return ids


def check_vectors(X: torch.Tensor | np.ndarray, dim: int) -> torch.Tensor:
    """Validate one `[N, dim]` block (the monitor's path), returning it as float32 on its own device."""
    t = torch.as_tensor(X).detach()
    if t.ndim != 2 or t.shape[1] != dim:
        raise ValueError(f"expected vectors of shape [N, {dim}], got {tuple(t.shape)}")
    t = t.float()
    # the sum carries any NaN/inf into its result without a [N, dim] mask (a fit's worth of vectors is ~1 GB); only
    # when it is not finite (which huge finite values can also cause) is the exact count needed
    if not torch.isfinite(t.sum()):
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ValueError(f"{bad} NaN/inf feature values")
    return t


def standardizer(X: torch.Tensor, chunk: int = 65536, shrinkage: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of training vectors.

    Two passes over row chunks accumulated in float64: millions of float32 rows summed at once drift, and a float64
    copy of the whole matrix would double the peak memory of a fit.

    `shrinkage` (>= 0) pulls each dimension's variance towards the mean variance over all dimensions with the weight
    of that many extra vectors: `(n var_d + s mean(var)) / (n + s)`. From a handful of vectors the per-dimension
    variances are mostly chance (two vectors that happen to agree on a dimension give it a tiny scale, and that
    dimension then dominates every distance); with many vectors the pull fades. It suits dimensions in one unit (dB).
    """
    n = X.shape[0]
    total = torch.zeros(X.shape[1], dtype=torch.float64)
    for part in X.split(chunk):
        total += part.double().sum(dim=0)
    mean = total / n
    sq = torch.zeros_like(total)
    for part in X.split(chunk):
        sq += (part.double() - mean).square().sum(dim=0)
    var = sq / n
    if shrinkage > 0:
        var = (n * var + shrinkage * var.mean()) / (n + shrinkage)
    std = var.sqrt()
    scale = torch.where(std > _STD_FLOOR, std, torch.ones_like(std))
    return mean.float(), scale.float()


def check_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], owner: str) -> None:
    """Compare a state dict with the one a freshly built model has: same keys, same shapes, tensors only."""
    if not isinstance(state, dict):
        raise ValueError(f"{owner}: state must be a dict of tensors, got {type(state).__name__}")
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"{owner}: state keys do not match the model: missing {missing}, unexpected {extra}")
    for k, ref in expected.items():
        v = state[k]
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{owner}: state[{k!r}] is a {type(v).__name__}, not a tensor")
        if tuple(v.shape) != tuple(ref.shape):
            raise ValueError(f"{owner}: state[{k!r}] has shape {tuple(v.shape)}, model expects {tuple(ref.shape)}")


ROW_CHUNK = 65536  # rows per forward pass of a network when scoring: bounds activation memory for long inputs


@torch.no_grad()
def per_row_chunks(fn: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, device: torch.device,
                   chunk: int = ROW_CHUNK) -> torch.Tensor:
    """`fn` (one value per row, e.g. a network's reconstruction error) over `X` in chunks of rows moved to
    `device`; the values come back on the CPU, `[N]`."""
    out = [fn(X[s : s + chunk].to(device, non_blocking=True)).cpu() for s in range(0, X.shape[0], chunk)]
    return torch.cat(out) if out else torch.zeros(0)


def crop_starts(n_frames: int, frames: int, hop: int | None = None) -> list[int]:
    """Starts of the fixed-length crops that cover a window of `n_frames` vectors for a network built for `frames`
    (`stgram_mfn`, `anomaly_transformer`, `aegan_ad`): every `hop` (default: `frames`, non-overlapping) from 0,
    plus one ending at the window's end when the last regular one stops short of it."""
    hop = frames if hop is None else hop
    if n_frames < frames:
        raise ValueError(f"a window of {n_frames} frames is shorter than the model's crop of {frames}")
    if hop < 1:
        raise ValueError(f"the crop hop must be >= 1 frames, got {hop}")
    starts = list(range(0, n_frames - frames + 1, hop))
    if starts[-1] + frames < n_frames:
        starts.append(n_frames - frames)
    return starts


def crops_of(clips: Sequence[torch.Tensor], frames: int, hop: int | None = None
             ) -> tuple[list[torch.Tensor], list[int]]:
    """Every clip's fixed-length crops (`crop_starts`), in clip order, and how many each clip gave: what the crop
    models score, before `split_scores(per_crop, counts)` averages them back per clip."""
    crops: list[torch.Tensor] = []
    counts: list[int] = []
    for clip in clips:
        starts = crop_starts(clip.shape[0], frames, hop)
        crops += [clip[s : s + frames] for s in starts]
        counts.append(len(starts))
    return crops, counts


def split_scores(per_vector: torch.Tensor, lengths: Iterable[int]) -> np.ndarray:
    """Mean of per-vector scores within each clip: the clip score of a frame-level detector."""
    parts = torch.split(per_vector.double(), list(lengths))
    return np.array([float(p.mean()) for p in parts], dtype=np.float64)
