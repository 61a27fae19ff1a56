"""A machine-id classifier for the few-normals regime (issue #13): a light version of the idea behind the
strongest DCASE 2020 systems (Primus et al. 2020; STgram-MFN): learn to tell a machine type's ids apart from
their normal clips, and call a clip anomalous when it does not sound like its own id. The other ids of the type
act as the outliers each id is told apart from. STgram-MFN's deep network is at chance with a handful of clips;
this one is a linear model on fixed embeddings, fitted in seconds on the CPU from a few clips per id.

The design below was fixed before any benchmark result was seen, and no setting was chosen on test data.

Embedding. The same segment embeddings as `embed_knn` (`models.detectors._segments`): a window's 128-band log-mel
frames are cut into segments of `segment_frames` frames (32 = 1.06 s at the default feature) every `segment_hop`
(16) frames plus one aligned to the window's end; a segment's embedding is each band's mean and standard deviation
over its frames (256 values), after subtracting the segment's mean dB (`level_norm`, default true: a gain change
of the clip changes nothing). Each embedding dimension is standardised with the mean and std of the training
segments of all ids (learned state). Training clips are cut every `train_hop` (4) frames: 71 segments per 10 s
clip, so the few clips give the classifier more (strongly overlapping) examples.

Model. Multinomial logistic regression with an L2 penalty (`C`, default 1.0, scikit-learn's convention: the
inverse strength against the loss summed over the training segments) over the machine ids present in `fit`: one
model per machine type across its ids (`needs_ids`). Ids weigh alike whatever their number of clips
(`balanced`, default true: scikit-learn's `class_weight="balanced"`), so an id with fewer clips is not a less
likely class and its normal clips do not score higher for that alone. scikit-learn (lbfgs, up to `max_iter`
iterations; one that stops there is logged) fits; what is exported is plain arrays: the standardisation
(`mean_`, `scale_`), the coefficients `coef_` `[n_ids, 2 * n_mels]` and intercepts `intercept_` `[n_ids]` in
float64, the ids in `learned()`. With two ids scikit-learn fits the binary model `p(id 1) = sigmoid(z)`, stored
as the two rows `[0, z]`, whose softmax is the same probability. Scoring is torch from these arrays, no pickle.

Score (higher = more anomalous). For every segment of a window, the surprise at the window's machine id,
`-log p(own id | segment)`, from the softmax of the logits; the window's score is the mean over its segments. It
is computed as `log(1 + sum over the other ids c of exp(logit_c - logit_own))`, which equals it exactly and keeps
segments the classifier is sure about ordered (a naive log-softmax rounds them all to 0). For a window whose id
was not among the trained ids the surprise is taken at the most likely id, `-log max_c p(c | segment)` (the same
formula with the arg-max in place of the own id): how unlike every known machine the segment sounds. The id
itself must be given (`needs_ids`: `score` without ids is a ValueError, and the monitor refuses a source without
one); bundles refuse an id that was not trained (`Bundle.check_machine_id`), so the fallback serves direct calls
and cross-fitting, where a fold may lack an id. Each segment is scored on its own, so a window's score does not
depend on the rest of its batch, and streaming equals offline. Windows shorter than one segment cannot be scored.

Fewer than 2 ids in `fit` is a ValueError: there is nothing to tell apart; `embed_knn` serves a single machine.
With `across_types` (default false, added after the benchmark results above were known) training also passes the
normal clips of every other machine type in the data as extra classes (`<type>/<id>`), so one machine of a type
is told apart from the user's other machines; the bundle serves its own type's ids only.

What it does not see: a fault that moves a clip further from the other ids (or along a direction the ids do not
differ in) leaves p(own id) high, so it complements a distance-based detector rather than replacing it.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Sequence

import numpy as np
import torch

from models.detectors._segments import QUICK_SEGMENTS, SEGMENT_FRAMES, SEGMENT_HOP, TRAIN_HOP, SegmentDetector
from models.detectors.base import (
    ClipsLike,
    ExampleInput,
    check_clips,
    check_ids,
    check_state,
    register,
    split_scores,
    standardizer,
)

log = logging.getLogger(__name__)


def surprise(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`-log softmax(logits)[row, target[row]]` per row, computed as `log(1 + sum_{c != target} exp(l_c - l_t))`,
    exact for segments the model is sure about (where the log-softmax rounds to 0)."""
    diff = logits - logits.gather(1, target[:, None])
    diff = diff.scatter(1, target[:, None], float("-inf"))
    return torch.nn.functional.softplus(torch.logsumexp(diff, dim=1))


