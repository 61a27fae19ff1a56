"""The mini-batch loop shared by every neural detector and stage.

All training vectors sit in one CPU tensor `[N, dim]` (clips concatenated in order, `lengths` rows each) and each
step gathers its batch with `index_select`: a per-item `Dataset` + `DataLoader` costs more in Python overhead than
the small dense models here spend computing. On CUDA the whole tensor is copied to the GPU when it fits comfortably,
else each batch goes through pinned memory; the forward pass runs under `torch.autocast`.

A batch is either rows (`[B, dim]`, every training row once per epoch in a random order) or windows (`[B, T, dim]`,
random windows of `T` consecutive vectors within clips, about one pass over each clip per epoch), with the clip's
label per row or window when the detector asks for labels (classifiers of machine ids). The validation split is by
clip, not by vector: neighbouring vectors of one clip overlap (context stacking), so a vector-level split would leak
training data into validation.

What a step does is pluggable (`Step`): the default minimises one loss with one Adam; a GAN-style step uses several
optimizers and calls `ctx.minimize` once per loss.

Under `torchrun` (`asd-offline train --nproc N`) the loop runs data-parallel (`models.training.distributed`): the
module is wrapped in DistributedDataParallel and each process trains on its share of every batch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from models.training import distributed

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
_GPU_RESIDENT_FRACTION = 0.25  # copy the data set to the GPU when it takes at most this share of free memory
_EVAL_BATCH = 8192


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
    window: int | None = None  # None: row batches [B, dim]; T: windows [B, T, dim] of T consecutive vectors
    # windows only: an epoch draws a window at every `window_stride`-th start of each clip (1: every window, as
    # AEGAN-AD's reference does), each start jittered within its stride; None: about one pass over each clip
    window_stride: int | None = None
    # checkpoint choice on held-out *normal* clips only: keep the epoch with the lowest validation loss (needs a
    # validation split), and stop after `patience` epochs without a new lowest (None: run every epoch)
    keep_best: bool = False
    patience: int | None = None

    @classmethod
    def of(cls, owner: object, device: torch.device, **overrides: object) -> "TrainSettings":
        """Settings from a detector's or stage's same-named hyper-parameters (`epochs`, `batch_size`, `lr`,
        `validation_split`, `seed`, `progress`, `num_threads`; `desc` is its name), `overrides` winning: the one
        mapping every neural part shares."""
        casts = {"epochs": int, "batch_size": int, "lr": float, "validation_split": float, "seed": int,
                 "progress": bool, "num_threads": lambda v: v}
        values = {k: cast(getattr(owner, k)) for k, cast in casts.items() if k not in overrides}
        return cls(**{"device": device, "desc": getattr(owner, "name", "training"), **values, **overrides})

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"epochs must be >= 1 and batch_size >= 2, got {self.epochs} and {self.batch_size}")
        if not 0.0 <= self.validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {self.validation_split}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1 vectors, got {self.window}")
        if self.window_stride is not None and (self.window is None or self.window_stride < 1):
            raise ValueError(f"window_stride needs window batches and must be >= 1, got {self.window_stride}")
        if (self.keep_best or self.patience is not None) and self.validation_split <= 0:
            raise ValueError("keep_best and patience choose epochs by validation loss: set validation_split > 0")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 epochs, got {self.patience}")


@dataclass
class Batch:
    """One training batch: `x` is `[B, dim]` rows or `[B, T, dim]` windows; `y` the labels (clip label index per
    row or window) when the data has labels."""

    x: torch.Tensor
    y: torch.Tensor | None = None


class StepContext:
    """What a step uses to update parameters: mixed-precision scaling and the optimizers, in one place.
    `average_gradients`: under several processes without DistributedDataParallel (`Step.ddp` False), each
    optimizer's gradients are averaged over the processes before its step."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer], device: torch.device,
                 average_gradients: bool = False) -> None:
        self.optimizers = list(optimizers)
        self.autocast, self.scaler = _autocast(device)
        self.average_gradients = average_gradients

    def minimize(self, loss: torch.Tensor, optimizer: int = 0) -> None:
        """One gradient step of `optimizers[optimizer]` on `loss`."""
        opt = self.optimizers[optimizer]
        opt.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.average_gradients:
            distributed.average_gradients(p for group in opt.param_groups for p in group["params"])
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()


