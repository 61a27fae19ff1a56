"""The Anomaly Transformer's own parts: the Gaussian prior and its learned widths, the association discrepancy,
where the minimax training detaches (and that one summed step is the reference's two backward passes), the
per-frame score, crops, the learning-rate schedule and checkpoint choice, state, and parameter checks."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from models.detectors.anomaly_transformer.detector import AnomalyTransformer, MinimaxStep, anomaly_energy
from models.detectors.anomaly_transformer.network import (
    AnomalyAttention,
    AnomalyTransformerNet,
    association_discrepancy,
    gaussian_prior,
    kl_rows,
    minimax_terms,
    squash_sigma,
)
from models.training.loop import Batch, StepContext, kept_epoch
from models.training.recipe import build_spec

QUICK = AnomalyTransformer.quick_params


def _rows(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random row-stochastic association maps."""
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2.0 * torch.randn(*shape, generator=g), dim=-1)


def _sequences(n: int, seed: int, t: int = 40, dim: int = 12) -> list[torch.Tensor]:
    """Normal clips with structure in time and across dimensions: two slow oscillations (random phase per clip)
    mixed into `dim` channels, plus a little noise, around an offset."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(123).normal(size=(4, dim))
    out = []
    for _ in range(n):
        steps = np.arange(t)[:, None]
        phase = rng.uniform(0, 2 * np.pi, size=2)
        waves = np.c_[np.sin(2 * np.pi * steps / 9 + phase[0]), np.cos(2 * np.pi * steps / 9 + phase[0]),
                      np.sin(2 * np.pi * steps / 5 + phase[1]), np.cos(2 * np.pi * steps / 5 + phase[1])]
        out.append(torch.tensor(waves @ mix + 0.1 * rng.normal(size=(t, dim)) + 3.0, dtype=torch.float32))
    return out


@pytest.fixture(scope="module")
def fitted() -> AnomalyTransformer:
    return AnomalyTransformer(**{**QUICK, "epochs": 6}).fit(_sequences(16, seed=0))


# -- the prior ---------------------------------------------------------------------------------------------------


def test_prior_rows_sum_to_one_and_are_gaussians_of_their_own_sigma() -> None:
    L = 9
    idx = torch.arange(L, dtype=torch.float32)
    dist = (idx[:, None] - idx[None, :]).abs()
    sigma = torch.linspace(0.3, 2.0, L)[None, None, :]  # [B=1, H=1, L]: one width per row
    prior = gaussian_prior(sigma, dist)[0, 0]
    torch.testing.assert_close(prior.sum(dim=-1), torch.ones(L))
    for i in range(L):
        s = float(sigma[0, 0, i])
        g = np.exp(-((np.arange(L) - i) ** 2) / (2 * s * s))
        np.testing.assert_allclose(prior[i].numpy(), g / g.sum(), rtol=1e-5, atol=1e-7)
        assert int(prior[i].argmax()) == i  # the peak is the frame itself
    # a wider prior spreads its mass: row 4 (interior) is symmetric, and a narrow one is nearly one-hot
    torch.testing.assert_close(prior[4, :4], prior[4, 5:].flip(0))
    narrow = gaussian_prior(torch.full((1, 1, L), 1e-3), dist)[0, 0]
    torch.testing.assert_close(narrow, torch.eye(L))


def test_sigma_is_squashed_as_the_reference_and_lies_in_0_to_2_frames() -> None:
    raw = torch.tensor([-10.0, -0.3, 0.0, 0.2, 10.0])
    expected = [3.0 ** (1.0 / (1.0 + math.exp(-5.0 * float(r))) + 1e-5) - 1.0 for r in raw]
    np.testing.assert_allclose(squash_sigma(raw).numpy(), expected, rtol=1e-6, atol=1e-7)  # float32 near 0
    assert float(squash_sigma(raw).min()) > 0.0 and float(squash_sigma(raw).max()) < 2.0 + 1e-4


def test_attention_prior_comes_from_the_sigma_projection_per_head_and_position() -> None:
    torch.manual_seed(0)
    att = AnomalyAttention(d_model=8, n_heads=2, frames=6, dropout=0.0)
    x = torch.randn(3, 6, 8)
    _, series, prior = att(x)
    assert series.shape == prior.shape == (3, 2, 6, 6)
    torch.testing.assert_close(series.sum(-1), torch.ones(3, 2, 6))
    torch.testing.assert_close(prior.sum(-1), torch.ones(3, 2, 6))
    sigma = squash_sigma(att.sigma(x)).transpose(1, 2)  # [B, H, L]
    torch.testing.assert_close(prior, gaussian_prior(sigma, att.distances))
    q = att.query(x).view(3, 6, 2, 4).transpose(1, 2)
    k = att.key(x).view(3, 6, 2, 4).transpose(1, 2)
    torch.testing.assert_close(series, torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1))  # 1/sqrt(4)
    # shorter sequences use the leading part of the distance table
    _, _, p4 = att(x[:, :4])
    assert p4.shape == (3, 2, 4, 4)


# -- the association discrepancy ---------------------------------------------------------------------------------


def test_symmetric_kl_is_zero_for_equal_maps_and_positive_otherwise() -> None:
    p, s = _rows((2, 3, 5, 5), seed=1), _rows((2, 3, 5, 5), seed=2)
    assert torch.allclose(association_discrepancy([p], [p]), torch.zeros(2, 5), atol=1e-6)
    dis = association_discrepancy([s], [p])
    assert dis.shape == (2, 5) and bool((dis > 0).all())
    torch.testing.assert_close(dis, association_discrepancy([p], [s]))  # symmetric
    # the reference's KL (a 1e-4 floor in both logs), averaged over heads, then the mean of the two directions'
    # sums over layers divided by the layer count
    pn, sn = p.double().numpy(), s.double().numpy()
    kl = lambda a, b: (a * (np.log(a + 1e-4) - np.log(b + 1e-4))).sum(-1).mean(1)  # noqa: E731
    np.testing.assert_allclose(kl_rows(p, s).numpy(), kl(pn, sn), rtol=1e-5)
    np.testing.assert_allclose(association_discrepancy([s, p], [p, p]).numpy(), (kl(sn, pn) + kl(pn, sn)) / 2,
                               rtol=1e-5, atol=1e-7)


def _net(layers: int = 2) -> AnomalyTransformerNet:
    torch.manual_seed(3)
    return AnomalyTransformerNet(dim=5, frames=7, d_model=8, n_heads=2, layers=layers, d_ff=8, dropout=0.0)


def _grads(loss: torch.Tensor, net: AnomalyTransformerNet) -> dict[str, torch.Tensor | None]:
    names, params = zip(*net.named_parameters())
    return dict(zip(names, torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)))


def _none_or_zero(g: torch.Tensor | None) -> bool:
    return g is None or not bool(g.abs().gt(0).any())


def test_minimax_terms_detach_the_other_player() -> None:
    net = _net(layers=2)
    recon, series, prior = net(torch.randn(4, 7, 5))
    series_term, prior_term = minimax_terms(series, prior)
    g_series, g_prior = _grads(series_term, net), _grads(prior_term, net)
    sigma_params = [n for n in g_series if ".attention.sigma." in n]
    qk_last = [n for n in g_series if n.startswith("layers.1.attention.") and (".query." in n or ".key." in n)]
    assert sigma_params and qk_last
    # the series term (loss1's discrepancy) reaches Q and K but not one sigma projection: the prior is detached
    assert all(_none_or_zero(g_series[n]) for n in sigma_params)
    assert not any(_none_or_zero(g_series[n]) for n in qk_last)
    # the prior term (loss2's) reaches every sigma projection but not the series of the layer it is compared
    # with: the series is detached (earlier layers' Q/K still shape the later layers' inputs, hence the last layer)
    assert not any(_none_or_zero(g_prior[n]) for n in sigma_params)
    assert all(_none_or_zero(g_prior[n]) for n in qk_last)
    # the reconstruction never depends on the prior
    g_mse = _grads(F.mse_loss(recon, torch.zeros_like(recon)), net)
    assert all(_none_or_zero(g_mse[n]) for n in sigma_params)
    # without the detach both terms would be the same number: the values agree, only the gradients differ
    torch.testing.assert_close(series_term, prior_term)


def test_one_summed_step_is_the_references_two_backward_passes_then_one_adam_step() -> None:
    net = _net(layers=2)
    twin = copy.deepcopy(net)
    x = torch.randn(4, 7, 5)
    k, lr = 3.0, 1e-2
    step = MinimaxStep(net, k=k, lr_decay=0.5)
    step.train_step(Batch(x), StepContext(step.optimizers(lr), torch.device("cpu")))
    # the reference: loss1.backward(retain_graph=True); loss2.backward(); optimizer.step()
    opt = torch.optim.Adam(twin.parameters(), lr=lr)
    recon, series, prior = twin(x)
    mse = F.mse_loss(recon, x)
    series_term, prior_term = minimax_terms(series, prior)
    opt.zero_grad()
    (mse - k * series_term).backward(retain_graph=True)
    (mse + k * prior_term).backward()
    opt.step()
    for (name, a), b in zip(net.named_parameters(), twin.parameters()):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)  # the same summed gradient
        if not name.endswith("key.bias"):  # its true gradient is 0 (a softmax ignores a shift per row): Adam's
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)  # step on rounding noise differs
    # the validation loss is the reconstruction MSE alone
    with torch.no_grad():
        recon, _, _ = net(x)
        torch.testing.assert_close(step.loss(Batch(x)), F.mse_loss(recon, x))


# -- scoring -----------------------------------------------------------------------------------------------------


def test_a_crop_scores_the_mean_of_softmax_weighted_frame_errors(fitted: AnomalyTransformer) -> None:
    crop = _sequences(1, seed=5)[0][:8]
    with torch.no_grad():
        x = (crop[None] - fitted.mean_) / fitted.scale_
        recon, series, prior = fitted.net_(x)
    err = (recon - x).square().mean(-1)[0].double().numpy()
    dis = sum(50.0 * (kl_rows(s, p) + kl_rows(p, s)) for s, p in zip(series, prior))[0].double().numpy()
    weights = np.exp(-dis - (-dis).max())
    weights /= weights.sum()
    assert fitted.score([crop])[0] == pytest.approx(float((weights * err).mean()), rel=1e-5)
    energy = anomaly_energy(recon, x, series, prior, 50.0)
    assert energy.shape == (1, 8) and float(energy.sum()) <= float(err.max()) + 1e-6  # weights sum to 1


def test_a_window_longer_than_a_crop_scores_the_mean_of_its_crops(fitted: AnomalyTransformer) -> None:
    long = _sequences(1, seed=6, t=21)[0]  # crops of 8 start at 0, 8, 13
    parts = [long[s : s + 8] for s in (0, 8, 13)]
    np.testing.assert_allclose(fitted.score([long]), fitted.score(parts).mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="shorter than the model's crop of 8"):
        fitted.score([long[:7]])


def test_a_tiny_fit_scores_structurally_perturbed_sequences_higher(fitted: AnomalyTransformer) -> None:
    normal = _sequences(12, seed=11)
    rng = np.random.default_rng(12)
    anomalous = []
    for clip in _sequences(12, seed=13):
        x = clip.clone()
        # break the structure across channels: half of them mirrored around the offset (the sign of their
        # oscillations flipped), so every channel keeps its mean and spread and only the correlations change
        cols = rng.permutation(x.shape[1])[: x.shape[1] // 2]
        x[:, cols] = 6.0 - x[:, cols]
        anomalous.append(x)
    y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    assert roc_auc_score(y, fitted.score(normal + anomalous)) >= 0.9
    # and across time: the same frames in a shuffled order (each frame, hence every channel's values, kept)
    g = torch.Generator().manual_seed(14)
    shuffled = [c[torch.randperm(c.shape[0], generator=g)] for c in _sequences(12, seed=13)]
    assert roc_auc_score(y, fitted.score(normal + shuffled)) >= 0.9


# -- training, state and checks -----------------------------------------------------------------------------------


def test_history_halves_the_learning_rate_and_keeps_the_lowest_validation_mse() -> None:
    det = AnomalyTransformer(**{**QUICK, "epochs": 4, "lr_decay": 0.5}).fit(_sequences(10, seed=0))
    assert [h["lr"] for h in det.history_] == pytest.approx([QUICK["lr"] * 0.5**e for e in range(4)])
    assert all({"loss", "mse", "assdis", "val_loss"} <= set(h) for h in det.history_)
    assert det.kept_epoch_ == kept_epoch(det.history_) and det.learned()["kept_epoch"] == det.kept_epoch_


def test_state_round_trip_and_buffers_stay_out_of_the_state(fitted: AnomalyTransformer) -> None:
    state = fitted.state_dict()
    assert {"mean_", "scale_"} <= set(state) and not [k for k in state if "distances" in k or "positions" in k]
    clips = _sequences(3, seed=9)
    fresh = AnomalyTransformer(**fitted.get_params()).load_state_dict(state, fitted.learned())
    np.testing.assert_array_equal(fresh.score(clips), fitted.score(clips))
    with pytest.raises(ValueError, match="mean_"):
        AnomalyTransformer(**fitted.get_params()).load_state_dict({k: v for k, v in state.items() if k != "mean_"})
    with pytest.raises(ValueError, match="shape"):  # a model of another width
        AnomalyTransformer(**{**fitted.get_params(), "d_ff": 32}).load_state_dict(state)


@pytest.mark.parametrize("bad", [{"frames": 0}, {"d_model": 10, "n_heads": 3}, {"layers": 0}, {"dropout": 1.0},
                                 {"k": -1.0}, {"temperature": 0.0}, {"lr_decay": 0.0}, {"lr_decay": 1.5},
                                 {"patience": 0}])
def test_bad_params_raise_value_error(bad: dict) -> None:
    with pytest.raises(ValueError):
        AnomalyTransformer(**{**QUICK, **bad}).fit(_sequences(4, seed=0))


def test_clips_shorter_than_a_crop_and_window_level_features_are_refused() -> None:
    with pytest.raises(ValueError, match="fewer frames than the crop of 8"):
        AnomalyTransformer(**QUICK).fit([c[:6] for c in _sequences(4, seed=0)])
    with pytest.raises(ValueError, match="one vector per window"):
        build_spec("anomaly_transformer", {"feature": {"kind": "clipstats"}})
    spec = build_spec("anomaly_transformer", {})
    assert spec.feature.to_dict()["kind"] == "logmel" and spec.feature.dim == 128
