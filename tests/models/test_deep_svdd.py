"""Deep SVDD's own maths: the networks cannot collapse (no bias, no affine batch norm), the centre rule, both
objectives and the soft-boundary radius, pre-training that starts the encoder, and the training loop's hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.detectors.deep_svdd.detector import (
    DeepSvdd,
    SvddStep,
    centre_from_mean,
    objective_loss,
    radius_quantile,
)
from models.detectors.deep_svdd.network import Autoencoder, Encoder
from models.training.loop import Batch, Step, TrainSettings, fit_step

QUICK = DeepSvdd.quick_params


def _clips(seed: int = 0, n: int = 12, t: int = 40, dim: int = 10) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(3, dim))
    return [torch.tensor(rng.normal(size=(t, 3)) @ w + 0.2 * rng.normal(size=(t, dim)) + 4.0, dtype=torch.float32)
            for _ in range(n)]


def test_networks_have_no_bias_and_no_affine_batch_norm() -> None:
    enc = Encoder(10, [16, 8], 4)
    ae = Autoencoder(enc, 10, [16, 8], 4)
    for module in (enc, ae):
        assert all(name.endswith("weight") for name, _ in module.named_parameters())
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm1d)]
        assert linears and all(m.bias is None for m in linears) and all(not m.affine for m in norms)
    assert [m.weight.shape for m in enc.modules() if isinstance(m, nn.Linear)] == [(16, 10), (8, 16), (4, 8)]
    assert ae.encoder is enc  # pre-training trains the Deep SVDD network itself
    assert [m.weight.shape for m in ae.decoder if isinstance(m, nn.Linear)] == [(8, 4), (16, 8), (10, 16)]


def test_centre_entries_near_zero_are_pushed_to_plus_or_minus_eps() -> None:
    c = centre_from_mean(torch.tensor([0.5, 0.05, -0.05, 0.0, -0.3, 0.1]))
    assert c.tolist() == pytest.approx([0.5, 0.1, -0.1, 0.1, -0.3, 0.1])


def test_radius_is_the_one_minus_nu_quantile_of_distances() -> None:
    dist = torch.arange(1, 101, dtype=torch.float32) ** 2  # square roots 1..100
    assert radius_quantile(dist, 0.1) == pytest.approx(np.quantile(np.arange(1, 101), 0.9))
    r = 3.0
    d = torch.tensor([1.0, 4.0, 16.0, 25.0])
    assert float(objective_loss(d, "soft-boundary", r, 0.5)) == pytest.approx(9 + (7 + 16) / 4 / 0.5)
    assert float(objective_loss(d, "one-class", r, 0.5)) == pytest.approx(d.mean().item())


def test_one_class_scores_are_squared_distances_to_the_centre() -> None:
    det = DeepSvdd(**QUICK).fit(_clips())
    X = torch.cat(_clips(seed=1))
    with torch.no_grad():
        z = det.net_((X - det.mean_) / det.scale_)
    expected = (z - det.c_).square().sum(1)
    torch.testing.assert_close(det.score_vectors(X), expected, rtol=1e-5, atol=1e-6)
    assert float(det.score_vectors(X).min()) >= 0 and det.radius_ == 0.0
    assert (det.c_.abs() >= 0.1 - 1e-7).all()
    assert len(det.pretrain_history_) == QUICK["pretrain_epochs"] and len(det.history_) == QUICK["epochs"]
    assert det.history_[-1]["loss"] < det.history_[0]["loss"]


def test_soft_boundary_sets_the_radius_after_warm_up_and_subtracts_it() -> None:
    params = {**QUICK, "objective": "soft-boundary", "nu": 0.2, "warm_up_epochs": 3, "epochs": 6}
    det = DeepSvdd(**params).fit(_clips())
    radii = [h["radius"] for h in det.history_]
    assert radii[:2] == [0.0, 0.0] and all(r > 0 for r in radii[2:])  # epoch 3 is the first after warm-up
    assert det.radius_ == radii[-1] and det.learned() == {"objective": "soft-boundary", "radius": det.radius_}
    X = torch.cat(_clips(seed=1))
    one_class = DeepSvdd(**{**params, "objective": "one-class"})
    one_class.load_state_dict(det.state_dict())  # the same network and centre, scored without the radius
    torch.testing.assert_close(det.score_vectors(X), one_class.score_vectors(X) - det.radius_**2)
    assert float(det.score_vectors(X).min()) < 0  # vectors inside the sphere score below zero


def test_pretraining_starts_the_encoder_from_the_autoencoder() -> None:
    """Both fits start from the same seeded encoder and run the same Deep SVDD phase: only the pre-trained weights
    reaching that phase can make their scores differ (an autoencoder with its own copy of the encoder would not)."""
    clips = _clips()
    params = {**QUICK, "validation_split": 0.0}
    pre = DeepSvdd(**params).fit(clips)
    fresh = DeepSvdd(**{**params, "pretrain_epochs": 0}).fit(clips)
    X = torch.cat(clips)
    assert not torch.allclose(pre.score_vectors(X), fresh.score_vectors(X))
    assert fresh.pretrain_history_ == [] and pre.pretrain_history_[-1]["loss"] < pre.pretrain_history_[0]["loss"]
    same = DeepSvdd(**params).fit(clips)
    torch.testing.assert_close(same.score_vectors(X), pre.score_vectors(X))


def test_bad_hyper_parameters_are_refused() -> None:
    for bad, match in (({"objective": "hard"}, "objective"), ({"nu": 0.0}, "nu"), ({"rep_dim": 0}, "rep_dim"),
                       ({"pretrain_epochs": -1}, "pretrain_epochs"), ({"weight_decay": -1.0}, "weight_decay")):
        with pytest.raises(ValueError, match=match):
            DeepSvdd(**{**QUICK, **bad}).fit(_clips())


def test_a_tampered_radius_is_refused() -> None:
    det = DeepSvdd(**QUICK).fit(_clips())
    state = det.state_dict()
    state["radius_"] = torch.tensor(float("nan"), dtype=torch.float64)
    with pytest.raises(ValueError, match="radius_"):
        DeepSvdd(**QUICK).load_state_dict(state)


class _Recorder(Step):
    """Counts what the loop's hooks see."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module, lambda m, x: m(x).square().mean())
        self.begun, self.ended = 0, []

    def begin(self, batches) -> None:
        self.begun += sum(b.x.shape[0] for b in batches())

    def end_epoch(self, epoch: int) -> dict[str, float]:
        self.ended.append(epoch)
        return {"marker": float(epoch)}


@pytest.mark.parametrize("window", [None, 5])
def test_loop_hooks_see_the_training_items_once_and_each_epoch(window: int | None) -> None:
    lengths = [20] * 10
    X = torch.randn(sum(lengths), 3)
    step = _Recorder(nn.Linear(3, 2))
    settings = TrainSettings(epochs=3, batch_size=8, lr=1e-3, validation_split=0.2, seed=0,
                             device=torch.device("cpu"), progress=False, window=window)
    history = fit_step(step, X, lengths, settings)
    per_clip = 20 if window is None else 20 // window
    assert step.begun == 8 * per_clip  # the 8 training clips' items, not the 2 validation clips'
    assert step.ended == [1, 2, 3] and [h["marker"] for h in history] == [1.0, 2.0, 3.0]


def test_svdd_step_centre_ignores_a_last_batch_of_one_row() -> None:
    enc = Encoder(4, [6], 3)
    step = SvddStep(enc, "one-class", 0.1, 0, 0.0)
    x = torch.randn(9, 4)
    step.begin(lambda: iter([Batch(x[:8]), Batch(x[8:])]))
    enc.train()
    with torch.no_grad():
        expected = centre_from_mean(enc(x[:8]).mean(0))
    torch.testing.assert_close(step.c, expected)