class Step:
    """The default step: minimise `loss_fn(module, batch.x)` with one fused Adam. Subclasses override `loss`
    (e.g. to use labels), `optimizers` and `train_step` (several losses and optimizers)."""

    # under several processes, wrap the module in DistributedDataParallel; False for steps it cannot run (a double
    # backward, as WGAN-GP's gradient penalty): their gradients are averaged per optimizer step instead
    ddp: bool = True

    def __init__(self, module: nn.Module, loss_fn: LossFn | None = None) -> None:
        self.module = module
        self.loss_fn = loss_fn

    def optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        # fused: one kernel for all parameters instead of a dozen small ops each (~15 % of a CPU step here)
        return [torch.optim.Adam(self.module.parameters(), lr=lr, fused=True)]

    def loss(self, batch: Batch) -> torch.Tensor:
        """The mean loss of a batch (also the validation loss)."""
        if self.loss_fn is None:
            raise NotImplementedError("give a loss_fn or override Step.loss")
        return self.loss_fn(self.module, batch.x)

    def train_step(self, batch: Batch, ctx: StepContext) -> torch.Tensor:
        """Update the parameters on one batch; returns the loss to report (detached or not)."""
        with ctx.autocast:
            loss = self.loss(batch)
        ctx.minimize(loss)
        return loss

    def begin(self, batches: Callable[[], Iterator[Batch]]) -> None:
        """Called once before the first epoch; `batches()` yields the training items (no validation ones) in
        order, for steps that need a pass over the data first (Deep SVDD's centre). Default: nothing."""

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Called after each epoch's updates, before validation; what it returns joins the epoch's history entry
        (Deep SVDD's radius). Default: nothing."""
        return {}


def split_by_clip(
    lengths: Sequence[int], fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of training and validation vectors, holding out `fraction` of whole clips (none if < 2 clips)."""
    train_clips, val_clips = _split_clips(lengths, fraction, generator)
    offsets = _offsets(lengths)

    def rows(clips: list[int]) -> torch.Tensor:
        if not clips:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat([torch.arange(int(offsets[c]), int(offsets[c + 1])) for c in clips])

    return rows(train_clips), rows(val_clips)


def _offsets(lengths: Sequence[int]) -> torch.Tensor:
    return torch.tensor([0, *lengths]).cumsum(0)


def _split_clips(lengths: Sequence[int], fraction: float, generator: torch.Generator) -> tuple[list[int], list[int]]:
    n_val = round(fraction * len(lengths)) if len(lengths) >= 2 else 0
    n_val = min(n_val, len(lengths) - 1)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


class _Feeder:
    """Gathers rows (or windows of rows) of the training tensor onto the training device."""

    def __init__(self, X: torch.Tensor, device: torch.device) -> None:
        self.device = device
        self.X = X
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if X.numel() * X.element_size() <= _GPU_RESIDENT_FRACTION * free:
                self.X = X.to(device)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        flat = idx.reshape(-1)
        if self.X.device == self.device:
            out = self.X.index_select(0, flat.to(self.device))
        else:
            # pin_memory() takes a block from torch's caching host allocator, which keeps it alive until the async
            # copy has finished, so the next batch cannot overwrite it mid-transfer
            out = self.X.index_select(0, flat).pin_memory().to(self.device, non_blocking=True)
        return out.view(*idx.shape, self.X.shape[1])


class _Sampler:
    """Training and validation batches' row indices: rows, or windows of `window` consecutive rows of one clip."""

    def __init__(self, lengths: Sequence[int], labels: torch.Tensor | None, settings: TrainSettings,
                 generator: torch.Generator) -> None:
        self.gen, self.window, self.stride = generator, settings.window, settings.window_stride
        self.offsets = _offsets(lengths)
        self.clip_of_row = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(list(lengths)))
        self.labels = labels
        if self.window is None:
            self.train, self.val = split_by_clip(lengths, settings.validation_split, generator)
            return
        train_clips, val_clips = _split_clips(lengths, settings.validation_split, generator)
        short = [c for c in train_clips + val_clips if lengths[c] < self.window]
        if short:
            raise ValueError(f"{len(short)} clip(s) have fewer than {self.window} vectors, the training window")
        self.lengths = lengths
        self.train_clips = torch.tensor(train_clips, dtype=torch.long)
        self.val = self._tiles(val_clips)  # fixed, non-overlapping windows: a stable validation loss

    def _tiles(self, clips: list[int]) -> torch.Tensor:
        starts = [int(self.offsets[c]) + k * self.window for c in clips for k in range(self.lengths[c] // self.window)]
        return self._windows(torch.tensor(starts, dtype=torch.long))

    def _windows(self, starts: torch.Tensor) -> torch.Tensor:
        return starts[:, None] + torch.arange(self.window)[None, :]

    def _per_clip(self) -> torch.Tensor:
        """Training windows drawn from each training clip per epoch."""
        lengths = torch.tensor([self.lengths[c] for c in self.train_clips.tolist()], dtype=torch.long)
        if self.stride is None:
            return lengths // self.window
        return (lengths - self.window) // self.stride + 1

    @property
    def n_train(self) -> int:
        if self.window is None:
            return len(self.train)
        return int(self._per_clip().sum())

    def epoch(self) -> torch.Tensor:
        """This epoch's training items in a random order: row indices [n] or window row indices [n, T]."""
        if self.window is None:
            return self.train[torch.randperm(len(self.train), generator=self.gen)]
        per_clip = self._per_clip()
        clips = torch.repeat_interleave(self.train_clips, per_clip)
        room = torch.tensor([self.lengths[c] - self.window + 1 for c in clips.tolist()], dtype=torch.long)
        if self.stride is None:  # anywhere in the clip
            offsets = (torch.rand(len(clips), generator=self.gen) * room).long()
        else:  # the k-th window of a clip starts in [k * stride, (k + 1) * stride), within the clip
            k = torch.cat([torch.arange(int(n)) for n in per_clip]) if len(per_clip) else torch.zeros(0)
            jitter = (torch.rand(len(clips), generator=self.gen) * self.stride).long()
            offsets = torch.minimum(k.long() * self.stride + jitter, room - 1)
        starts = self.offsets[clips] + offsets
        return self._windows(starts[torch.randperm(len(starts), generator=self.gen)])

    def in_order(self) -> torch.Tensor:
        """The training items in data order: rows, or the training clips' non-overlapping windows."""
        return self.train if self.window is None else self._tiles(self.train_clips.tolist())

    def label(self, idx: torch.Tensor) -> torch.Tensor | None:
        if self.labels is None:
            return None
        first = idx if idx.ndim == 1 else idx[:, 0]
        return self.labels[self.clip_of_row[first]]


def fit_step(
    step: Step,
    X: torch.Tensor,
    lengths: Sequence[int],
    settings: TrainSettings,
    labels: torch.Tensor | None = None,
) -> list[dict[str, float]]:
    """Train `step.module` on the rows of `X` (clips of `lengths` rows, in order; `labels` one per clip when the
    step uses them); returns per-epoch history. A last batch of one item is skipped: BatchNorm cannot train on it."""
    s = settings
    if sum(lengths) != X.shape[0]:
        raise ValueError(f"lengths sum to {sum(lengths)} but X has {X.shape[0]} rows")
    if labels is not None and len(labels) != len(lengths):
        raise ValueError(f"{len(labels)} labels for {len(lengths)} clips")
    gen = torch.Generator().manual_seed(s.seed)
    sampler = _Sampler(lengths, labels, s, gen)
    distributed.init_from_env(s.device)
    world, rank = distributed.world_size(), distributed.rank()
    module = step.module.to(s.device)
    if world > 1 and step.ddp:  # the step sees the wrapper (its forward syncs gradients); `module` stays bare
        from torch.nn.parallel import DistributedDataParallel

        step.module = DistributedDataParallel(
            module, device_ids=[torch.cuda.current_device()] if s.device.type == "cuda" else None)
    feed = _Feeder(X, s.device)
    ctx = StepContext(step.optimizers(s.lr), s.device, average_gradients=world > 1 and not step.ddp)
    n_batches = math.ceil(sampler.n_train / s.batch_size)
    history: list[dict[str, float]] = []
    progress = make_progress(s.progress and rank == 0, s.desc, s.epochs)
    step.begin(lambda: (Batch(feed(idx), _to(sampler.label(idx), s.device))
                        for idx in sampler.in_order().split(s.batch_size)))
    log.info(
        "%s: %d training / %d validation %s, %d batches per epoch, %d epochs on %s",
        s.desc, sampler.n_train, len(sampler.val), "vectors" if s.window is None else f"windows of {s.window}",
        n_batches, s.epochs, s.device,
    )
    best: tuple[float, int] = (math.inf, 0)  # (validation loss, epoch)
    kept: dict[str, torch.Tensor] | None = None
    with _threads(s.num_threads), progress or contextlib.nullcontext():
        for epoch in range(1, s.epochs + 1):
            t0 = time.perf_counter()
            step.module.train()  # the wrapper too, under DistributedDataParallel
            order = sampler.epoch()
            total, seen = torch.zeros((), device=s.device), 0  # summed on the device: no sync per step
            for start in range(0, len(order), s.batch_size):
                idx = order[start : start + s.batch_size]
                if len(idx) < 2 * world:  # every process skips it alike (a lone one would wait for the others)
                    continue
                idx = idx[rank::world]  # this process's share of the batch
                loss = step.train_step(Batch(feed(idx), _to(sampler.label(idx), s.device)), ctx)
                total += loss.detach().float() * len(idx)
                seen += len(idx)
            total = distributed.all_sum(total)
            seen = int(distributed.all_sum(torch.tensor(seen, device=s.device)))
            mean_loss = float(total) / max(seen, 1)
            if not math.isfinite(mean_loss):
                raise RuntimeError(f"{s.desc}: training diverged (loss {mean_loss}) at epoch {epoch}; try a lower lr")
            entry = {"epoch": epoch, "loss": mean_loss, **step.end_epoch(epoch), "seconds": time.perf_counter() - t0}
            if len(sampler.val):
                entry["val_loss"] = evaluate_loss(step, feed, sampler)
            history.append(entry)
            log.debug("%s epoch %d: %s", s.desc, epoch, entry)
            if progress is not None:
                val = f" val {entry['val_loss']:.4g}" if "val_loss" in entry else ""
                progress.update(progress.task_ids[0], advance=1, status=f"loss {entry['loss']:.4g}{val}")
            if "val_loss" in entry and entry["val_loss"] < best[0]:
                best = (entry["val_loss"], epoch)
                if s.keep_best:
                    kept = {k: v.detach().clone() for k, v in module.state_dict().items()}
            if s.patience is not None and epoch - best[1] >= s.patience:
                log.info("%s: no lower validation loss for %d epochs: stopped after epoch %d", s.desc, s.patience,
                         epoch)
                break
    step.module = module
    if kept is not None:
        module.load_state_dict(kept)
        log.info("%s: kept epoch %d (lowest validation loss on held-out normal clips, %.4g)", s.desc, best[1],
                 best[0])
    module.eval()
    return history


def kept_epoch(history: Sequence[dict[str, float]]) -> int | None:
    """The epoch `keep_best` restores: the first with the lowest validation loss (None without validation)."""
    scored = [(h["val_loss"], h["epoch"]) for h in history if "val_loss" in h]
    return int(min(scored)[1]) if scored else None


def train_loop(
    module: nn.Module, X: torch.Tensor, lengths: Sequence[int], loss_fn: LossFn, settings: TrainSettings
) -> list[dict[str, float]]:
    """The common case: minimise `loss_fn(module, batch)` with Adam on row (or window) batches."""
    return fit_step(Step(module, loss_fn), X, lengths, settings)


def _to(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device, non_blocking=True)


@torch.no_grad()
def evaluate_loss(step: Step, feed: Callable[[torch.Tensor], torch.Tensor], sampler: _Sampler) -> float:
    """Mean loss over the validation items in eval mode (BatchNorm running statistics), in float32."""
    step.module.eval()
    total = 0.0
    rows = sampler.val
    per_batch = _EVAL_BATCH if rows.ndim == 1 else max(1, _EVAL_BATCH // rows.shape[1])
    device = next(iter(step.module.parameters()), torch.zeros(0)).device
    for start in range(0, len(rows), per_batch):
        idx = rows[start : start + per_batch]
        total += float(step.loss(Batch(feed(idx), _to(sampler.label(idx), device)))) * len(idx)
    return total / len(rows)


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


def make_progress(enabled: bool, desc: str, total: int):  # -> rich.progress.Progress | None (lazy import)
    """A rich progress bar with one task, or None when disabled."""
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
