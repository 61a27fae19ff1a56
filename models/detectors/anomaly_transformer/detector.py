"""Anomaly Transformer (Xu et al., ICLR 2022) on log-mel frame sequences: a transformer reconstructs a crop of
`frames` consecutive frames, and each layer's attention is compared with a learned Gaussian prior over
neighbouring frames; frames whose attention stays close to that local prior (a small association discrepancy)
are the suspicious ones, and the score weighs each frame's reconstruction error by them.

Training (the reference's minimax strategy, thuml/Anomaly-Transformer `solver.py`): per batch
  loss1 = MSE - k * AssDis(series, prior.detach())   (the series association is pushed away from the prior)
  loss2 = MSE + k * AssDis(series.detach(), prior)   (the prior is pulled towards the series association)
with AssDis the symmetric KL between the two maps (`network.minimax_terms`). The reference calls
`loss1.backward(retain_graph=True); loss2.backward()` and then takes one optimizer step: the gradients of both
are summed into one update. `MinimaxStep` does exactly that with one backward pass of `loss1 + loss2` (the same
summed gradient) and one Adam step per batch. k = 3, Adam lr 1e-4 halved after every epoch (the reference's
`adjust_learning_rate`).

Scoring (the reference's `test`): per frame, softmax over the crop's positions of
-temperature * sum over layers of [KL(series || prior) + KL(prior || series)] (temperature 50), times the frame's
reconstruction error (mean squared error over its dimensions); a crop's score is the mean over its frames. The
network is built for crops of `frames` frames (100 by default, as the reference's windows); a window is split
into crops by `crop_starts` (non-overlapping from the start, the last one aligned to the window's end) and its
score is the mean of its crops' scores. With the default feature (hop 512 at 16 kHz) 100 frames are 3.232 s;
`configs/anomaly_transformer.yaml` keeps the monitor's `window_seconds` at 10, the training clips' length: a
monitor window is then four crops (the last one aligned to its end), scored exactly as a 10 s clip offline and on
the scale of the held-out clip scores the threshold is set on (a one-crop 3.25 s window would react sooner, but its
scores spread wider than those the threshold was set on, so it would raise more false alarms).

Model selection: the reference early-stops on (loss1, loss2) computed on its *test* set. Here the kept epoch is
the one with the lowest reconstruction MSE on held-out normal clips (`validation_split`, by clip; `keep_best`,
`patience`), which never sees an anomaly. The MSE, not loss1 or loss2, is the validation loss because the
discrepancy terms are adversarial: loss1 falls as the series association is driven away from the prior, and
loss2 as the prior follows it, so neither says whether the model got better at describing normal sound, and
their sum is the MSE twice plus a term whose sign flips with the balance of the two players. The MSE is the one
part both players minimise.

Inputs are standardised per dimension with the training mean and std (learned state), as the reference's
StandardScaler: dB log-mel values are far from the unit scale the MSE and the KL terms are balanced for.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.detectors.anomaly_transformer.network import AnomalyTransformerNet, kl_rows, minimax_terms
from models.detectors.base import (
    ClipsLike,
    Detector,
    check_clips,
    check_ids,
    check_state,
    crops_of,
    register,
    split_scores,
    standardizer,
)
from models.device import select_device
from models.features import LogMelConfig
from models.training.loop import Batch, Step, StepContext, TrainSettings, fit_step, kept_epoch

_SCORE_BATCH = 64  # crops per forward pass when scoring


class MinimaxStep(Step):
    """One batch of the minimax training: the summed gradients of loss1 and loss2, one Adam step; the validation
    loss (`loss`) is the reconstruction MSE alone. `end_epoch` halves the learning rate (`lr_decay`) and reports
    the epoch's mean MSE and association discrepancy."""

    def __init__(self, module: AnomalyTransformerNet, k: float, lr_decay: float) -> None:
        super().__init__(module)
        self.k, self.lr_decay = k, lr_decay
        self.optimizer: torch.optim.Optimizer | None = None
        self._sums: list[torch.Tensor] = []  # per batch: (mse, discrepancy), summed at the epoch's end

    def optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=lr, fused=True)
        return [self.optimizer]

    def losses(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss1, loss2, mse) of a batch of standardised crops `[B, frames, dim]`."""
        recon, series, prior = self.module(x)
        mse = F.mse_loss(recon.float(), x.float())
        series_term, prior_term = minimax_terms(series, prior)
        return mse - self.k * series_term, mse + self.k * prior_term, mse

    def loss(self, batch: Batch) -> torch.Tensor:
        recon, _, _ = self.module(batch.x)
        return F.mse_loss(recon.float(), batch.x.float())

    def train_step(self, batch: Batch, ctx: StepContext) -> torch.Tensor:
        with ctx.autocast:
            loss1, loss2, mse = self.losses(batch.x)
        ctx.minimize(loss1 + loss2)  # = loss1.backward(); loss2.backward(); one step
        self._sums.append(torch.stack([mse.detach(), (mse - loss1).detach() / max(self.k, 1e-12)]))
        return loss1  # what the reference reports as the training loss

    def end_epoch(self, epoch: int) -> dict[str, float]:
        assert self.optimizer is not None
        lr = self.optimizer.param_groups[0]["lr"]
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] * self.lr_decay
        sums, self._sums = self._sums, []
        out = {"lr": float(lr)}
        if sums:
            mse, dis = torch.stack(sums).float().mean(dim=0).tolist()
            out.update({"mse": float(mse), "assdis": float(dis)} if self.k > 0 else {"mse": float(mse)})
        return out


def anomaly_energy(recon: torch.Tensor, x: torch.Tensor, series: Sequence[torch.Tensor],
                   prior: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """Per-frame anomaly scores `[B, L]` of crops `x` `[B, L, dim]` (standardised) as the reference computes them:
    softmax over positions of -(sum over layers of temperature * [KL(series || prior) + KL(prior || series)]),
    times the frame's mean squared reconstruction error."""
    error = (recon.float() - x.float()).square().mean(dim=-1)
    discrepancy = sum(temperature * (kl_rows(s, p) + kl_rows(p, s)) for s, p in zip(series, prior))
    return torch.softmax(-discrepancy, dim=-1) * error


