"""Feature-cleaning autoencoders: the MIMII per-SNR study's two options for cleaning feature vectors before a
classical detector, a plain autoencoder (`ae_clean`) and a deep denoising autoencoder (`ddae`).

Both are one small autoencoder per feature group (the study: the 128 DCT means as 128 -> 64 -> 32 -> 16 -> 8 and
the 8 waveform statistics as 8 -> 16 -> 32 -> 64 -> 128, each mirrored back to its input size), ReLU inside, a
sigmoid output, trained by MSE with Adam (1e-4, batch 64, 100 epochs) on the normal training vectors; the stage's
output is the reconstruction, the "cleaned" vector, so any detector and stage after it sees the input dimension.
The denoising one corrupts each training input with Gaussian noise of `noise_factor` x the dimension's training
standard deviation, clamped to [0, 1], and learns to give back the clean vector; the plain one sees clean inputs.

The sigmoid output and the clamp assume min-max scaled inputs: fitting refuses training vectors outside [0, 1]
(put a `minmax` stage first). Vectors scored later may fall outside: that is what anomalies do.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.detectors.base import ClipsLike, check_clips, check_state, check_vectors
from models.device import select_device
from models.stages.base import Stage, register_stage
from models.training.loop import TrainSettings, train_loop

_CHUNK = 65536  # rows per forward pass when transforming: bounds activation memory
_RANGE_SLACK = 1e-5  # float rounding of a min-max scaling may land a hair outside [0, 1]


def _mlp(sizes: Sequence[int], last: nn.Module) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(n_in, n_out), last if i == len(sizes) - 2 else nn.ReLU()]
    return nn.Sequential(*layers)


class GroupAutoencoder(nn.Module):
    """One encoder/decoder pair per group of consecutive input dimensions; the outputs are concatenated."""

    def __init__(self, groups: Sequence[int], layers: Sequence[Sequence[int]]) -> None:
        super().__init__()
        self.groups = [int(g) for g in groups]
        self.pairs = nn.ModuleList()
        for g, hidden in zip(self.groups, layers):
            sizes = [g, *[int(h) for h in hidden]]
            self.pairs.append(nn.Sequential(_mlp(sizes, nn.ReLU()), _mlp(sizes[::-1], nn.Sigmoid())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([pair(part) for pair, part in zip(self.pairs, torch.split(x, self.groups, dim=1))], dim=1)


def default_layers(g: int) -> list[int]:
    """Halving from the group size down to a code of max(2, g // 16): 128 gives the study's 64, 32, 16, 8."""
    code, sizes, h = max(2, g // 16), [], g // 2
    while h > code:
        sizes.append(h)
        h //= 2
    return sizes + [code]


@register_stage
class FeatureAutoencoder(Stage):
    """The deep denoising autoencoder stage (`ddae`); `noise_factor=0` trains it as a plain autoencoder."""

    name = "ddae"
    quick_params = {"groups": [8, 4], "layers": [[4, 2], [8]], "epochs": 3, "progress": False}

    def __init__(
        self,
        groups: Sequence[int] | None = None,
        layers: Sequence[Sequence[int]] | None = None,
        noise_factor: float = 0.7,
        epochs: int = 100,
        batch_size: int = 64,
        lr: float = 1e-4,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
        num_threads: int | None = None,
    ) -> None:
        self.groups = groups
        self.layers = layers
        self.noise_factor = noise_factor
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        self.device = device
        self.progress = progress
        self.num_threads = num_threads

    def _architecture(self, dim: int) -> tuple[list[int], list[list[int]]]:
        groups = [dim] if self.groups is None else [int(g) for g in self.groups]
        if any(g < 1 for g in groups) or sum(groups) != dim:
            raise ValueError(f"{self.name}: groups {groups} must be positive sizes that add up to the input dim {dim}")
        layers = [default_layers(g) for g in groups] if self.layers is None else [list(h) for h in self.layers]
        if len(layers) != len(groups) or any(not h or min(h) < 1 for h in layers):
            raise ValueError(f"{self.name}: layers {layers} must give one non-empty list of positive sizes per group "
                             f"({len(groups)} groups)")
        return groups, [[int(s) for s in h] for h in layers]

    def _build(self, groups: list[int], layers: list[list[int]]) -> GroupAutoencoder:
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG state
            torch.manual_seed(self.seed)
            return GroupAutoencoder(groups, layers)

    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "FeatureAutoencoder":
        if not self.noise_factor >= 0:
            raise ValueError(f"{self.name}: noise_factor must be >= 0, got {self.noise_factor!r}")
        checked = check_clips(clips, what=f"{self.name}.fit clips")
        lengths = [c.shape[0] for c in checked]
        X = torch.cat(checked)
        lo, hi = float(X.min()), float(X.max())
        if lo < -_RANGE_SLACK or hi > 1 + _RANGE_SLACK:
            raise ValueError(f"{self.name}: training vectors must lie in [0, 1] for its sigmoid output, got "
                             f"[{lo:.4g}, {hi:.4g}]; put a minmax stage before it")
        groups, layers = self._architecture(X.shape[1])
        device = select_device(self.device)
        noise_std = (self.noise_factor * X.std(dim=0, correction=0)).to(device)
        net = self._build(groups, layers)

        def loss(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
            noisy = (x + noise_std * torch.randn_like(x)).clamp_(0.0, 1.0) if self.noise_factor > 0 else x
            return F.mse_loss(module(noisy).float(), x.float())

        settings = TrainSettings.of(self, device, validation_split=0.0)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)  # the corruption noise is drawn from the global generator
            history = train_loop(net, X, lengths, loss, settings)
        self._set_fitted(net, groups, layers, device, history[-1]["loss"] if history else None)
        return self

    def _set_fitted(self, net: GroupAutoencoder, groups: list[int], layers: list[list[int]], device: torch.device,
                    final_loss: float | None) -> None:
        self.net_ = net.to(device).eval()
        self.groups_, self.layers_ = groups, layers
        self.device_ = device
        self.final_loss_ = final_loss

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "net_")

    def out_dim(self) -> int:
        self._check_fitted()
        return sum(self.groups_)

    @torch.no_grad()
    def transform(self, X: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        X = check_vectors(X, self.out_dim())
        out = [self.net_(X[s : s + _CHUNK].to(self.device_)).to(X.device) for s in range(0, X.shape[0], _CHUNK)]
        return torch.cat(out) if out else X.new_zeros((0, self.out_dim()))

    def learned(self) -> dict[str, Any]:
        self._check_fitted()
        return {"groups": self.groups_, "layers": self.layers_, "final_loss": self.final_loss_}

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {f"net.{k}": v.detach().cpu() for k, v in self.net_.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], learned: dict[str, Any] | None = None
                        ) -> "FeatureAutoencoder":
        meta = learned or {}
        if "groups" not in meta or "layers" not in meta:
            raise ValueError(f"{self.name}: learned metadata needs 'groups' and 'layers' (the network's shape)")
        groups, layers = [int(g) for g in meta["groups"]], [[int(s) for s in h] for h in meta["layers"]]
        net = self._build(groups, layers)
        expected = {f"net.{k}": v for k, v in net.state_dict().items()}
        check_state(state, expected, self.name)
        net.load_state_dict({k[len("net.") :]: v for k, v in state.items()})
        final = meta.get("final_loss")
        self._set_fitted(net, groups, layers, select_device(self.device), None if final is None else float(final))
        return self


@register_stage
class PlainAutoencoder(FeatureAutoencoder):
    """The plain autoencoder option (`ae_clean`): the same networks trained on uncorrupted inputs."""

    name = "ae_clean"

    def __init__(
        self,
        groups: Sequence[int] | None = None,
        layers: Sequence[Sequence[int]] | None = None,
        noise_factor: float = 0.0,
        epochs: int = 100,
        batch_size: int = 64,
        lr: float = 1e-4,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
        num_threads: int | None = None,
    ) -> None:
        super().__init__(groups, layers, noise_factor, epochs, batch_size, lr, seed, device, progress, num_threads)
