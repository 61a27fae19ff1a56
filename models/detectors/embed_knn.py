"""Segment embeddings and nearest neighbours for the few-normals regime (issue #13): a handful (2-10) of normal
clips per machine, no training beyond storing them.

The design below was fixed before any benchmark result was seen, and no setting was chosen on test data.

Embedding. A window's log-mel frames `[T, n_mels]` are cut into segments of `segment_frames` consecutive frames
every `segment_hop` frames (`crop_starts`: from the window's start, plus one segment aligned to its end when the
last regular one stops short of it). With the default feature (hop 512 at 16 kHz) 32 frames are 1.06 s of audio
and the hop 16 frames 0.51 s: a 10 s window is 19 segments. A segment's embedding is, per band, the mean and the
standard deviation over its frames (2 x n_mels values: the spectral envelope and how much each band fluctuates
within a second). Means and deviations are taken per segment, not per clip, so that short events (a valve's
stroke, a bearing's knock) move a few segments far from the normal ones instead of being averaged into a clip
mean.

Level normalisation (`level_norm`, default True). Before the statistics, each segment's mean over all its bands
and frames is subtracted. log-mel is in dB, so a pure gain change of the clip adds one constant to every value:
the normalised segment, hence its embedding, does not change (exactly, up to the feature's 1e-16 floor on mel
energies). Without it the nearest-neighbour distance is partly a level meter: the distance to a quieter or louder
take of the same machine grows with the level difference, whatever the sound. Per segment (not per window), so a
segment's embedding is a function of its own frames only, the same in a 10 s clip and in any monitor window.
What level normalisation gives up is the absolute level; a machine that gets louder without changing its spectral
shape or fluctuations is not detected, which is the price of not flagging a moved microphone or a changed gain.

Standardisation. Each embedding dimension is standardised by the mean and std of the training segments (learned
state, one standardiser for the whole machine type: 2 x n_mels statistics from two clips of one id are too few
to be stable, and one scale keeps per-id distances comparable with the fallback's).

Bank. Training clips are cut the same way, but every `bank_hop` frames (default 4, 0.13 s): a denser bank lets a
test segment find a training segment of nearly the same alignment to periodic or transient events, which matters
when only 2 clips are there; with `segment_hop` a multiple of `bank_hop` every segment position of a training clip
is in the bank, so a clip identical to a training clip scores 0. Each bank row carries the index of its clip's
machine id (`bank_id_`; the id names are the `learned()` metadata), so per-id banks are one tensor, no pickle.

Score (higher = more anomalous). For every segment of a window: the mean Euclidean distance (standardised space)
to its `k` nearest bank segments (k = 1: the nearest) among those of the window's machine id; when the id is not
given or was not in training, among the whole type's bank (the fallback). The window's score is the mean over its
segments. Each segment is scored on its own, so a window's score does not depend on what else is in the batch.
Windows shorter than one segment cannot be scored (ValueError); so a monitor window must hold `segment_frames`
frames.

Cost. Fitting is the feature pass plus one standardisation; a 10 s clip adds 71 bank rows (256 float32 values
each at 128 bands). Scoring a window is its segments' distances to one id's bank, so the scale of a bank of
thousands of clips (a full DCASE training set, as the type fallback) is memory (0.07 MB per clip) and time linear
in the bank: raise `bank_hop` there.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from models.detectors._segments import (
    QUICK_SEGMENTS,
    SEGMENT_FRAMES,
    SEGMENT_HOP,
    TRAIN_HOP,
    SegmentDetector,
)
from models.detectors.base import ClipsLike, ExampleInput, check_clips, check_ids, check_state, register, standardizer
from models.detectors.modspec_graph import nearest


@register
class EmbedKnn(SegmentDetector):
    """Mean over a window's segments of the distance from each segment's (level-normalised) log-mel statistics to
    the nearest training segments of the same machine id, the whole type's when the id is unknown."""

    name = "embed_knn"
    quick_params = {**QUICK_SEGMENTS, "bank_hop": 2}
    int_params = ("segment_frames", "segment_hop", "bank_hop", "k")

    def __init__(self, segment_frames: int = SEGMENT_FRAMES, segment_hop: int = SEGMENT_HOP, bank_hop: int = TRAIN_HOP,
                 k: int = 1, level_norm: bool = True) -> None:
        self.segment_frames = segment_frames
        self.segment_hop = segment_hop
        self.bank_hop = bank_hop
        self.k = k
        self.level_norm = level_norm

    @classmethod
    def example_input(cls) -> ExampleInput:
        return ExampleInput(dim=40, n_vectors=60, n_ids=2)  # two ids: the generic tests go through per-id banks

    # -- fit ---------------------------------------------------------------------------------------------------------

    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "EmbedKnn":
        self._check_params()
        checked = check_clips(clips, what=f"{self.name}.fit clips")
        clip_ids = check_ids(ids, len(checked), self)
        embs = self._embed(checked, int(self.bank_hop), f"{self.name}.fit clips")
        E = torch.cat(embs)
        mean, scale = standardizer(E)
        names = sorted(set(clip_ids)) if clip_ids is not None else []
        index = {n: j for j, n in enumerate(names)}
        row_ids = [index[clip_ids[i]] if clip_ids is not None else -1 for i, e in enumerate(embs)
                   for _ in range(e.shape[0])]
        bank = ((E - mean.double()) / scale.double()).float()
        self._set(mean, scale, bank, torch.tensor(row_ids, dtype=torch.int64), names, checked[0].shape[1])
        return self

    def _set(self, mean: torch.Tensor, scale: torch.Tensor, bank: torch.Tensor, bank_id: torch.Tensor,
             names: list[str], dim: int) -> None:
        self.mean_, self.scale_, self.bank_, self.bank_id_ = mean.float(), scale.float(), bank.float(), bank_id
        self.ids_ = list(names)
        self.dim_ = int(dim)
        # the banks scoring reads, float64: the whole type's (key -1) and each id's rows
        whole = self.bank_.double()
        self.banks_ = {-1: whole, **{j: whole[self.bank_id_ == j] for j in range(len(names))}}

    # -- score -------------------------------------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "bank_")

    def score(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> np.ndarray:
        """Mean over each window's segments of the mean distance to the k nearest bank segments of its id."""
        self._check_fitted()
        checked = check_clips(clips, dim=self.dim_, what=f"{self.name}.score clips")
        clip_ids = check_ids(ids, len(checked), self)
        embs = self._embed(checked, int(self.segment_hop), f"{self.name}.score clips")
        index = {n: j for j, n in enumerate(self.ids_)}
        keys = [-1 if clip_ids is None else index.get(clip_ids[i], -1) for i in range(len(checked))]
        mean, scale = self.mean_.double(), self.scale_.double()
        out = np.empty(len(checked), dtype=np.float64)
        for key in sorted(set(keys)):
            members = [i for i, kk in enumerate(keys) if kk == key]
            Z = (torch.cat([embs[i] for i in members]) - mean) / scale
            bank = self.banks_[key]
            dist, _ = nearest(Z, bank, min(int(self.k), bank.shape[0]))
            per_segment = dist.mean(dim=1)
            for i, part in zip(members, torch.split(per_segment, [embs[i].shape[0] for i in members])):
                out[i] = float(part.mean())
        return out

    # -- state -------------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {"mean_": self.mean_, "scale_": self.scale_, "bank_": self.bank_, "bank_id_": self.bank_id_}

    def learned(self) -> dict[str, Any]:
        if not self.is_fitted:
            return {}
        sizes = torch.bincount(self.bank_id_[self.bank_id_ >= 0], minlength=len(self.ids_)).tolist()
        return {"dim": self.dim_, "ids": self.ids_, "bank_segments": int(self.bank_.shape[0]),
                "bank_segments_per_id": dict(zip(self.ids_, (int(s) for s in sizes)))}

    def _embedding_width(self, dim: int) -> int:
        """Values per segment embedding for `dim`-value input vectors: each band's mean and deviation."""
        return 2 * dim

    def load_state_dict(self, state: dict[str, torch.Tensor], learned: dict[str, Any] | None = None) -> "EmbedKnn":
        self._check_params()
        mean, bank = (state.get(k) if isinstance(state, dict) else None for k in ("mean_", "bank_"))
        if not isinstance(mean, torch.Tensor) or mean.ndim != 1 or not isinstance(bank, torch.Tensor) or \
                bank.ndim != 2:
            raise ValueError(f"{self.name}: state needs a 1-D 'mean_' (one value per embedding dimension) and a 2-D "
                             f"'bank_'")
        n, e = bank.shape[0], mean.shape[0]
        dim = (learned or {}).get("dim", e // 2)
        if not isinstance(dim, int) or self._embedding_width(dim) != e:
            raise ValueError(f"{self.name}: learned dim {dim!r} does not match the state's {e}-value embeddings ('mean_', 'bank_')")
        check_state(state, {"mean_": torch.zeros(e), "scale_": torch.zeros(e), "bank_": torch.zeros(n, e),
                            "bank_id_": torch.zeros(n)}, self.name)
        bank_id = state["bank_id_"]
        names = [str(i) for i in (learned or {}).get("ids", [])]
        if n == 0 or bank_id.dtype != torch.int64 or int(bank_id.min()) < -1 or int(bank_id.max()) >= len(names):
            raise ValueError(f"{self.name}: 'bank_id_' must be int64 indices into learned['ids'] ({len(names)} "
                             f"ids) or -1, for a non-empty bank")
        self._set(state["mean_"], state["scale_"], bank, bank_id, names, dim)
        return self