@register
class AnomalyTransformer(Detector):
    """Anomaly Transformer with the association-discrepancy score (registry name `anomaly_transformer`)."""

    name = "anomaly_transformer"
    granularity = "window"
    # single log-mel frames (no context stacking: the network sees the neighbouring frames itself)
    default_feature = LogMelConfig(n_mels=128, n_fft=1024, hop_length=512, power=2.0, context=1).to_dict()
    quick_params = {"frames": 8, "d_model": 16, "n_heads": 2, "layers": 1, "d_ff": 16, "epochs": 8,
                    "batch_size": 16, "lr": 3e-3, "lr_decay": 1.0, "patience": None, "progress": False,
                    "num_threads": 1}

    def __init__(
        self,
        frames: int = 100,
        d_model: int = 512,
        n_heads: int = 8,
        layers: int = 3,
        d_ff: int = 512,
        dropout: float = 0.0,
        k: float = 3.0,
        temperature: float = 50.0,
        epochs: int = 10,
        batch_size: int = 32,
        lr: float = 1e-4,
        lr_decay: float = 0.5,
        validation_split: float = 0.1,
        keep_best: bool = True,
        patience: int | None = 3,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
        num_threads: int | None = None,
    ) -> None:
        self.frames = frames
        self.d_model = d_model
        self.n_heads = n_heads
        self.layers = layers
        self.d_ff = d_ff
        self.dropout = dropout
        self.k = k
        self.temperature = temperature
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lr_decay = lr_decay
        self.validation_split = validation_split
        self.keep_best = keep_best
        self.patience = patience
        self.seed = seed
        self.device = device
        self.progress = progress
        self.num_threads = num_threads

    def check_feature(self, feature: Any) -> None:
        super().check_feature(feature)
        if getattr(feature, "window_level", False):
            raise ValueError(f"{self.name} models sequences of frames: a window-level feature ({feature.kind}) "
                             f"gives one vector per window")

    # -- fitting ----------------------------------------------------------------------------------------------------

    def _check_params(self) -> None:
        sizes = {"frames": self.frames, "d_model": self.d_model, "n_heads": self.n_heads, "layers": self.layers,
                 "d_ff": self.d_ff}
        bad = [k for k, v in sizes.items() if int(v) < 1]
        if bad:
            raise ValueError(f"{self.name}: sizes must be >= 1, got {', '.join(f'{k}={sizes[k]}' for k in bad)}")
        if int(self.d_model) % int(self.n_heads):
            raise ValueError(f"{self.name}: d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"{self.name}: dropout must be in [0, 1), got {self.dropout!r}")
        if not float(self.k) >= 0.0 or not float(self.temperature) > 0.0:
            raise ValueError(f"{self.name}: need k >= 0 and temperature > 0, got {self.k!r}, {self.temperature!r}")
        if not 0.0 < float(self.lr_decay) <= 1.0:
            raise ValueError(f"{self.name}: lr_decay (the learning rate's factor per epoch) must be in (0, 1], "
                             f"got {self.lr_decay!r}")
        if self.patience is not None and int(self.patience) < 1:
            raise ValueError(f"{self.name}: patience must be None or >= 1 epochs, got {self.patience!r}")

    def _build(self, dim: int) -> AnomalyTransformerNet:
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG state
            torch.manual_seed(self.seed)
            return AnomalyTransformerNet(dim, int(self.frames), int(self.d_model), int(self.n_heads),
                                         int(self.layers), int(self.d_ff), float(self.dropout))

    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "AnomalyTransformer":
        self._check_params()
        checked = check_clips(clips, what=f"{self.name}.fit clips")
        check_ids(ids, len(checked), self)
        short = [i for i, c in enumerate(checked) if c.shape[0] < int(self.frames)]
        if short:
            raise ValueError(f"{self.name}: {len(short)} clip(s) (first: [{short[0]}]) have fewer frames than the "
                             f"crop of {self.frames}; shorten `frames` or give longer clips")
        lengths = [c.shape[0] for c in checked]
        X = torch.cat(checked)
        del checked
        mean, scale = standardizer(X)
        X.sub_(mean).div_(scale)  # in place: X is our own concatenation
        device = select_device(self.device)
        net = self._build(X.shape[1])
        settings = TrainSettings.of(self, device, window=int(self.frames), keep_best=bool(self.keep_best),
                                    patience=None if self.patience is None else int(self.patience))
        self.history_ = fit_step(MinimaxStep(net, float(self.k), float(self.lr_decay)), X, lengths, settings)
        self.kept_epoch_ = kept_epoch(self.history_) if self.keep_best else None
        self._set_fitted(net, mean, scale, device)
        return self

    def _set_fitted(self, net: AnomalyTransformerNet, mean: torch.Tensor, scale: torch.Tensor,
                    device: torch.device) -> None:
        self.net_ = net.to(device).eval()
        self.mean_ = mean.float().to(device)
        self.scale_ = scale.float().to(device)
        self.dim_ = int(mean.shape[0])
        self.device_ = device

    # -- scoring ----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def frame_scores(self, crops: torch.Tensor) -> torch.Tensor:
        """Per-frame scores `[B, frames]` (CPU float32) of raw crops `[B, frames, dim]`."""
        self._check_fitted()
        x = (crops.to(self.device_) - self.mean_) / self.scale_
        recon, series, prior = self.net_(x)
        return anomaly_energy(recon, x, series, prior, float(self.temperature)).cpu()

    def score(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> np.ndarray:
        """Mean over each window's crops of the mean per-frame score."""
        self._check_fitted()
        checked = check_clips(clips, dim=self.dim_, what=f"{self.name}.score clips")
        check_ids(ids, len(checked), self)
        crops, counts = crops_of(checked, int(self.frames))
        per_crop = torch.empty(len(crops), dtype=torch.float64)
        for s in range(0, len(crops), _SCORE_BATCH):
            batch = torch.stack(crops[s : s + _SCORE_BATCH])
            per_crop[s : s + batch.shape[0]] = self.frame_scores(batch).double().mean(dim=1)
        return split_scores(per_crop, counts)

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "net_")

    def learned(self) -> dict[str, Any]:
        self._check_fitted()
        return {"dim": self.dim_, "kept_epoch": getattr(self, "kept_epoch_", None)}

    # -- persistence ------------------------------------------------------------------------------------------------

    @staticmethod
    def _collect(net: AnomalyTransformerNet, mean: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        state = {"mean_": mean, "scale_": scale, **{f"net.{k}": v for k, v in net.state_dict().items()}}
        return {k: v.detach().cpu() for k, v in state.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return self._collect(self.net_, self.mean_, self.scale_)

    def load_state_dict(self, state: dict[str, Any], learned: dict[str, Any] | None = None) -> "AnomalyTransformer":
        self._check_params()
        mean = state.get("mean_") if isinstance(state, dict) else None
        if not isinstance(mean, torch.Tensor) or mean.ndim != 1:
            raise ValueError(f"{self.name}: state needs a 1-D tensor 'mean_' (the input dimension)")
        dim = int(mean.shape[0])
        net = self._build(dim)
        check_state(state, self._collect(net, torch.zeros(dim), torch.ones(dim)), self.name)
        net.load_state_dict({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")})
        self.kept_epoch_ = (learned or {}).get("kept_epoch")
        self._set_fitted(net, state["mean_"], state["scale_"], select_device(self.device))
        return self
