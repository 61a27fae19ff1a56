"""AEGAN-AD: the reference's network shapes, the WGAN-GP penalty, one optimizer per network, patch sampling at
every start, the [-1, 1] scaling and the one scoring rule (mean per-patch Mahalanobis distance of discriminator
embeddings), computed here independently."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.detectors.aegan_ad import AeganAd
from models.detectors.aegan_ad.detector import AeganStep, gradient_penalty, patches
from models.detectors.aegan_ad.network import AeGan, Discriminator, Generator, check_isize
from models.features import LogMelConfig
from models.training.loop import Batch, StepContext, TrainSettings, _Sampler
from models.training.recipe import build_spec


def _clips(n: int = 6, frames: int = 40, dim: int = 16, seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [torch.tensor(rng.normal(size=(frames, dim)) * 5 - 30, dtype=torch.float32) for _ in range(n)]


def test_full_size_networks_have_the_reference_shapes() -> None:
    gen, critic = Generator(128, 256, 32, 32), Discriminator(128, 32)
    x = torch.rand(2, 1, 128, 128) * 2 - 1
    assert gen.encoder(x).shape == (2, 256, 1, 1)
    out = gen(x)
    assert out.shape == x.shape and out.abs().max() <= 1  # tanh
    value, emb = critic(x)
    assert value.shape == (2, 1) and emb.shape == (2, 512) and critic.embedding_dim == 512
    convs = [m for m in critic.trunk if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256, 512]  # 128 -> 4 by halving
    assert critic.embed[0].groups == 512 and critic.embed[0].kernel_size == (4, 4)  # global depthwise conv
    assert all(abs(float(c.weight.detach().std()) - 0.02) < 0.005 for c in convs)  # DCGAN init


@pytest.mark.parametrize("bad", [8, 24, 100])
def test_patch_side_must_halve_down_to_four(bad: int) -> None:
    with pytest.raises(ValueError, match="power of 2"):
        check_isize(bad)


class _Linear(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = w

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flatten(1) @ self.w, x


def test_gradient_penalty_of_a_linear_critic_is_its_weight_norm_off_one() -> None:
    w = torch.randn(16, 1) * 0.3
    real, fake = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    gp = gradient_penalty(_Linear(w), real, fake)  # grad of w.x is w at every interpolate
    assert float(gp) == pytest.approx((float(w.norm()) - 1) ** 2, rel=1e-5)


def test_critic_and_generator_steps_update_only_their_own_network() -> None:
    torch.manual_seed(0)
    model = AeGan(16, 8, 4, 4)
    step = AeganStep(model, lambda_gp=10.0, feature_match=1.0, n_critic=2, beta1=0.5)
    ctx = StepContext(step.optimizers(1e-3), torch.device("cpu"))
    g0 = [p.detach().clone() for p in model.generator.parameters()]
    d0 = [p.detach().clone() for p in model.discriminator.parameters()]
    batch = Batch(torch.rand(4, 16, 16) * 2 - 1)
    step.train_step(batch, ctx)  # batch 1: a critic step and a generator step
    assert any(not torch.equal(a, b) for a, b in zip(d0, model.discriminator.parameters()))
    g1 = [p.detach().clone() for p in model.generator.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(g0, g1))
    d1 = [p.detach().clone() for p in model.discriminator.parameters()]
    step.train_step(batch, ctx)  # batch 2 with n_critic 2: the critic only
    assert all(torch.equal(a, b) for a, b in zip(g1, model.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d1, model.discriminator.parameters()))
    stats = step.end_epoch(1)
    assert set(stats) == {"critic_loss", "feature_match"}


def test_patch_stride_one_draws_every_start_of_every_clip_once() -> None:
    lengths = [20, 17]
    settings = TrainSettings(epochs=1, batch_size=4, lr=1e-3, validation_split=0.0, seed=0,
                             device=torch.device("cpu"), progress=False, window=16, window_stride=1)
    sampler = _Sampler(lengths, None, settings, torch.Generator().manual_seed(0))
    starts = sorted(sampler.epoch()[:, 0].tolist())
    assert starts == list(range(0, 5)) + list(range(20, 22)) and sampler.n_train == 7
    wide = TrainSettings(**{**settings.__dict__, "window_stride": 3})
    sampler = _Sampler(lengths, None, wide, torch.Generator().manual_seed(0))
    starts = sorted(sampler.epoch()[:, 0].tolist())
    assert len(starts) == 2 + 1 and all(0 <= s <= 4 for s in starts[:2]) and starts[2] == 20
    assert starts[0] < 3 <= starts[1]  # one start per stride, jittered within it


def test_scaling_and_score_are_the_mean_mahalanobis_distance_of_patch_embeddings() -> None:
    clips = _clips()
    det = AeganAd(**{**AeganAd.quick_params, "epochs": 2}).fit(clips)
    lo, hi = float(torch.cat(clips).min()), float(torch.cat(clips).max())
    assert det.centre_ - det.half_ == pytest.approx(lo) and det.centre_ + det.half_ == pytest.approx(hi)
    probe = _clips(1, frames=37, seed=5)[0]
    x = (probe - det.centre_) / det.half_
    starts = [0, 8, 16, 21]  # every score_hop (8) frames, the last one ending at the window's end
    with torch.no_grad():
        emb = det.critic_(patches(torch.stack([x[s : s + 16] for s in starts])))[1].double().numpy()
    d = emb - det.mean_.numpy()
    expected = np.einsum("pi,ij,pj->p", d, det.precision_.numpy(), d).mean()
    assert det.score([probe])[0] == pytest.approx(expected, rel=1e-6)
    assert np.all(np.linalg.eigvalsh(det.precision_.numpy()) > 0)  # shrunk: invertible with few patches
    with pytest.raises(ValueError, match="shorter than"):
        det.score([probe[:10]])


def test_feature_must_be_single_frames_of_isize_bands() -> None:
    for feature in (LogMelConfig(n_mels=128, context=2), LogMelConfig(n_mels=64)):
        with pytest.raises(ValueError, match="n_mels = isize"):
            build_spec("aegan_ad", {"feature": feature.to_dict()})
    build_spec("aegan_ad", {})  # the default feature fits the default network


def test_bad_parameters_and_training_sets_are_refused() -> None:
    with pytest.raises(ValueError, match="power of 2"):
        AeganAd(isize=20).fit(_clips(dim=20))
    with pytest.raises(ValueError, match="n_critic"):
        AeganAd(**{**AeganAd.quick_params, "n_critic": 0}).fit(_clips())
    with pytest.raises(ValueError, match="fewer frames"):
        AeganAd(**AeganAd.quick_params).fit(_clips(frames=10))
    with pytest.raises(ValueError, match="constant"):
        AeganAd(**AeganAd.quick_params).fit([torch.ones(20, 16)] * 3)
