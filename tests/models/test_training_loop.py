"""The generic training loop: row batches, windows sampled within clips, clip labels per batch, several optimizers,
and a validation split by whole clips. A recording `Step` sees exactly what a detector's step would see."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from models.training.loop import Batch, Step, StepContext, TrainSettings, fit_step, train_loop

LENGTHS = [12, 9, 15, 10, 11, 8]


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    """Rows that say where they are: column 0 the clip index, column 1 the row index within the clip."""
    rows = [torch.tensor([[c, r] for r in range(n)], dtype=torch.float32) for c, n in enumerate(LENGTHS)]
    return torch.cat(rows), torch.arange(len(LENGTHS)) * 10  # a label per clip, distinct from the clip index


def _settings(**kw) -> TrainSettings:
    base = dict(epochs=2, batch_size=4, lr=1e-2, validation_split=0.34, seed=0, device=torch.device("cpu"),
                progress=False)
    return TrainSettings(**{**base, **kw})


class Recorder(Step):
    """Minimises a linear map's output and records every training and validation batch."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(2, 1))
        self.train_batches: list[Batch] = []
        self.val_batches: list[Batch] = []

    def loss(self, batch: Batch) -> torch.Tensor:
        (self.train_batches if self.module.training else self.val_batches).append(batch)
        return self.module(batch.x).square().mean()


def test_row_batches_cover_each_training_row_once_per_epoch_and_validate_whole_clips() -> None:
    X, _ = _data()
    step = Recorder()
    history = fit_step(step, X, LENGTHS, _settings())
    assert [h["epoch"] for h in history] == [1, 2] and all("val_loss" in h for h in history)
    seen = torch.cat([b.x for b in step.train_batches])
    val = torch.cat([b.x for b in step.val_batches])
    train_clips, val_clips = set(seen[:, 0].tolist()), set(val[:, 0].tolist())
    assert len(val_clips) == 2 and not train_clips & val_clips  # held out by clip
    per_epoch = sum(LENGTHS[int(c)] for c in train_clips)
    counts = Counter(map(tuple, seen.tolist()))
    assert len(counts) == per_epoch  # every training row was seen
    skipped = 1 if per_epoch % 4 == 1 else 0  # a last batch of one row is skipped (BatchNorm)
    assert sorted(counts.values()).count(2) >= per_epoch - 2 * skipped and max(counts.values()) == 2
    assert all(b.y is None for b in step.train_batches)


def test_window_batches_are_consecutive_rows_of_one_clip_with_the_clip_label() -> None:
    X, labels = _data()
    step = Recorder()
    fit_step(step, X, LENGTHS, _settings(window=5), labels=labels)
    for b in step.train_batches + step.val_batches:
        assert b.x.ndim == 3 and b.x.shape[1:] == (5, 2)
        clips, rows = b.x[..., 0], b.x[..., 1]
        assert (clips == clips[:, :1]).all()  # every window inside one clip
        assert (rows.diff(dim=1) == 1).all()  # of consecutive rows
        assert torch.equal(b.y, (clips[:, 0] * 10).long())
    starts = torch.cat([b.x[:, 0, 1] for b in step.train_batches])
    assert len(set(starts.tolist())) > 3  # random offsets, not one fixed tiling


def test_clips_shorter_than_the_window_are_refused() -> None:
    X, _ = _data()
    with pytest.raises(ValueError, match="fewer than 9 vectors"):
        fit_step(Recorder(), X, LENGTHS, _settings(window=9))


def test_labels_must_be_one_per_clip_and_lengths_must_match() -> None:
    X, labels = _data()
    with pytest.raises(ValueError, match="labels for 6 clips"):
        fit_step(Recorder(), X, LENGTHS, _settings(), labels=labels[:3])
    with pytest.raises(ValueError, match="lengths sum"):
        fit_step(Recorder(), X[:-1], LENGTHS, _settings())


class TwoOptimizers(Step):
    """A GAN-shaped step: two modules, two optimizers, one `minimize` each per batch."""

    def __init__(self) -> None:
        super().__init__(nn.ModuleDict({"a": nn.Linear(2, 1), "b": nn.Linear(2, 1)}))

    def optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD(self.module["a"].parameters(), lr=lr),
                torch.optim.SGD(self.module["b"].parameters(), lr=lr)]

    def loss(self, batch: Batch) -> torch.Tensor:
        return self.module["a"](batch.x).square().mean() + self.module["b"](batch.x).square().mean()

    def train_step(self, batch: Batch, ctx: StepContext) -> torch.Tensor:
        with ctx.autocast:
            loss_a = self.module["a"](batch.x).square().mean()
        ctx.minimize(loss_a, 0)
        with ctx.autocast:
            loss_b = (self.module["b"](batch.x) - 1.0).square().mean()
        ctx.minimize(loss_b, 1)
        return loss_a + loss_b


def test_a_step_with_two_optimizers_updates_both_modules() -> None:
    X, _ = _data()
    step = TwoOptimizers()
    before = {k: v.clone() for k, v in step.module.state_dict().items()}
    fit_step(step, X / 10, LENGTHS, _settings(epochs=3, validation_split=0.0))
    after = step.module.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_train_loop_is_deterministic_per_seed() -> None:
    X, _ = _data()

    def run(seed: int) -> list[float]:
        torch.manual_seed(0)
        module = nn.Linear(2, 1)
        hist = train_loop(module, X, LENGTHS, lambda m, x: m(x).square().mean(), _settings(seed=seed))
        return [h["loss"] for h in hist]

    assert run(1) == run(1) and run(1) != run(2)
