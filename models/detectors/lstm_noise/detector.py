"""The seeds' noise models on sequences of 80-band log-mel frames, trained on paired recordings (the same audio
clean and with background noise mixed in):

- `lstm_classifier` (bundle kind `classifier`): noisy vs clean. An LSTM whose last hidden state maps linearly to
  one logit, trained with binary cross-entropy on random `seq_frames`-frame crops (the seed: 50 epochs). A
  window's score is the mean probability of "noisy" over its crops (non-overlapping, one more ending at the end):
  the monitor's per-source noise score, 0..1.
- `lstm_denoiser` (bundle kind `denoiser`): every hidden state maps linearly to a clean frame; mean squared error
  against the clean log-mel on random crops (the seed: 10 epochs). It does not score clips: `denoise` maps noisy
  log-mel to clean log-mel, `asd-offline denoise` writes it (and audio rebuilt with Griffin-Lim), and the
  `lstm_denoiser` stage puts it in front of a detector's features.

Inputs are standardised per band with the training inputs' mean and std, and the denoiser's targets with the clean
frames' (learned state): the LSTM then works on values of order 1 whatever the dB offset of a microphone. The
denoiser's reported MSE is on that standardised clean scale (1.0: as far off as predicting each band's mean), and
in dB^2 beside it.

Both are trained by `asd-offline train --model lstm_classifier|lstm_denoiser` from pairs (`models.training.noise`):
`fit(clips)` alone has no labels or targets to learn from and says so.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.detectors.base import (
    ClipsLike,
    Detector,
    check_clips,
    check_state,
    crops_of,
    register,
    split_scores,
    standardizer,
)
from models.detectors.lstm_noise.network import LstmState, MelLstm
from models.device import select_device
from models.training.loop import Batch, Step, TrainSettings, fit_step

NOISE_FEATURE: dict[str, Any] = {"kind": "logmel", "n_mels": 80, "n_fft": 1024, "hop_length": 512, "context": 1}


class _LstmNoiseModel(Detector):
    """What both noise models share: input standardisation, the network, the paired-data entry point."""

    feature_kinds = ("logmel",)
    default_feature: ClassVar[dict[str, Any]] = NOISE_FEATURE
    granularity = "window"
    n_out: ClassVar[int | None] = None  # the read-out size (None: one clean frame, the input's dim)

    def __init__(self, hidden: int = 128, layers: int = 1, seq_frames: int = 64, epochs: int = 10,
                 batch_size: int = 32, lr: float = 1e-3, seed: int = 0, device: str = "auto",
                 progress: bool = True) -> None:
        self.hidden, self.layers, self.seq_frames = hidden, layers, seq_frames
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.seed, self.device, self.progress = seed, device, progress

    def check_feature(self, feature: Any) -> None:
        super().check_feature(feature)
        if getattr(feature, "context", 1) != 1:
            raise ValueError(f"{self.name} reads sequences of single frames: set the feature's context to 1, "
                             f"not {feature.context}")

    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "Detector":
        raise ValueError(f"{self.name} learns from paired noisy and clean recordings, not from normal clips alone: "
                         f"train it with `asd-offline train --model {self.name}` (see the README's noise models)")

    def fit_pairs(self, noisy: ClipsLike, clean: ClipsLike) -> "_LstmNoiseModel":
        """Learn from the log-mel of the same recordings with and without background noise (clip i of `noisy` is
        clip i of `clean` with noise mixed in; equal lengths)."""
        noisy_c = check_clips(noisy, what=f"{self.name} noisy clips")
        clean_c = check_clips(clean, dim=noisy_c[0].shape[1], what=f"{self.name} clean clips")
        if len(noisy_c) != len(clean_c):
            raise ValueError(f"{self.name}: {len(noisy_c)} noisy clips but {len(clean_c)} clean ones; they must pair")
        for i, (a, b) in enumerate(zip(noisy_c, clean_c)):
            if a.shape != b.shape:
                raise ValueError(f"{self.name}: pair {i} has {a.shape[0]} noisy and {b.shape[0]} clean frames")
            if a.shape[0] < self.seq_frames:
                raise ValueError(f"{self.name}: pair {i} has {a.shape[0]} frames, fewer than seq_frames "
                                 f"({self.seq_frames})")
        dev = select_device(self.device)
        torch.manual_seed(int(self.seed))
        self.dim_ = int(noisy_c[0].shape[1])
        self.net_ = MelLstm(self.dim_, int(self.hidden), int(self.layers), self.n_out or self.dim_)
        settings = TrainSettings.of(self, dev, validation_split=0.0, num_threads=None, window=int(self.seq_frames))
        self.history_ = self._train(noisy_c, clean_c, settings)
        self.net_ = self.net_.cpu().eval()
        return self

    def _train(self, noisy: list[torch.Tensor], clean: list[torch.Tensor],
               settings: TrainSettings) -> list[dict[str, float]]:
        raise NotImplementedError

    def _standardise(self, clips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        mean, scale = self.in_mean_, self.in_scale_
        return [(c - mean) / scale for c in clips]

    # -- state ------------------------------------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "net_")

    def _stats(self) -> dict[str, torch.Tensor]:
        return {"in_mean_": self.in_mean_, "in_scale_": self.in_scale_}

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        net = {f"net.{k}": v.detach().cpu() for k, v in self.net_.state_dict().items()}
        return {**self._stats(), **net}

    def load_state_dict(self, state: dict[str, torch.Tensor], learned: dict[str, Any] | None = None) -> Any:
        mean = state.get("in_mean_") if isinstance(state, dict) else None
        if not isinstance(mean, torch.Tensor) or mean.ndim != 1:
            raise ValueError(f"{self.name}: state needs a 1-D tensor 'in_mean_'")
        dim = int(mean.shape[0])
        net = MelLstm(dim, int(self.hidden), int(self.layers), self.n_out or dim)
        expected = {k: torch.zeros(dim) for k in self._stat_names()}
        expected.update({f"net.{k}": v for k, v in net.state_dict().items()})
        check_state(state, expected, self.name)
        net.load_state_dict({k[4:]: v.float() for k, v in state.items() if k.startswith("net.")})
        for k in self._stat_names():
            setattr(self, k, state[k].float())
        self.dim_, self.net_ = dim, net.eval()
        return self

    def _stat_names(self) -> list[str]:
        return ["in_mean_", "in_scale_"]

    def learned(self) -> dict[str, Any]:
        history = getattr(self, "history_", None)
        return {"final_loss": float(history[-1]["loss"])} if history else {}


class _ClassifierStep(Step):
    def loss(self, batch: Batch) -> torch.Tensor:
        assert batch.y is not None, "fit_step passes each crop's noisy/clean label"
        return F.binary_cross_entropy_with_logits(self.module.last(batch.x).float()[:, 0], batch.y.float())


@register
class LstmClassifier(_LstmNoiseModel):
    """Noisy (1) vs clean (0) from the last hidden state; `score` is the probability of noisy."""

    name = "lstm_classifier"
    bundle_kind = "classifier"
    n_out = 1
    quick_params = {"hidden": 8, "seq_frames": 8, "epochs": 2, "batch_size": 16, "progress": False}

    def __init__(self, hidden: int = 64, layers: int = 1, seq_frames: int = 32, epochs: int = 50,
                 batch_size: int = 64, lr: float = 1e-3, seed: int = 0, device: str = "auto",
                 progress: bool = True) -> None:
        super().__init__(hidden, layers, seq_frames, epochs, batch_size, lr, seed, device, progress)

    def _train(self, noisy: list[torch.Tensor], clean: list[torch.Tensor],
               settings: TrainSettings) -> list[dict[str, float]]:
        clips = noisy + clean
        self.in_mean_, self.in_scale_ = standardizer(torch.cat(clips))
        labels = torch.tensor([1] * len(noisy) + [0] * len(clean), dtype=torch.long)
        X = torch.cat(self._standardise(clips))
        return fit_step(_ClassifierStep(self.net_), X, [c.shape[0] for c in clips], settings, labels=labels)

    @torch.no_grad()
    def score(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> np.ndarray:
        """Mean probability of "noisy" over each window's `seq_frames` crops (a shorter window: one crop of all of
        it)."""
        self._check_fitted()
        checked = self._standardise(check_clips(clips, dim=self.dim_, what=f"{self.name}.score clips"))
        by_length: dict[int, list[int]] = {}
        for i, c in enumerate(checked):
            by_length.setdefault(min(int(self.seq_frames), c.shape[0]), []).append(i)
        out = np.empty(len(checked), dtype=np.float64)
        for T, idx in by_length.items():  # one batched call per crop length
            crops, counts = crops_of([checked[i] for i in idx], T)
            out[idx] = split_scores(torch.sigmoid(self.net_.last(torch.stack(crops))[:, 0]), counts)
        return out


class _DenoiserStep(Step):
    """Windows hold the standardised noisy frame and its clean target side by side (`[B, T, 2 * dim]`), so the
    shared sampler draws aligned crops of both."""

    def loss(self, batch: Batch) -> torch.Tensor:
        d = batch.x.shape[-1] // 2
        pred, _ = self.module(batch.x[..., :d])
        return F.mse_loss(pred.float(), batch.x[..., d:].float())


@register
class LstmDenoiser(_LstmNoiseModel):
    """Noisy log-mel in, clean log-mel out, frame by frame and causally (`denoise`, `denoise_step`)."""

    name = "lstm_denoiser"
    bundle_kind = "denoiser"
    quick_params = {"hidden": 8, "seq_frames": 8, "epochs": 2, "batch_size": 16, "progress": False}

    def _train(self, noisy: list[torch.Tensor], clean: list[torch.Tensor],
               settings: TrainSettings) -> list[dict[str, float]]:
        self.in_mean_, self.in_scale_ = standardizer(torch.cat(noisy))
        self.out_mean_, self.out_scale_ = standardizer(torch.cat(clean))
        X = torch.cat([torch.cat([x, (y - self.out_mean_) / self.out_scale_], dim=1)
                       for x, y in zip(self._standardise(noisy), clean)])
        return fit_step(_DenoiserStep(self.net_), X, [c.shape[0] for c in noisy], settings)

    def _stats(self) -> dict[str, torch.Tensor]:
        return {**super()._stats(), "out_mean_": self.out_mean_, "out_scale_": self.out_scale_}

    def _stat_names(self) -> list[str]:
        return [*super()._stat_names(), "out_mean_", "out_scale_"]

    def score(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> np.ndarray:
        raise ValueError(f"{self.name} is a denoiser: it cleans log-mel frames and scores nothing (use "
                         "`asd-offline denoise`, or put it before a detector as the `lstm_denoiser` stage)")

    @torch.no_grad()
    def denoise(self, clips: ClipsLike) -> list[torch.Tensor]:
        """Each noisy clip `[T, dim]` -> its denoised log-mel `[T, dim]`, each from a fresh state (the offline
        pass; streaming the same audio through `denoise_step` gives the same frames)."""
        self._check_fitted()
        checked = check_clips(clips, dim=self.dim_, what=f"{self.name}.denoise clips")
        return [self.denoise_step(c[None], None)[0][0] for c in checked]

    @torch.no_grad()
    def denoise_step(self, x: torch.Tensor, state: LstmState | None) -> tuple[torch.Tensor, LstmState]:
        """`[B, T, dim]` noisy frames of B streams (their next T frames each) and the streams' carried state ->
        `[B, T, dim]` denoised frames and the new state."""
        self._check_fitted()
        y, state = self.net_((x - self.in_mean_) / self.in_scale_, state)
        return y * self.out_scale_ + self.out_mean_, state

    def standardised_error(self, denoised: torch.Tensor, clean: torch.Tensor) -> float:
        """Mean squared error on the clean frames' standardised scale (what training minimises)."""
        return float(((denoised - clean) / self.out_scale_).square().mean())
