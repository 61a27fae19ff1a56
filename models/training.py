"""Training: the mini-batch loop shared by the neural detectors, and `train_bundle`, clips in -> bundle out.

All training vectors sit in one CPU tensor and each step gathers a random batch with `index_select`: a per-item
`Dataset` + `DataLoader` costs more in Python overhead than the small dense models here spend computing. On CUDA
the whole tensor is copied to the GPU when it fits comfortably, else each batch goes through pinned memory; the
forward pass runs under `torch.autocast`. The validation split is by clip, not by vector: neighbouring vectors of
one clip overlap (context stacking), so a vector-level split would leak training data into validation.

`train_bundle` is the whole offline recipe (select normal training clips, hold some out, featurise, fit, set the
threshold on the held-out scores, write the bundle). It lives in `models`, not `offline`, because both
`asd-offline train` and the monitor's demo mode call it and `monitor` may not import `offline`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from models.threshold import MIN_GAMMA_SCORES, fit_threshold, parse_threshold_spec

if TYPE_CHECKING:
    from models.features import LogMelConfig

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
_GPU_RESIDENT_FRACTION = 0.25  # copy the data set to the GPU when it takes at most this share of free memory
_EVAL_BATCH = 8192
_LOAD_GROUP = 64  # clips read and featurised together: bounds the raw audio held at once

# train_bundle's config: the keys of configs/<model>.yaml (documented in offline/train.py)
CONFIG_KEYS = {"model", "feature", "params", "holdout", "threshold", "seed", "window_seconds", "hop_seconds"}
DEFAULTS: dict[str, Any] = {"holdout": 0.1, "threshold": "gamma", "seed": 0, "window_seconds": 10.0,
                            "hop_seconds": 1.0}


class ClipLike(Protocol):
    """What training needs of a clip record (`offline.datasets.records.Clip` has it; `models` cannot import it)."""

    path: Path
    machine: str
    id: str
    split: str
    label: str | None


@dataclass(frozen=True)
class TrainSettings:
    """How to run the loop; detectors fill it from their hyper-parameters."""

    epochs: int
    batch_size: int
    lr: float
    validation_split: float
    seed: int
    device: torch.device
    progress: bool = True
    num_threads: int | None = None  # CPU threads for this fit; None keeps torch's setting
    desc: str = "training"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"epochs must be >= 1 and batch_size >= 2, got {self.epochs} and {self.batch_size}")
        if not 0.0 <= self.validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {self.validation_split}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


def split_by_clip(
    lengths: Sequence[int], fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of training and validation vectors, holding out `fraction` of whole clips (none if < 2 clips)."""
    n_val = round(fraction * len(lengths)) if len(lengths) >= 2 else 0
    n_val = min(n_val, len(lengths) - 1)
    offsets = torch.tensor([0, *lengths]).cumsum(0)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    val_clips = sorted(order[:n_val])

    def rows(clips: list[int]) -> torch.Tensor:
        if not clips:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat([torch.arange(int(offsets[c]), int(offsets[c + 1])) for c in clips])

    train_clips = sorted(order[n_val:])
    return rows(train_clips), rows(val_clips)


