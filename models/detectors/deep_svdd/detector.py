"""Deep SVDD (Ruff et al., ICML 2018) on any feature vectors: a bias-free network maps normal vectors close to a
fixed centre c; a vector's score is its squared distance to c.

What follows the paper and its reference implementation (lukasruff/Deep-SVDD-PyTorch):
- c is the mean network output of one forward pass over the training vectors (before any Deep SVDD update, after
  pre-training when there is one); entries with |c_i| < 0.1 are pushed to +-0.1 (0 goes to +0.1), because a
  centre at zero is reachable by scaling all weights down.
- One-class objective: minimise the mean squared distance. Soft-boundary: minimise
  R^2 + 1/nu * mean(max(0, ||phi(x) - c||^2 - R^2)), with R held fixed during each epoch and, after `warm_up_epochs`
  epochs (10), set to the (1 - nu) quantile of the epoch's training distances (the reference updates it every
  batch; the per-epoch update the issue asks for is steadier). nu = 0.1 bounds the share of training vectors
  outside the sphere.
- Optional autoencoder pre-training (`pretrain_epochs` > 0, the reference's default): a mirrored bias-free
  decoder is trained with the encoder on reconstruction MSE; the encoder, weight for weight, is the Deep SVDD
  network that training then starts from.
- Adam with weight decay 1e-6 for both phases (the paper's network weight regulariser, lambda).
- Score: ||phi(x) - c||^2 (>= 0) for one-class; minus R^2 for soft-boundary (negative inside the sphere).

Input vectors are standardised with the training mean/std first (learned state): feature kinds differ in scale by
orders of magnitude (dB log-mel, min-max clip statistics, another system's score vectors), and the centre rule's
0.1 floor presumes representations of order 1. The detector is vector-level: a window's score is the mean of its
vectors' scores, so the monitor scores each new vector once.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Sequence

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
from models.detectors.deep_svdd.network import Autoencoder, Encoder
from models.device import select_device
from models.features import LogMelConfig
from models.training import distributed
from models.training.loop import Batch, Step, TrainSettings, fit_step

OBJECTIVES = ("one-class", "soft-boundary")
CENTRE_EPS = 0.1  # |c_i| below this is pushed to +-CENTRE_EPS (the reference's eps)


class _AdamStep(Step):
    """One Adam with weight decay (the paper's lambda ||W||^2 term) on the step's module."""

    def __init__(self, module: nn.Module, weight_decay: float, loss_fn: Callable | None = None) -> None:
        super().__init__(module, loss_fn)
        self.weight_decay = weight_decay

    def optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.module.parameters(), lr=lr, weight_decay=self.weight_decay, fused=True)]


def _reconstruction(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(module(x).float(), x.float())


class SvddStep(_AdamStep):
    """The Deep SVDD phase: the centre from a first pass over the training vectors (`begin`), the objective per
    batch (`loss`), and the soft-boundary radius after each epoch (`end_epoch`)."""

    def __init__(self, module: Encoder, objective: str, nu: float, warm_up_epochs: int, weight_decay: float) -> None:
        super().__init__(module, weight_decay)
        self.objective, self.nu, self.warm_up_epochs = objective, nu, warm_up_epochs
        self.c: torch.Tensor | None = None
        self.radius = 0.0
        self._epoch_dists: list[torch.Tensor] = []

    @torch.no_grad()
    def begin(self, batches: Callable[[], Iterator[Batch]]) -> None:
        # training mode, as the loss will see the network; a last batch of one row is left out (batch norm needs two)
        self.module.train()
        total, n = None, 0
        for batch in batches():
            if batch.x.shape[0] < 2:
                continue
            out = self.module(batch.x).float()
            total = out.sum(0) if total is None else total + out.sum(0)
            n += out.shape[0]
        if total is None:
            raise ValueError("deep_svdd: too few training vectors for the centre (need at least 2)")
        self.c = centre_from_mean(total / n)

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        assert self.c is not None, "begin() sets the centre"
        return (self.module(x).float() - self.c).square().sum(dim=1)

    def loss(self, batch: Batch) -> torch.Tensor:
        dist = self.distances(batch.x)
        if self.module.training and self.objective == "soft-boundary":
            self._epoch_dists.append(dist.detach())
        return objective_loss(dist, self.objective, self.radius, self.nu)

    def end_epoch(self, epoch: int) -> dict[str, float]:
        dists, self._epoch_dists = self._epoch_dists, []
        if self.objective != "soft-boundary":
            return {}
        if epoch >= self.warm_up_epochs and dists:  # every process's distances: one radius for all of them
            self.radius = radius_quantile(distributed.all_gather_cat(torch.cat(dists)), self.nu)
        return {"radius": self.radius}


def centre_from_mean(mean: torch.Tensor, eps: float = CENTRE_EPS) -> torch.Tensor:
    """The centre c: the mean representation with entries nearer 0 than `eps` pushed out to +-eps (0 to +eps)."""
    c = mean.detach().clone().float()
    small = c.abs() < eps
    c[small] = torch.where(c[small] < 0, -eps, eps)
    return c


def radius_quantile(dist: torch.Tensor, nu: float) -> float:
    """R: the (1 - nu) quantile of the distances' square roots (so a share nu of training vectors lies outside)."""
    return float(torch.quantile(dist.double().sqrt(), 1.0 - nu))


def objective_loss(dist: torch.Tensor, objective: str, radius: float, nu: float) -> torch.Tensor:
    """The batch loss of either objective from squared distances to c (R is a constant within an epoch)."""
    if objective == "soft-boundary":
        return radius**2 + (dist - radius**2).clamp(min=0).mean() / nu
    return dist.mean()


@register
class DeepSvdd(Detector):
    """Deep SVDD, one-class or soft-boundary (registry name `deep_svdd`)."""

    name = "deep_svdd"
    granularity = "vector"
    # the DCASE baseline's 5-frame log-mel vectors, so that a side-by-side run differs in the detector only
    default_feature = LogMelConfig(n_mels=128, n_fft=1024, hop_length=512, power=2.0, context=5).to_dict()
    quick_params = {"hidden": [32], "rep_dim": 8, "epochs": 10, "pretrain_epochs": 5, "batch_size": 64,
                    "lr": 1e-3, "warm_up_epochs": 2, "progress": False, "num_threads": 1}

    def __init__(
        self,
        objective: str = "one-class",
        nu: float = 0.1,
        hidden: Sequence[int] = (128, 64),
        rep_dim: int = 32,
        epochs: int = 50,
        pretrain_epochs: int = 100,
        warm_up_epochs: int = 10,
        batch_size: int = 128,
        lr: float = 1e-4,
        weight_decay: float = 1e-6,
        validation_split: float = 0.1,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
        num_threads: int | None = None,
    ) -> None:
        self.objective = objective
        self.nu = nu
        self.hidden = list(hidden)  # a list, as it comes back from JSON and YAML
        self.rep_dim = rep_dim
        self.epochs = epochs
        self.pretrain_epochs = pretrain_epochs
        self.warm_up_epochs = warm_up_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.validation_split = validation_split
        self.seed = seed
        self.device = device
        self.progress = progress
        self.num_threads = num_threads

    # -- fitting ----------------------------------------------------------------------------------------------------

    def _check_params(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"{self.name}: objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if not 0.0 < float(self.nu) <= 1.0:
            raise ValueError(f"{self.name}: nu must be in (0, 1], got {self.nu!r}")
        if int(self.rep_dim) < 1 or any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"{self.name}: hidden sizes and rep_dim must be >= 1, got {list(self.hidden)}, "
                             f"{self.rep_dim}")
        if int(self.pretrain_epochs) < 0 or int(self.warm_up_epochs) < 0:
            raise ValueError(f"{self.name}: pretrain_epochs and warm_up_epochs must be >= 0")
        if not float(self.weight_decay) >= 0.0:
            raise ValueError(f"{self.name}: weight_decay must be >= 0, got {self.weight_decay!r}")

    def _build(self, dim: int) -> Encoder:
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG state
            torch.manual_seed(self.seed)
            return Encoder(dim, list(self.hidden), int(self.rep_dim))

    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "DeepSvdd":
        self._check_params()
        checked = check_clips(clips, what=f"{self.name}.fit clips")
        lengths = [c.shape[0] for c in checked]
        X = torch.cat(checked)
        del checked
        if X.shape[0] < 2:
            raise ValueError(f"{self.name}: need at least 2 training vectors, got {X.shape[0]}")
        dim = X.shape[1]
        mean, scale = standardizer(X)
        X.sub_(mean).div_(scale)  # in place: X is our own concatenation
        device = select_device(self.device)
        net = self._build(dim)
        self.pretrain_history_: list[dict[str, float]] = []
        if int(self.pretrain_epochs) > 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                ae = Autoencoder(net, dim, list(self.hidden), int(self.rep_dim))
            step = _AdamStep(ae, float(self.weight_decay), _reconstruction)
            self.pretrain_history_ = fit_step(step, X, lengths,
                                              TrainSettings.of(self, device, epochs=int(self.pretrain_epochs),
                                                                               desc=f"{self.name} AE"))
        svdd = SvddStep(net, self.objective, float(self.nu), int(self.warm_up_epochs), float(self.weight_decay))
        self.history_ = fit_step(svdd, X, lengths, TrainSettings.of(self, device))
        assert svdd.c is not None
        self._set_fitted(net, svdd.c, svdd.radius, mean, scale, device)
        return self

    def _set_fitted(self, net: Encoder, c: torch.Tensor, radius: float, mean: torch.Tensor, scale: torch.Tensor,
                    device: torch.device) -> None:
        self.net_ = net.to(device).eval()
        self.c_ = c.float().to(device)
        self.radius_ = float(radius)
        self.mean_ = mean.float().to(device)
        self.scale_ = scale.float().to(device)
        self.dim_ = int(mean.shape[0])
        self.device_ = device

    # -- scoring ----------------------------------------------------------------------------------------------------

    def _distance(self, x: torch.Tensor) -> torch.Tensor:
        return (self.net_((x - self.mean_) / self.scale_) - self.c_).square().sum(dim=1)

    def score_vectors(self, X: torch.Tensor, ids: Sequence[str] | None = None) -> torch.Tensor:
        self._check_fitted()
        dist = per_row_chunks(self._distance, check_vectors(X, self.dim_), self.device_)
        return dist - self.radius_**2 if self.objective == "soft-boundary" else dist

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "net_")

    def learned(self) -> dict[str, Any]:
        self._check_fitted()
        return {"objective": self.objective, "radius": self.radius_}

    # -- persistence ------------------------------------------------------------------------------------------------

    @staticmethod
    def _collect(net: Encoder, c: torch.Tensor, radius: float, mean: torch.Tensor,
                 scale: torch.Tensor) -> dict[str, torch.Tensor]:
        state = {"c_": c, "radius_": torch.tensor(float(radius), dtype=torch.float64), "mean_": mean,
                 "scale_": scale}
        state.update({f"net.{k}": v for k, v in net.state_dict().items()})
        return {k: v.detach().cpu() for k, v in state.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return self._collect(self.net_, self.c_, self.radius_, self.mean_, self.scale_)

    def load_state_dict(self, state: dict[str, Any], learned: dict[str, Any] | None = None) -> "DeepSvdd":
        self._check_params()
        mean = state.get("mean_") if isinstance(state, dict) else None
        if not isinstance(mean, torch.Tensor) or mean.ndim != 1:
            raise ValueError(f"{self.name}: state needs a 1-D tensor 'mean_' (the input dimension)")
        dim = int(mean.shape[0])
        net = self._build(dim)
        check_state(state, self._collect(net, torch.zeros(int(self.rep_dim)), 0.0, torch.zeros(dim),
                                         torch.ones(dim)), self.name)
        radius = float(state["radius_"])
        if not math.isfinite(radius) or radius < 0:
            raise ValueError(f"{self.name}: radius_ must be a finite non-negative number, got {radius}")
        net.load_state_dict({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")})
        self._set_fitted(net, state["c_"], radius, state["mean_"], state["scale_"], select_device(self.device))
        return self
