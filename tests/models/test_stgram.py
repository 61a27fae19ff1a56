"""STgram-MFN's own parts: the `stgram` feature (log-mel + raw frames), the Tgram's linear map as the reference's
strided convolution, MobileFaceNet's reference shapes, the ArcFace margin, crops, checkpoint choice on held-out
normal clips, and the feature checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from models.detectors.base import crop_starts
from models.detectors.stgram_mfn.detector import StgramMfn
from models.detectors.stgram_mfn.network import ArcFace, MobileFaceNet, StgramMFN, TgramNet, MOBILEFACENET_BLOCKS
from models.features import LogMelConfig, feature_from_dict
from models.features.stgram import StgramConfig
from models.training.loop import Step, TrainSettings, fit_step, kept_epoch
from models.training.recipe import build_spec
from tests.helpers import SR, machine_audio


def test_stgram_frames_are_the_log_mel_then_the_raw_samples() -> None:
    cfg = StgramConfig(sample_rate=SR, n_fft=512, hop_length=128, n_mels=40)
    x = machine_audio(1.5, seed=3)
    v = cfg.extract(x)
    mel = LogMelConfig(sample_rate=SR, n_fft=512, hop_length=128, n_mels=40).extract(x)
    assert v.shape == (mel.shape[0], 40 + 512) and cfg.dim == 552
    torch.testing.assert_close(torch.as_tensor(v[:, :40]), torch.as_tensor(mel), rtol=0, atol=0)
    frames = np.stack([x[i * 128 : i * 128 + 512] for i in range(v.shape[0])])
    np.testing.assert_array_equal(np.asarray(v[:, 40:]), frames)
    assert feature_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="n_mels"):
        StgramConfig(n_mels=0)


def test_tgram_extractor_is_the_reference_strided_convolution() -> None:
    torch.manual_seed(0)
    n_fft, hop, n_mels, T = 64, 32, 8, 10
    net = TgramNet(n_fft, n_mels, T)
    wave = torch.randn(2, (T - 1) * hop + n_fft)
    frames = wave.unfold(1, n_fft, hop)  # [B, T, n_fft]: the feature's raw half
    conv = nn.Conv1d(1, n_mels, n_fft, hop, bias=False)
    conv.weight.data = net.extractor.weight.data[:, None, :]
    torch.testing.assert_close(net.extractor(frames).transpose(1, 2), conv(wave[:, None, :]))
    assert [type(m) for m in net.encoder[0]] == [nn.LayerNorm, nn.LeakyReLU, nn.Conv1d]
    assert net.encoder[0][0].normalized_shape == (T,) and net.encoder[0][1].negative_slope == 0.2


def test_mobilefacenet_has_the_reference_shapes_for_a_10_s_crop() -> None:
    mfn = MobileFaceNet(128, 311, MOBILEFACENET_BLOCKS, 64, 512, 128)
    depthwise = [m for m in mfn.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (8, 20)]
    assert len(depthwise) == 1 and depthwise[0].groups == 512  # the reference's linear7 for 128 x ~313
    with torch.no_grad():
        mfn.eval()
        assert mfn(torch.zeros(1, 2, 128, 311)).shape == (1, 128)


def test_arcface_adds_the_margin_to_the_own_class_only() -> None:
    torch.manual_seed(1)
    head = ArcFace(6, 4, margin=0.7, scale=30.0)
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 1])
    cos = torch.nn.functional.normalize(x) @ torch.nn.functional.normalize(head.weight).T
    logits = head(x, y)
    theta = torch.acos(cos.clamp(-1, 1))
    own = torch.where(theta + 0.7 < math.pi, torch.cos(theta + 0.7), cos - math.sin(math.pi - 0.7) * 0.7)
    expected = 30.0 * cos.clone()
    expected[torch.arange(5), y] = 30.0 * own[torch.arange(5), y]
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    plain = ArcFace(6, 4, margin=0.0, scale=30.0)
    plain.weight = head.weight
    torch.testing.assert_close(plain(x, y), 30.0 * cos, rtol=1e-5, atol=1e-5)  # no margin: scaled cosines


def test_crops_tile_the_window_and_end_at_its_end() -> None:
    assert crop_starts(311, 311) == [0]
    assert crop_starts(622, 311) == [0, 311]
    assert crop_starts(700, 311) == [0, 311, 389]
    with pytest.raises(ValueError, match="shorter than the model's crop of 311"):
        crop_starts(310, 311)


def _clips(n_per_id: int = 6, t: int = 40, dim: int = 160, seed: int = 0) -> tuple[list[torch.Tensor], list[str]]:
    rng = np.random.default_rng(seed)
    clips, ids = [], []
    for k in range(3):
        for _ in range(n_per_id):
            clips.append(torch.tensor(rng.normal(size=(t, dim)) + 2.0 * k, dtype=torch.float32))
            ids.append(f"id_{k:02d}")
    return clips, ids


def test_a_window_scores_the_mean_of_its_crops() -> None:
    clips, ids = _clips()
    det = StgramMfn(**StgramMfn.quick_params).fit(clips, ids)
    long = clips[0]  # 40 frames, crops of 16 start at 0, 16, 24
    parts = [long[s : s + 16] for s in (0, 16, 24)]
    np.testing.assert_allclose(det.score([long], ids[:1]), det.score(parts, ids[:1] * 3).mean(), rtol=1e-6)
    assert det.kept_epoch_ == kept_epoch(det.history_) and det.learned()["classes"] == ["id_00", "id_01", "id_02"]
    with pytest.raises(ValueError, match=r"machine id\(s\) \['id_09'\] were not among the trained ids"):
        det.score([long], ["id_09"])
    with pytest.raises(ValueError, match="shorter than the model's crop"):
        det.score([long[:10]], ids[:1])


def test_training_needs_two_ids_and_clips_as_long_as_a_crop() -> None:
    clips, ids = _clips()
    with pytest.raises(ValueError, match="at least 2 ids"):
        StgramMfn(**StgramMfn.quick_params).fit(clips[:4], ids[:4])
    with pytest.raises(ValueError, match="fewer frames than the crop of 16"):
        StgramMfn(**StgramMfn.quick_params).fit([c[:12] for c in clips], ids)


def test_the_feature_must_be_stgram_with_the_same_mel_bands() -> None:
    with pytest.raises(ValueError, match=r"takes the feature kind\(s\) \['stgram'\], not 'logmel'"):
        build_spec("stgram_mfn", {"feature": {"kind": "logmel"}})
    with pytest.raises(ValueError, match="64 mel bands but params.n_mels is 128"):
        build_spec("stgram_mfn", {"feature": {"n_mels": 64}})
    spec = build_spec("stgram_mfn", {"feature": {"n_mels": 64}, "params": {"n_mels": 64}})
    assert spec.feature.dim == 64 + 1024


class _Snapshots(Step):
    """Records the parameters at the end of each epoch (what that epoch's validation loss is measured on)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module, lambda m, x: (m(x) - 3.0).square().mean())
        self.states: list[dict[str, torch.Tensor]] = []

    def end_epoch(self, epoch: int) -> dict[str, float]:
        self.states.append({k: v.detach().clone() for k, v in self.module.state_dict().items()})
        return {}


def test_keep_best_restores_the_epoch_with_the_lowest_validation_loss_and_patience_stops() -> None:
    torch.manual_seed(0)
    X = torch.randn(200, 4)
    step = _Snapshots(nn.Linear(4, 1))
    settings = TrainSettings(epochs=12, batch_size=16, lr=0.5, validation_split=0.3, seed=0,
                             device=torch.device("cpu"), progress=False, keep_best=True, patience=3)
    history = fit_step(step, X, [20] * 10, settings)  # lr 0.5 overshoots: the loss does not fall monotonically
    best = kept_epoch(history)
    losses = [h["val_loss"] for h in history]
    assert best == 1 + int(np.argmin(losses))
    for k, v in step.module.state_dict().items():
        torch.testing.assert_close(v, step.states[best - 1][k])
    assert len(history) <= best + 3 and (len(history) == 12 or len(history) == best + 3)
    with pytest.raises(ValueError, match="validation_split > 0"):
        TrainSettings(epochs=2, batch_size=4, lr=1e-3, validation_split=0.0, seed=0, device=torch.device("cpu"),
                      keep_best=True)


def test_stgram_network_embeds_crops() -> None:
    net = StgramMFN(3, 8, 32, 16, [[2, 8, 1, 2]], 8, 16, 8, 0.7, 30.0).eval()
    with torch.no_grad():
        assert net(torch.randn(4, 16, 40)).shape == (4, 8)
        assert net(torch.randn(4, 16, 40), torch.tensor([0, 1, 2, 0])).shape == (4, 3)


def test_a_bundle_whose_feature_disagrees_with_the_network_is_refused(tmp_path) -> None:
    import json

    from models.bundle import BundleError, load_bundle, save_bundle

    clips, ids = _clips()
    det = StgramMfn(**StgramMfn.quick_params).fit(clips, ids)
    feature = StgramConfig(n_mels=128, n_fft=32, hop_length=16)
    save_bundle(tmp_path / "b", det, feature, 1.0, {"method": "fixed", "value": 1.0}, "fan", ["id_00"], {})
    assert load_bundle(tmp_path / "b", device="cpu").name == "stgram_mfn"
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    meta["feature"]["n_mels"] = 64
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="64 mel bands but params.n_mels is 128"):
        load_bundle(tmp_path / "b", device="cpu")