class _Feeder:
    """Gathers rows of the training tensor onto the training device."""

    def __init__(self, X: torch.Tensor, device: torch.device) -> None:
        self.device = device
        self.X = X
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if X.numel() * X.element_size() <= _GPU_RESIDENT_FRACTION * free:
                self.X = X.to(device)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        if self.X.device == self.device:
            return self.X.index_select(0, idx.to(self.device))
        # pin_memory() takes a block from torch's caching host allocator, which keeps it alive until the async copy
        # has finished, so the next batch cannot overwrite it mid-transfer
        return self.X.index_select(0, idx).pin_memory().to(self.device, non_blocking=True)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _autocast(device: torch.device) -> tuple[contextlib.AbstractContextManager, torch.amp.GradScaler | None]:
    """bf16 autocast where the GPU has it (no loss scaling needed), fp16 + GradScaler otherwise; nothing on CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext(), None
    if torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), None
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def _progress(enabled: bool, desc: str, total: int):  # -> rich.progress.Progress | None (lazy import)
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        transient=False,
    )
    progress.add_task(desc, total=total, status="")
    return progress


def train_loop(
    module: nn.Module, X: torch.Tensor, lengths: Sequence[int], loss_fn: LossFn, settings: TrainSettings
) -> list[dict[str, float]]:
    """Train `module` with Adam on the rows of `X` (clips of `lengths` rows, in order); returns per-epoch history.

    `loss_fn(module, batch)` returns the mean loss of a batch. A last batch of one row is skipped: BatchNorm
    cannot train on it.
    """
    s = settings
    if sum(lengths) != X.shape[0]:
        raise ValueError(f"lengths sum to {sum(lengths)} but X has {X.shape[0]} rows")
    gen = torch.Generator().manual_seed(s.seed)
    train_rows, val_rows = split_by_clip(lengths, s.validation_split, gen)
    module.to(s.device)
    feed = _Feeder(X, s.device)
    # fused: one kernel for all parameters instead of a dozen small ops each (~15 % of a CPU step here)
    optimizer = torch.optim.Adam(module.parameters(), lr=s.lr, fused=True)
    autocast, scaler = _autocast(s.device)
    n_batches = math.ceil(len(train_rows) / s.batch_size)
    history: list[dict[str, float]] = []
    progress = _progress(s.progress, s.desc, s.epochs)
    log.info(
        "%s: %d training / %d validation vectors, %d batches per epoch, %d epochs on %s",
        s.desc, len(train_rows), len(val_rows), n_batches, s.epochs, s.device,
    )
    with _threads(s.num_threads), progress or contextlib.nullcontext():
        for epoch in range(1, s.epochs + 1):
            t0 = time.perf_counter()
            module.train()
            order = train_rows[torch.randperm(len(train_rows), generator=gen)]
            total, seen = torch.zeros((), device=s.device), 0  # summed on the device: no sync per step
            for start in range(0, len(order), s.batch_size):
                idx = order[start : start + s.batch_size]
                if len(idx) < 2:
                    continue
                batch = feed(idx)
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    loss = loss_fn(module, batch)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                total += loss.detach().float() * len(idx)
                seen += len(idx)
            mean_loss = float(total) / max(seen, 1)
            if not math.isfinite(mean_loss):
                raise RuntimeError(f"{s.desc}: training diverged (loss {mean_loss}) at epoch {epoch}; try a lower lr")
            entry = {"epoch": epoch, "loss": mean_loss, "seconds": time.perf_counter() - t0}
            if len(val_rows):
                entry["val_loss"] = evaluate_loss(module, feed, val_rows, loss_fn)
            history.append(entry)
            log.debug("%s epoch %d: %s", s.desc, epoch, entry)
            if progress is not None:
                val = f" val {entry['val_loss']:.4g}" if "val_loss" in entry else ""
                progress.update(progress.task_ids[0], advance=1, status=f"loss {entry['loss']:.4g}{val}")
    module.eval()
    return history


@torch.no_grad()
def evaluate_loss(module: nn.Module, feed: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor,
                  loss_fn: LossFn) -> float:
    """Mean loss over `rows` in eval mode (BatchNorm running statistics), in float32 for a stable number."""
    module.eval()
    total = 0.0
    for start in range(0, len(rows), _EVAL_BATCH):
        idx = rows[start : start + _EVAL_BATCH]
        total += float(loss_fn(module, feed(idx))) * len(idx)
    return total / len(rows)


# -- clips in, bundle out ------------------------------------------------------------------------------------------


def check_config(config: dict[str, Any], where: str = "config") -> None:
    """Top-level keys and section types; values are checked where they are used, with messages naming them."""
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(CONFIG_KEYS)}")
    for key in ("feature", "params"):
        if not isinstance(config.get(key, {}), dict):
            raise ValueError(f"{where}: {key!r} must be a mapping")


def _featurise(
    clips: Sequence[ClipLike], feature: "LogMelConfig", device: torch.device, progress: bool
) -> tuple[list[torch.Tensor], float]:
    """Load and featurise clips in groups, keeping only the CPU feature matrices (raw audio is dropped per group).

    Returns the features and the seconds of audio read."""
    from models.audio import load_wav

    feats: list[torch.Tensor] = []
    seconds = 0.0
    bar = _progress(progress, "features", len(clips))
    with bar or contextlib.nullcontext():
        for start in range(0, len(clips), _LOAD_GROUP):
            group = clips[start : start + _LOAD_GROUP]
            wavs = [load_wav(c.path, sample_rate=feature.sample_rate, resample=True)[0] for c in group]
            for clip, wav in zip(group, wavs):
                if feature.n_vectors(wav.shape[0]) == 0:
                    raise ValueError(f"{clip.path}: {wav.shape[0]} samples is too short for one feature vector")
                seconds += wav.shape[0] / feature.sample_rate
            feats += [f.cpu() for f in feature.extract_batch(wavs, device)]
            if bar is not None:
                bar.update(bar.task_ids[0], advance=len(group))
    return feats, seconds


def select_training_clips(clips: Sequence[ClipLike], machine: str, ids: Sequence[str] | None) -> list[ClipLike]:
    """Normal training clips of one machine type (and ids); the error lists what the data does have."""
    chosen = [c for c in clips if c.machine == machine and c.split == "train" and c.label != "anomaly"]
    if ids:
        known = sorted({c.id for c in chosen})
        missing = sorted(set(ids) - set(known))
        if missing:
            raise ValueError(f"no normal training clips of {machine} for id(s) {missing}; ids present: {known}")
        chosen = [c for c in chosen if c.id in set(ids)]
    if not chosen:
        machines = sorted({c.machine for c in clips if c.split == "train"})
        raise ValueError(f"no normal training clips of machine {machine!r} (machines with training clips: {machines})")
    return chosen


def split_holdout(
    clips: Sequence[ClipLike], holdout: float, seed: int, gamma: bool
) -> tuple[list[ClipLike], list[ClipLike]]:
    """Seeded split into clips to fit and clips whose scores set the threshold (at least one when holdout > 0).

    A gamma threshold needs `MIN_GAMMA_SCORES` scores: too few is an error here, before any audio is read."""
    n = len(clips)
    n_hold = max(1, round(holdout * n)) if holdout > 0 else 0
    if n - n_hold < 1:
        raise ValueError(f"{n} training clip(s): too few to hold out {holdout:.0%} and still train")
    if gamma and (n_hold or n) < MIN_GAMMA_SCORES:
        raise ValueError(
            f"a gamma threshold needs at least {MIN_GAMMA_SCORES} held-out clips, got {n_hold or n} "
            f"({n} training clips, holdout {holdout}); raise --holdout or use --threshold percentile:P / fixed:V"
        )
    hold_idx = set(np.random.default_rng(seed).permutation(n)[:n_hold].tolist())
    fit = [c for i, c in enumerate(clips) if i not in hold_idx]
    return fit, [c for i, c in enumerate(clips) if i in hold_idx]


def train_bundle(
    clips: Sequence[ClipLike],
    model_name: str,
    machine: str,
    out: str | Path,
    config: dict[str, Any] | None = None,
    *,
    ids: Sequence[str] | None = None,
    data_source: str | None = None,
    device: str | None = None,
    progress: bool | None = None,
) -> Path:
    """Train `model_name` on the normal training clips of `machine`, set the threshold, write a bundle at `out`.

    `config` has the keys of configs/<model>.yaml (`CONFIG_KEYS`, documented in offline/train.py).
    `device` and `progress` (None: the config's or the default) drive feature extraction and, when the detector
    has such hyper-parameters, its training. Used by `asd-offline train` and by the monitor's demo mode.
    Bad settings fail before any audio is read.
    """
    from models.bundle import save_bundle  # lazy: models.bundle -> detectors -> this module
    from models.detectors import get_detector
    from models.device import describe, select_device
    from models.features import feature_from_dict

    config = dict(config or {})
    check_config(config)
    if config.get("model", model_name) != model_name:
        raise ValueError(f"the config is for model {config['model']!r}, but model {model_name!r} was requested")
    settings = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    cls = get_detector(model_name)
    feature = feature_from_dict({"kind": "logmel", **cls.default_feature, **(config.get("feature") or {})})
    params = dict(config.get("params") or {})
    if "seed" in params:
        raise ValueError("set `seed` at the top level of the config, not under `params` (one seed drives everything)")
    seed = int(settings["seed"])
    for key, value in (("seed", seed), ("device", device), ("progress", progress)):
        if value is not None and key in cls.param_names():
            params[key] = value
    detector = cls.from_params(params)
    threshold_kw = parse_threshold_spec(str(settings["threshold"]))
    holdout = float(settings["holdout"])
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")

    chosen = select_training_clips(clips, machine, ids)
    fit_clips, hold_clips = split_holdout(chosen, holdout, seed, gamma=threshold_kw["method"] == "gamma")

    device = select_device(device or params.get("device", "auto"))
    progress = bool(params.get("progress", True)) if progress is None else progress
    log.info("%s/%s: %d clips to fit, %d held out, features on %s", model_name, machine, len(fit_clips),
             len(hold_clips), describe(device))
    t0 = time.perf_counter()
    fit_feats, fit_seconds = _featurise(fit_clips, feature, device, progress)
    hold_feats, hold_seconds = _featurise(hold_clips, feature, device, progress) if hold_clips else ([], 0.0)
    t_feat = time.perf_counter() - t0
    n_vectors = sum(int(f.shape[0]) for f in fit_feats)
    cpu0 = time.process_time()  # CPU time of all threads: tells a slow machine from a busy one
    detector.fit(fit_feats)
    t_fit = time.perf_counter() - t0 - t_feat
    cpu_fit = time.process_time() - cpu0
    scores = detector.score(hold_feats or fit_feats)
    threshold, info = fit_threshold(scores, **threshold_kw)

    history = getattr(detector, "history_", None) or []
    summary: dict[str, Any] = {
        "data": data_source,
        "n_clips": len(chosen),
        "n_fit_clips": len(fit_clips),
        "n_holdout_clips": len(hold_clips),
        "holdout": holdout,
        "n_vectors": n_vectors,
        "audio_seconds": round(fit_seconds + hold_seconds, 3),
        "threshold_scores": "holdout" if hold_clips else "training",
        "score_stats": {"mean": float(np.mean(scores)), "std": float(np.std(scores)),
                        "min": float(np.min(scores)), "max": float(np.max(scores))},
        "seed": seed,
        "device": describe(device),
        "feature_seconds": round(t_feat, 3),
        "fit_seconds": round(t_fit, 3),
        "fit_cpu_seconds": round(cpu_fit, 3),
        "epochs_run": len(history),
        "final_loss": history[-1]["loss"] if history else None,
        "final_val_loss": history[-1].get("val_loss") if history else None,
    }
    used_ids = sorted({c.id for c in chosen})
    path = save_bundle(
        out, detector, feature, threshold, info, machine, used_ids, summary,
        window_seconds=float(settings["window_seconds"]), hop_seconds=float(settings["hop_seconds"]),
        extra={"config": {**config, "params": detector.get_params()}},
    )
    log.info("%s/%s: threshold %.6g (%s), bundle %s", model_name, machine, threshold, info["method"], path)
    return path
