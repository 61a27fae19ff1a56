"""DCASE 2020 Task 2 baseline: a dense autoencoder on 5-frame log-mel vectors; the score is reconstruction error.

The network follows the official Keras baseline (Koizumi et al., Hitachi): 640-128-128-128-128-8-128-128-128-128-640,
every layer but the output a Dense -> BatchNorm -> ReLU block, Adam at 1e-3, batch 512, 100 epochs, MSE, 10 % of
the training data used for validation. Keras defaults are kept where they change the numbers: Glorot-uniform
weights with zero biases, BatchNorm momentum 0.99 (torch's 0.01) and epsilon 1e-3.

One deliberate difference: input vectors are standardised per dimension with the training mean/std (learned state,
stored in the bundle); `normalize=False` restores the raw-dB behaviour of the original.
A clip's score is the mean over its vectors of the per-vector mean squared reconstruction error, as in the
baseline; the detector is vector-level, so the monitor scores each new vector once.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.detectors.base import (
    ClipsLike,
    Detector,
    check_clips,
    check_state,
    check_vectors,
    per_row_chunks,
    register,
    standardizer,
)
from models.device import select_device
from models.features import LogMelConfig
from models.training.loop import TrainSettings, train_loop



class DenseAE(nn.Module):
    """dim -> hidden x n_layers -> bottleneck -> hidden x n_layers -> dim, Dense/BatchNorm/ReLU blocks."""

    def __init__(self, dim: int, hidden: int, bottleneck: int, n_layers: int) -> None:
        super().__init__()
        sizes = [dim] + [hidden] * n_layers + [bottleneck] + [hidden] * n_layers
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out, eps=1e-3, momentum=0.01), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], dim))
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):  # Keras Dense defaults
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _reconstruction_loss(module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(module(batch).float(), batch.float())


@register
class DcaseAE(Detector):
    """The DCASE 2020 Task 2 autoencoder baseline (registry name `dcase_ae`)."""

    name = "dcase_ae"
    granularity = "vector"
    default_feature = LogMelConfig(n_mels=128, n_fft=1024, hop_length=512, power=2.0, context=5).to_dict()
    quick_params = {"epochs": 10, "batch_size": 64, "progress": False, "num_threads": 1}

    def __init__(
        self,
        hidden: int = 128,
        bottleneck: int = 8,
        n_layers: int = 4,
        epochs: int = 100,
        batch_size: int = 512,
        lr: float = 1e-3,
        validation_split: float = 0.1,
        normalize: bool = True,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
        num_threads: int | None = None,
    ) -> None:
        self.hidden = hidden
        self.bottleneck = bottleneck
        self.n_layers = n_layers
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.validation_split = validation_split
        self.normalize = normalize
        self.seed = seed
        self.device = device
        self.progress = progress
        self.num_threads = num_threads

    # -- fitting ----------------------------------------------------------------------------------------------------

    def _build(self, dim: int) -> DenseAE:
        if min(self.hidden, self.bottleneck, self.n_layers) < 1:
            raise ValueError(f"{self.name}: hidden, bottleneck and n_layers must be >= 1")
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG state
            torch.manual_seed(self.seed)
            return DenseAE(dim, self.hidden, self.bottleneck, self.n_layers)

    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "DcaseAE":
        checked = check_clips(clips, what=f"{self.name}.fit clips")
        lengths = [c.shape[0] for c in checked]
        X = torch.cat(checked)
        del checked
        dim = X.shape[1]
        if self.normalize:
            mean, scale = standardizer(X)
        else:
            mean, scale = torch.zeros(dim), torch.ones(dim)
        X.sub_(mean).div_(scale)  # in place: X is our own concatenation, and the largest array in a fit
        device = select_device(self.device)
        net = self._build(dim)
        self.history_ = train_loop(net, X, lengths, _reconstruction_loss, TrainSettings.of(self, device))
        self._set_fitted(net, mean, scale, device)
        return self

    def _set_fitted(self, net: DenseAE, mean: torch.Tensor, scale: torch.Tensor, device: torch.device) -> None:
        self.net_ = net.to(device).eval()
        self.mean_ = mean.to(device)
        self.scale_ = scale.to(device)
        self.dim_ = int(mean.shape[0])
        self.device_ = device

    # -- scoring ----------------------------------------------------------------------------------------------------

    def _error(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean_) / self.scale_
        return (self.net_(x) - x).square().mean(dim=1)

    def score_vectors(self, X: torch.Tensor, ids: Sequence[str] | None = None) -> torch.Tensor:
        self._check_fitted()
        return per_row_chunks(self._error, check_vectors(X, self.dim_), self.device_)

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "net_")

    # -- persistence ------------------------------------------------------------------------------------------------

    @staticmethod
    def _collect(net: nn.Module, mean: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        state = {"mean_": mean, "scale_": scale}
        state.update({f"ae.{k}": v for k, v in net.state_dict().items()})
        return {k: v.detach().cpu() for k, v in state.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return self._collect(self.net_, self.mean_, self.scale_)

    def load_state_dict(self, state: dict[str, Any], learned: dict[str, Any] | None = None) -> "DcaseAE":
        mean = state.get("mean_") if isinstance(state, dict) else None
        if not isinstance(mean, torch.Tensor) or mean.ndim != 1:
            raise ValueError(f"{self.name}: state needs a 1-D tensor 'mean_' (the input dimension)")
        dim = int(mean.shape[0])
        net = self._build(dim)
        check_state(state, self._collect(net, torch.zeros(dim), torch.ones(dim)), self.name)
        net.load_state_dict({k[len("ae.") :]: v for k, v in state.items() if k.startswith("ae.")})
        self._set_fitted(net, state["mean_"].float(), state["scale_"].float(), select_device(self.device))
        return self
