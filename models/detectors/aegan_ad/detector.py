"""AEGAN-AD (Jiang et al. 2023): an autoencoder trained as the generator of a WGAN-GP, whose discriminator's
embedding of a log-mel patch is what scores it.

Training follows the reference (jianganbai/AEGAN-AD, `dcase20/train.py` and `config.yaml`):
- Input: log-mel frames (128 bands, n_fft 2048, hop 512, dB), scaled to [-1, 1] with the training data's global
  min and max (learned state), cut into square patches of `isize` frames (128 x 128); training draws a patch at
  every `patch_stride`-th start of each clip per epoch (the reference: every start, stride 1).
- Per batch, one critic step: -D(x) + D(G(x)) + lambda_gp * gradient penalty (10; on random interpolates of the
  real and the reconstructed patches), then, every `n_critic` batches (1), one generator step: reconstruction MSE +
  `feature_match` (1) * MSE between the batch means of the discriminator embeddings of real and reconstructed
  patches (the reference's 'mu' matching). Two Adams, lr 2e-4, betas (0.5, 0.999), batch 512, 50 epochs.

Scoring: the reference computes 19 rules (4 on discriminator embeddings, 15 on reconstructions) and reports for
each machine type the one with the best AUC on the test set. Here there is ONE rule, chosen before any result was
seen: the squared Mahalanobis distance of each patch's discriminator embedding to a Gaussian fitted on the training
patches' embeddings (mean and Ledoit-Wolf shrunk covariance, all training clips of the type pooled as in the
reference), a window's score being the mean over its patches (every `score_hop` frames, the last one aligned to the
window's end). Why this one: the embedding is the part AEGAN-AD adds to a plain autoencoder (reconstruction-error
rules measure what `dcase_ae` already does); Mahalanobis has no neighbour count or other knob to tune; per patch
rather than per clip mean it does not depend on the window length, so a monitor window and a 10 s file score
alike, and a few clips still give thousands of patches for a 512-dim covariance. Only the discriminator and the
Gaussian are needed to score, so the bundle carries the discriminator and not the generator.

Model selection: the reference keeps the epoch with the best test AUC. Here all `epochs` run and the last one is
kept (`keep_best` False); with `keep_best` True the kept epoch is the one with the lowest reconstruction MSE on
held-out normal clips, never an anomaly label.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf

from models.detectors.aegan_ad.network import AeGan, Discriminator, check_isize
from models.detectors.base import (
    ClipsLike,
    Detector,
    ExampleInput,
    check_clips,
    check_state,
    crops_of,
    register,
    split_scores,
)
from models.device import select_device
from models.features import LogMelConfig
from models.training.loop import Batch, Step, StepContext, TrainSettings, fit_step, kept_epoch

_EMBED_BATCH = 256  # patches per discriminator pass when embedding


def patches(x: torch.Tensor) -> torch.Tensor:
    """Windows `[B, T, n_mels]` of frames as one-channel images `[B, 1, n_mels, T]` (bands as rows, as the
    reference's spectrogram patches)."""
    return x.transpose(1, 2).unsqueeze(1)


def gradient_penalty(critic: Discriminator, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: mean of (||grad_x D(x_hat)|| - 1)^2 over random interpolates x_hat of real and fake patches."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed)[0].sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


class AeganStep(Step):
    """One critic step and (every `n_critic` batches) one generator step per batch; the reported and validation
    loss is the generator's reconstruction MSE."""

    ddp = False  # the gradient penalty's double backward: gradients are averaged per optimizer step instead

    def __init__(self, module: AeGan, lambda_gp: float, feature_match: float, n_critic: int, beta1: float) -> None:
        super().__init__(module)
        self.lambda_gp, self.feature_match, self.n_critic, self.beta1 = lambda_gp, feature_match, n_critic, beta1
        self._batches = 0
        self._sums = {"critic_loss": 0.0, "feature_match": 0.0}
        self._counts = {"critic_loss": 0, "feature_match": 0}

    def optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        betas = (self.beta1, 0.999)
        return [torch.optim.Adam(self.module.discriminator.parameters(), lr=lr, betas=betas),
                torch.optim.Adam(self.module.generator.parameters(), lr=lr, betas=betas)]

    def loss(self, batch: Batch) -> torch.Tensor:
        x = patches(batch.x)
        return F.mse_loss(self.module.generator(x).float(), x.float())

    def train_step(self, batch: Batch, ctx: StepContext) -> torch.Tensor:
        gen, critic = self.module.generator, self.module.discriminator
        x = patches(batch.x)
        with ctx.autocast:
            with torch.no_grad():
                fake = gen(x)
            d_loss = (critic(fake)[0].float().mean() - critic(x)[0].float().mean()
                      + self.lambda_gp * gradient_penalty(critic, x, fake).float())
        ctx.minimize(d_loss, 0)
        self._add("critic_loss", d_loss)
        self._batches += 1
        if (self._batches - 1) % self.n_critic:
            return F.mse_loss(fake.float(), x.float())  # reported: the reconstruction of this batch
        with ctx.autocast:
            recon = gen(x)
            with torch.no_grad():  # the real embeddings carry no generator gradient
                real_emb = critic(x)[1].float()
            rec = F.mse_loss(recon.float(), x.float())
            match = F.mse_loss(critic(recon)[1].float().mean(0), real_emb.mean(0))
            g_loss = rec + self.feature_match * match
        ctx.minimize(g_loss, 1)
        self._add("feature_match", match)
        return rec

    def _add(self, key: str, value: torch.Tensor) -> None:
        self._sums[key] += float(value.detach())
        self._counts[key] += 1

    def end_epoch(self, epoch: int) -> dict[str, float]:
        out = {k: self._sums[k] / self._counts[k] for k in self._sums if self._counts[k]}
        self._sums = dict.fromkeys(self._sums, 0.0)
        self._counts = dict.fromkeys(self._counts, 0)
        return out


@register
class AeganAd(Detector):
    """AEGAN-AD scored by the Mahalanobis distance of discriminator embeddings (registry name `aegan_ad`)."""

    name = "aegan_ad"
    granularity = "window"
    feature_kinds = ("logmel",)
    default_feature = LogMelConfig(n_mels=128, n_fft=2048, hop_length=512, power=2.0, context=1).to_dict()
    # a critic needs a few hundred steps before its embedding tells structure apart (10 epochs: near chance)
    quick_params = {"isize": 16, "nz": 16, "ndf": 8, "ngf": 4, "epochs": 20, "batch_size": 32, "lr": 2e-3,
                    "score_hop": 8, "progress": False, "num_threads": 1}
    quick_feature = {"n_mels": 16}  # patches of isize bands

    def __init__(
        self,
        isize: int = 128,
        nz: int = 256,
        ndf: int = 32,
        ngf: int = 32,
        lambda_gp: float = 10.0,
        feature_match: float = 1.0,
        n_critic: int = 1,
        epochs: int = 50,
        batch_size: int = 512,
        lr: float = 2e-4,
        beta1: float = 0.5,
        patch_stride: int = 1,
        score_hop: int = 32,
        validation_split: float = 0.1,
        keep_best: bool = False,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
        num_threads: int | None = None,
    ) -> None:
        self.isize = isize
        self.nz = nz
        self.ndf = ndf
        self.ngf = ngf
        self.lambda_gp = lambda_gp
        self.feature_match = feature_match
        self.n_critic = n_critic
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.beta1 = beta1
        self.patch_stride = patch_stride
        self.score_hop = score_hop
        self.validation_split = validation_split
        self.keep_best = keep_best
        self.seed = seed
        self.device = device
        self.progress = progress
        self.num_threads = num_threads

    @classmethod
    def example_input(cls) -> ExampleInput:
        return ExampleInput(dim=int(cls.quick_params["isize"]), n_vectors=64)

    def check_feature(self, feature: Any) -> None:
        super().check_feature(feature)
        if feature.context != 1 or feature.n_mels != int(self.isize):
            raise ValueError(f"{self.name}: patches are isize x isize (mel bands x frames): the feature needs "
                             f"context 1 and n_mels = isize ({self.isize}), got context {feature.context} and "
                             f"n_mels {feature.n_mels}")

    # -- fitting ----------------------------------------------------------------------------------------------------

    def _check_params(self, dim: int | None = None) -> None:
        check_isize(int(self.isize))
        sizes = {"nz": self.nz, "ndf": self.ndf, "ngf": self.ngf, "n_critic": self.n_critic,
                 "patch_stride": self.patch_stride, "score_hop": self.score_hop}
        bad = [k for k, v in sizes.items() if int(v) < 1]
        if bad:
            raise ValueError(f"{self.name}: {bad} must be >= 1")
        if not float(self.lambda_gp) >= 0 or not float(self.feature_match) >= 0 or not 0 <= float(self.beta1) < 1:
            raise ValueError(f"{self.name}: need lambda_gp >= 0, feature_match >= 0 and 0 <= beta1 < 1")
        if dim is not None and dim != int(self.isize):
            raise ValueError(f"{self.name}: vectors of {dim} values, but patches are isize = {self.isize} mel bands "
                             f"tall: use a log-mel feature with n_mels {self.isize} and context 1")

    def _build(self) -> AeGan:
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG state
            torch.manual_seed(self.seed)
            return AeGan(int(self.isize), int(self.nz), int(self.ndf), int(self.ngf))

    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "AeganAd":
        checked = check_clips(clips, what=f"{self.name}.fit clips")
        self._check_params(checked[0].shape[1])
        short = [i for i, c in enumerate(checked) if c.shape[0] < int(self.isize)]
        if short:
            raise ValueError(f"{self.name}: {len(short)} clip(s) (first: [{short[0]}]) have fewer frames than a "
                             f"patch of {self.isize}")
        lengths = [c.shape[0] for c in checked]
        X = torch.cat(checked)
        del checked
        lo, hi = float(X.min()), float(X.max())
        if not hi > lo:
            raise ValueError(f"{self.name}: the training features are constant ({lo}): nothing to learn")
        centre, half = (hi + lo) / 2, (hi - lo) / 2
        X.sub_(centre).div_(half)  # in place: X is our own concatenation
        device = select_device(self.device)
        model = self._build()
        step = AeganStep(model, float(self.lambda_gp), float(self.feature_match), int(self.n_critic),
                         float(self.beta1))
        settings = TrainSettings.of(self, device, window=int(self.isize), window_stride=int(self.patch_stride),
                                    keep_best=bool(self.keep_best))
        # the gradient penalty's interpolation weights come from the global generator: seeded, on a fork of it
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            self.history_ = fit_step(step, X, lengths, settings)
        self.kept_epoch_ = kept_epoch(self.history_) if self.keep_best else None
        critic = model.discriminator.to(device).eval()
        starts = np.cumsum([0, *lengths])
        emb, _ = self._embed(critic, [X[starts[i] : starts[i + 1]] for i in range(len(lengths))], device)
        lw = LedoitWolf().fit(emb.double().numpy())
        self.shrinkage_ = float(lw.shrinkage_)
        self._set_fitted(critic, centre, half, torch.from_numpy(lw.location_), torch.from_numpy(lw.precision_),
                         device)
        return self

    def _embed(self, critic: Discriminator, clips: Sequence[torch.Tensor], device: torch.device
               ) -> tuple[torch.Tensor, list[int]]:
        """Discriminator embeddings `[P, C]` (CPU float32) of the scaled clips' patches, clip by clip, and each
        clip's patch count."""
        crops, counts = crops_of(clips, int(self.isize), int(self.score_hop))
        out = []
        with torch.no_grad():
            for b in range(0, len(crops), _EMBED_BATCH):
                x = torch.stack(crops[b : b + _EMBED_BATCH]).to(device)
                out.append(critic(patches(x))[1].float().cpu())
        return torch.cat(out), counts

    def _set_fitted(self, critic: Discriminator, centre: float, half: float, mean: torch.Tensor,
                    precision: torch.Tensor, device: torch.device) -> None:
        self.critic_ = critic.to(device).eval()
        self.centre_, self.half_ = float(centre), float(half)
        self.mean_ = mean.double()
        self.precision_ = precision.double()
        self.dim_ = int(self.isize)
        self.device_ = device

    # -- scoring ----------------------------------------------------------------------------------------------------

    def score(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> np.ndarray:
        """Mean over each window's patches of the squared Mahalanobis distance of their embeddings."""
        self._check_fitted()
        checked = check_clips(clips, dim=self.dim_, what=f"{self.name}.score clips")
        scaled = [(c - self.centre_) / self.half_ for c in checked]
        emb, counts = self._embed(self.critic_, scaled, self.device_)
        d = emb.double() - self.mean_
        return split_scores(((d @ self.precision_) * d).sum(dim=1), counts)

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "critic_")

    def learned(self) -> dict[str, Any]:
        self._check_fitted()
        return {"kept_epoch": getattr(self, "kept_epoch_", None), "shrinkage": getattr(self, "shrinkage_", None)}

    # -- persistence ------------------------------------------------------------------------------------------------

    def _collect(self, critic: Discriminator, centre: float, half: float, mean: torch.Tensor,
                 precision: torch.Tensor) -> dict[str, torch.Tensor]:
        state = {"scale_": torch.tensor([centre, half], dtype=torch.float64), "mean_": mean,
                 "precision_": precision}
        state.update({f"critic.{k}": v for k, v in critic.state_dict().items()})
        return {k: v.detach().cpu() for k, v in state.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return self._collect(self.critic_, self.centre_, self.half_, self.mean_, self.precision_)

    def load_state_dict(self, state: dict[str, Any], learned: dict[str, Any] | None = None) -> "AeganAd":
        self._check_params()
        critic = self._build().discriminator
        c = critic.embedding_dim
        check_state(state, self._collect(critic, 0.0, 1.0, torch.zeros(c), torch.zeros(c, c)), self.name)
        centre, half = (float(v) for v in state["scale_"])
        if not half > 0 or not np.isfinite(centre):
            raise ValueError(f"{self.name}: scale_ must be a finite centre and a positive half-range")
        critic.load_state_dict({k[len("critic.") :]: v for k, v in state.items() if k.startswith("critic.")})
        meta = learned or {}
        self.kept_epoch_, self.shrinkage_ = meta.get("kept_epoch"), meta.get("shrinkage")
        self._set_fitted(critic, centre, half, state["mean_"], state["precision_"], select_device(self.device))
        return self