@register
class IdClassifier(SegmentDetector):
    """Mean over a window's segments of -log p(own machine id) from a logistic regression over the type's ids on
    segment embeddings (the most likely id's when the window's id was not trained)."""

    name = "id_classifier"
    needs_ids = True
    quick_params = {**QUICK_SEGMENTS, "train_hop": 2}
    int_params = ("segment_frames", "segment_hop", "train_hop", "max_iter")

    def __init__(self, segment_frames: int = SEGMENT_FRAMES, segment_hop: int = SEGMENT_HOP,
                 train_hop: int = TRAIN_HOP, C: float = 1.0, balanced: bool = True, max_iter: int = 1000,
                 level_norm: bool = True, across_types: bool = False) -> None:
        self.segment_frames = segment_frames
        self.segment_hop = segment_hop
        self.train_hop = train_hop
        self.C = C
        self.balanced = balanced
        self.max_iter = max_iter
        self.level_norm = level_norm
        self.across_types = across_types

    @classmethod
    def example_input(cls) -> ExampleInput:
        # three ids (the multinomial model; two are the binary one); an anomaly sounds like another id; ids that
        # differ in level only are one id after level_norm
        return ExampleInput(dim=40, n_vectors=60, n_ids=3, anomaly="other_id", id_offset="shape")

    def _check_params(self) -> None:
        super()._check_params()
        if isinstance(self.C, bool) or not isinstance(self.C, (int, float)) or not float(self.C) > 0:
            raise ValueError(f"{self.name}: C (the inverse L2 strength) must be a positive number, got {self.C!r}")
        for key in ("balanced", "across_types"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{self.name}: {key} must be true or false, got {getattr(self, key)!r}")

    # -- fit ---------------------------------------------------------------------------------------------------------

    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "IdClassifier":
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        self._check_params()
        checked = check_clips(clips, what=f"{self.name}.fit clips")
        clip_ids = check_ids(ids, len(checked), self)
        assert clip_ids is not None  # needs_ids: check_ids refused None
        names = sorted(set(clip_ids))
        if len(names) < 2:
            raise ValueError(f"{self.name} learns to tell the machine ids of a type apart (the other ids act as "
                             f"outliers): it needs clips of at least 2 machine ids of the type, got only {names}; "
                             f"for a single machine use embed_knn, or across_types: true to tell it apart from the "
                             f"other machine types")
        embs = self._embed(checked, int(self.train_hop), f"{self.name}.fit clips")
        E = torch.cat(embs)
        mean, scale = standardizer(E)
        Z = ((E - mean.double()) / scale.double()).numpy()
        index = {n: j for j, n in enumerate(names)}
        y = np.repeat([index[i] for i in clip_ids], [e.shape[0] for e in embs])
        model = LogisticRegression(C=float(self.C), max_iter=int(self.max_iter),
                                   class_weight="balanced" if self.balanced else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # said once below, in the log
            model.fit(Z, y)
        n_iter = int(np.max(model.n_iter_))
        if n_iter >= int(self.max_iter):
            log.warning("%s: lbfgs stopped at max_iter=%d before converging (%d ids, %d segments); raise max_iter",
                        self.name, n_iter, len(names), Z.shape[0])
        coef, intercept = model.coef_, model.intercept_
        if coef.shape[0] == 1:  # two ids: the binary model, p(id 1) = sigmoid(z) = softmax([0, z])[1]
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
        self._set(mean, scale, torch.from_numpy(coef).double(), torch.from_numpy(intercept).double(), names, n_iter)
        return self

    def _set(self, mean: torch.Tensor, scale: torch.Tensor, coef: torch.Tensor, intercept: torch.Tensor,
             names: list[str], n_iter: int | None) -> None:
        self.mean_, self.scale_ = mean.float(), scale.float()
        # contiguous: scikit-learn's may be column-major, and another memory layout is another summation order
        self.coef_, self.intercept_ = coef.double().contiguous(), intercept.double().contiguous()
        self.ids_ = list(names)
        self.dim_ = coef.shape[1] // 2
        self.n_iter_ = n_iter

    # -- score -------------------------------------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "coef_")

    def _logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        Z = (embeddings.double() - self.mean_.double()) / self.scale_.double()
        return Z @ self.coef_.T + self.intercept_

    def score(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> np.ndarray:
        """Mean over each window's segments of -log p(own id); -log max_c p(c) for an id that was not trained."""
        self._check_fitted()
        checked = check_clips(clips, dim=self.dim_, what=f"{self.name}.score clips")
        clip_ids = check_ids(ids, len(checked), self)
        assert clip_ids is not None
        embs = self._embed(checked, int(self.segment_hop), f"{self.name}.score clips")
        counts = [e.shape[0] for e in embs]
        logits = self._logits(torch.cat(embs))
        index = {n: j for j, n in enumerate(self.ids_)}
        own = torch.repeat_interleave(torch.tensor([index.get(i, -1) for i in clip_ids]), torch.tensor(counts))
        target = torch.where(own >= 0, own, logits.argmax(dim=1))
        return split_scores(surprise(logits, target), counts)

    # -- state -------------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {"mean_": self.mean_, "scale_": self.scale_, "coef_": self.coef_, "intercept_": self.intercept_}

    def learned(self) -> dict[str, Any]:
        if not self.is_fitted:
            return {}
        return {"dim": self.dim_, "ids": self.ids_, "n_iter": self.n_iter_}

    def load_state_dict(self, state: dict[str, torch.Tensor], learned: dict[str, Any] | None = None
                        ) -> "IdClassifier":
        self._check_params()
        meta = learned or {}
        names, dim = meta.get("ids"), meta.get("dim")
        if not isinstance(names, list) or len(names) < 2 or isinstance(dim, bool) or not isinstance(dim, int):
            raise ValueError(f"{self.name}: learned metadata needs 'ids' (the trained machine ids, at least 2) and "
                             f"'dim'")
        e, c = 2 * dim, len(names)
        check_state(state, {"mean_": torch.zeros(e), "scale_": torch.zeros(e), "coef_": torch.zeros(c, e),
                            "intercept_": torch.zeros(c)}, self.name)
        self._set(state["mean_"], state["scale_"], state["coef_"], state["intercept_"], [str(n) for n in names],
                  meta.get("n_iter"))
        return self
