"""STgram-MFN (Liu et al. 2022): a classifier of machine ids whose surprise at a crop's own id is the anomaly score.

Trained on the normal clips of every id of a machine type: the other ids act as the outliers each id is told
apart from, so a crop that no longer sounds like its own machine gets a low probability for its id. The score is
-log p(own id) from the ArcFace logits with the margin applied to the own id, as the reference evaluates it.

Input is the `stgram` feature: per frame the log-mel and the raw samples (the Tgram branch's input). The network
is fixed to one crop length (`frames`; the Tgram's LayerNorm over time and the last depthwise convolution's
kernel), so training samples random crops of `frames` consecutive frames within clips (311 = one 10 s clip at the
defaults), and scoring splits a window into crops: non-overlapping from the start, the last one aligned to the
window's end when the length is not a multiple; the window's score is the mean of its crops' scores. A monitor
window of the bundle's length (`window_seconds` 10 with the defaults) is one crop, scored exactly as offline.

With `across_types` the classes are also the ids of every other machine type in the training data (`<type>/<id>`,
passed by training): the reference trains one network over all types, so that each id is told apart from every
other machine a user has. The bundle serves its own type's ids; the score is the same -log p(own id).

Training as the reference: Adam 1e-4, cosine annealing of the learning rate, batch 128, up to 300 epochs; the
reference then keeps the epoch with the best AUC *on the test set*. Here the kept epoch is the one with the lowest
classification loss on held-out normal clips (`validation_split`, by clip), which never sees an anomaly.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.detectors.base import (
    ClipsLike,
    Detector,
    ExampleInput,
    check_clips,
    check_ids,
    check_state,
    crops_of,
    register,
    split_scores,
)
from models.detectors.stgram_mfn.network import MOBILEFACENET_BLOCKS, StgramMFN
from models.device import select_device
from models.features.stgram import StgramConfig
from models.training.loop import Batch, Step, TrainSettings, fit_step, kept_epoch

_SCORE_BATCH = 64  # crops per forward pass when scoring


class ArcFaceStep(Step):
    """Cross-entropy of the ArcFace logits against the crop's id; Adam with a cosine-annealed learning rate,
    stepped once per epoch over `epochs`."""

    def __init__(self, module: StgramMFN, epochs: int) -> None:
        super().__init__(module)
        self.epochs = epochs
        self.scheduler: torch.optim.lr_scheduler.CosineAnnealingLR | None = None

    def optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        opt = torch.optim.Adam(self.module.parameters(), lr=lr, fused=True)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs)
        return [opt]

    def loss(self, batch: Batch) -> torch.Tensor:
        assert batch.y is not None, "fit_step passes each crop's id"
        return F.cross_entropy(self.module(batch.x, batch.y).float(), batch.y.long())

    def end_epoch(self, epoch: int) -> dict[str, float]:
        assert self.scheduler is not None
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        return {"lr": float(lr)}


@register
class StgramMfn(Detector):
    """STgram-MFN with an ArcFace head over the machine ids (registry name `stgram_mfn`)."""

    name = "stgram_mfn"
    granularity = "window"
    needs_ids = True
    feature_kinds = ("stgram",)
    default_feature = StgramConfig().to_dict()
    quick_params = {"frames": 16, "blocks": [[2, 8, 1, 2], [2, 16, 1, 2]], "stem": 8, "head": 16,
                    "embedding": 8, "epochs": 20, "batch_size": 16, "lr": 3e-3, "progress": False,
                    "num_threads": 1}

    def __init__(
        self,
        frames: int = 311,
        n_mels: int = 128,
        blocks: Sequence[Sequence[int]] = tuple(tuple(b) for b in MOBILEFACENET_BLOCKS),
        stem: int = 64,
        head: int = 512,
        embedding: int = 128,
        margin: float = 0.7,
        scale: float = 30.0,
        epochs: int = 300,
        batch_size: int = 128,
        lr: float = 1e-4,
        validation_split: float = 0.1,
        keep_best: bool = True,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
        num_threads: int | None = None,
        across_types: bool = False,
    ) -> None:
        self.frames = frames
        self.n_mels = n_mels
        self.blocks = [list(b) for b in blocks]  # lists, as they come back from JSON and YAML
        self.stem = stem
        self.head = head
        self.embedding = embedding
        self.margin = margin
        self.scale = scale
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.validation_split = validation_split
        self.keep_best = keep_best
        self.seed = seed
        self.device = device
        self.progress = progress
        self.num_threads = num_threads
        self.across_types = across_types

    @classmethod
    def example_input(cls) -> ExampleInput:
        # 128 mel values + 32 raw samples per frame; three ids, since a classifier of one id learns nothing;
        # anomalies sound like another id
        return ExampleInput(dim=160, n_vectors=60, n_ids=3, anomaly="other_id")

    def check_feature(self, feature: Any) -> None:
        super().check_feature(feature)
        if feature.n_mels != int(self.n_mels):
            raise ValueError(f"{self.name}: the feature has {feature.n_mels} mel bands but params.n_mels is "
                             f"{self.n_mels}: set both alike")

    # -- fitting ----------------------------------------------------------------------------------------------------

    def _check_params(self, dim: int | None = None) -> None:
        sizes = {"frames": self.frames, "n_mels": self.n_mels, "stem": self.stem, "head": self.head,
                 "embedding": self.embedding}
        bad = [k for k, v in sizes.items() if int(v) < 1]
        if bad or not self.blocks or any(len(b) != 4 or min(int(v) for v in b) < 1 for b in self.blocks):
            raise ValueError(f"{self.name}: sizes must be >= 1 ({bad or 'blocks'}); blocks are [t, c, n, s] rows")
        if not 0.0 <= float(self.margin) < math.pi / 2 or not float(self.scale) > 0:
            raise ValueError(f"{self.name}: need 0 <= margin < pi/2 and scale > 0, got {self.margin}, {self.scale}")
        if not isinstance(self.across_types, bool):
            raise ValueError(f"{self.name}: across_types must be true or false, got {self.across_types!r}")
        if dim is not None and dim <= int(self.n_mels):
            raise ValueError(f"{self.name}: vectors of {dim} values cannot hold {self.n_mels} mel values and a raw "
                             f"frame: use the `stgram` feature (n_mels {self.n_mels})")

    def _build(self, dim: int, n_classes: int) -> StgramMFN:
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG state
            torch.manual_seed(self.seed)
            return StgramMFN(n_classes, int(self.n_mels), dim - int(self.n_mels), int(self.frames), self.blocks,
                             int(self.stem), int(self.head), int(self.embedding), float(self.margin),
                             float(self.scale))

    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "StgramMfn":
        checked = check_clips(clips, what=f"{self.name}.fit clips")
        clip_ids = check_ids(ids, len(checked), self)
        assert clip_ids is not None
        dim = checked[0].shape[1]
        self._check_params(dim)
        short = [i for i, c in enumerate(checked) if c.shape[0] < int(self.frames)]
        if short:
            raise ValueError(f"{self.name}: {len(short)} clip(s) (first: [{short[0]}]) have fewer frames than the "
                             f"crop of {self.frames}; shorten `frames` or give longer clips")
        classes = sorted(set(clip_ids))
        if len(classes) < 2:
            raise ValueError(f"{self.name} learns to tell machine ids apart: it needs clips of at least 2 ids, "
                             f"got only {classes} (across_types: true adds the other machine types' ids)")
        index = {c: k for k, c in enumerate(classes)}
        labels = torch.tensor([index[i] for i in clip_ids], dtype=torch.long)
        lengths = [c.shape[0] for c in checked]
        X = torch.cat(checked)
        del checked
        device = select_device(self.device)
        net = self._build(dim, len(classes))
        settings = TrainSettings.of(self, device, window=int(self.frames), keep_best=bool(self.keep_best))
        self.history_ = fit_step(ArcFaceStep(net, int(self.epochs)), X, lengths, settings, labels=labels)
        self.kept_epoch_ = kept_epoch(self.history_) if self.keep_best else None
        self._set_fitted(net, classes, dim, device)
        return self

    def _set_fitted(self, net: StgramMFN, classes: list[str], dim: int, device: torch.device) -> None:
        self.net_ = net.to(device).eval()
        self.classes_ = list(classes)
        self.dim_ = int(dim)
        self.device_ = device

    # -- scoring ----------------------------------------------------------------------------------------------------

    def score(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> np.ndarray:
        """Mean over each window's crops of -log p(own id)."""
        self._check_fitted()
        checked = check_clips(clips, dim=self.dim_, what=f"{self.name}.score clips")
        clip_ids = check_ids(ids, len(checked), self)
        assert clip_ids is not None
        unknown = sorted(set(clip_ids) - set(self.classes_))
        if unknown:
            raise ValueError(f"{self.name}: machine id(s) {unknown} were not among the trained ids {self.classes_}")
        index = {c: k for k, c in enumerate(self.classes_)}
        crops, counts = crops_of(checked, int(self.frames))
        y = torch.repeat_interleave(torch.tensor([index[mid] for mid in clip_ids], dtype=torch.long),
                                    torch.tensor(counts))
        surprise = torch.empty(len(crops), dtype=torch.float64)
        with torch.no_grad():
            for s in range(0, len(crops), _SCORE_BATCH):
                x = torch.stack(crops[s : s + _SCORE_BATCH]).to(self.device_)
                yb = y[s : s + _SCORE_BATCH].to(self.device_)
                logp = torch.log_softmax(self.net_(x, yb).float(), dim=1)
                surprise[s : s + len(yb)] = -logp.gather(1, yb[:, None])[:, 0].double().cpu()
        return split_scores(surprise, counts)

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "net_")

    def learned(self) -> dict[str, Any]:
        self._check_fitted()
        return {"classes": self.classes_, "dim": self.dim_, "kept_epoch": getattr(self, "kept_epoch_", None)}

    # -- persistence ------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {f"net.{k}": v.detach().cpu() for k, v in self.net_.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any], learned: dict[str, Any] | None = None) -> "StgramMfn":
        meta = learned or {}
        classes, dim = meta.get("classes"), meta.get("dim")
        if not isinstance(classes, list) or len(classes) < 2 or not isinstance(dim, int):
            raise ValueError(f"{self.name}: learned metadata needs 'classes' (the trained ids) and 'dim'")
        self._check_params(dim)
        net = self._build(dim, len(classes))
        check_state(state, {f"net.{k}": v for k, v in net.state_dict().items()}, self.name)
        net.load_state_dict({k[len("net.") :]: v for k, v in state.items()})
        self.kept_epoch_ = meta.get("kept_epoch")
        self._set_fitted(net, [str(c) for c in classes], dim, select_device(self.device))
        return self
