"""embed_knn's own maths: segment embeddings against a numpy reference, gain invariance with level_norm, a training
clip scoring 0, per-id banks and the whole-type fallback, k neighbours, the bundle round trip (plain tensors,
weights_only), streams with and without machine ids sharing one scorer, and the errors on bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.bundle import load_bundle, save_bundle
from models.detectors._segments import segment_embeddings
from models.detectors.embed_knn import EmbedKnn
from models.features import LogMelConfig
from models.features.mfcc import MfccConfig
from models.training.recipe import build_spec, fit_bundle
from tests.helpers import SR, machine_audio

FEATURE = LogMelConfig(sample_rate=SR, n_fft=256, hop_length=128, n_mels=24)
QUICK = EmbedKnn.quick_params


def _clips(n: int, seed: int, shift: float = 0.0, t: int = 40, dim: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t, dim, generator=g) + shift + torch.linspace(0, 3, dim) for _ in range(n)]


def _reference_embeddings(x: np.ndarray, frames: int, hop: int, level_norm: bool) -> np.ndarray:
    starts = list(range(0, x.shape[0] - frames + 1, hop))
    if starts[-1] + frames < x.shape[0]:
        starts.append(x.shape[0] - frames)
    rows = []
    for s in starts:
        seg = x[s : s + frames].astype(np.float64)
        if level_norm:
            seg = seg - seg.mean()
        rows.append(np.r_[seg.mean(axis=0), seg.std(axis=0)])
    return np.array(rows)


@pytest.mark.parametrize("level_norm", [True, False])
def test_segment_embeddings_match_numpy(level_norm: bool) -> None:
    x = _clips(1, 0, t=37)[0]
    got = segment_embeddings(x, 8, 5, level_norm).numpy()
    expected = _reference_embeddings(x.numpy(), 8, 5, level_norm)
    assert got.shape == (7, 12)  # starts 0, 5, ..., 25 and the end-aligned 29
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_score_is_the_mean_over_segments_of_the_nearest_bank_distance() -> None:
    train, test = _clips(3, 1), _clips(2, 2)
    det = EmbedKnn(segment_frames=8, segment_hop=4, bank_hop=2, k=2).fit(train)
    bank = np.concatenate([_reference_embeddings(c.numpy(), 8, 2, True) for c in train])
    mean, std = bank.mean(axis=0), bank.std(axis=0)
    z_bank = (bank - mean) / std
    for clip, got in zip(test, det.score(test)):
        z = (_reference_embeddings(clip.numpy(), 8, 4, True) - mean) / std
        d = np.sqrt(((z[:, None, :] - z_bank[None]) ** 2).sum(-1))
        assert got == pytest.approx(np.sort(d, axis=1)[:, :2].mean(), rel=1e-5)


def test_a_training_clip_scores_zero_and_others_do_not() -> None:
    train = _clips(4, 3)
    det = EmbedKnn(**QUICK).fit(train)
    scores = det.score([train[2], *_clips(3, 4)])
    assert scores[0] < 1e-4 and scores[1:].min() > 0.1


def _audio_bundle_detector(level_norm: bool) -> EmbedKnn:
    clips = [FEATURE.extract(machine_audio(2.0, seed)) for seed in range(4)]
    return EmbedKnn(**QUICK, level_norm=level_norm).fit(clips)


def test_level_norm_makes_scores_gain_invariant() -> None:
    x = machine_audio(2.0, 11)
    quiet, loud = FEATURE.extract(0.5 * x), FEATURE.extract(x)
    assert not torch.allclose(quiet, loud)
    det = _audio_bundle_detector(level_norm=True)
    a, b = det.score([loud, quiet])
    assert a == pytest.approx(b, rel=1e-5)
    plain = _audio_bundle_detector(level_norm=False)
    a, b = plain.score([loud, quiet])
    assert b > 2 * a  # without it a 6 dB quieter take of a normal clip looks far from the training clips


def test_level_norm_still_separates_an_anomaly_of_the_same_level() -> None:
    det = _audio_bundle_detector(level_norm=True)
    normal = FEATURE.extract(machine_audio(2.0, 21))
    anomaly = FEATURE.extract(machine_audio(2.0, 22, anomalous=True))
    s_normal, s_anomaly = det.score([normal, anomaly])
    assert s_anomaly > 3 * s_normal


def test_per_id_banks_and_the_whole_type_fallback() -> None:
    a, b = _clips(3, 5), _clips(3, 6, shift=4.0)
    det = EmbedKnn(**QUICK, level_norm=False).fit(a + b, ["id_a"] * 3 + ["id_b"] * 3)
    assert det.learned()["ids"] == ["id_a", "id_b"]
    probe = _clips(1, 7, shift=4.0)  # sounds like id_b
    own, other = det.score(probe * 2, ["id_b", "id_a"])
    assert other > 3 * own
    # no id, or an id not trained: the whole type's bank, whose nearest segment is the nearer of the two ids'
    fallback = det.score(probe * 2, None)
    np.testing.assert_allclose(det.score(probe, ["id_zz"]), fallback[:1])
    assert fallback[0] == pytest.approx(own, rel=1e-6)
    # a clip of each id, scored with its own id in one batch, equals scoring it alone
    both = det.score([a[0], b[0]], ["id_a", "id_b"])
    np.testing.assert_allclose(both, [det.score([a[0]], ["id_a"])[0], det.score([b[0]], ["id_b"])[0]])
    assert both.max() < 1e-4


def test_fitted_without_ids_every_id_uses_the_one_bank() -> None:
    det = EmbedKnn(**QUICK).fit(_clips(3, 8))
    probe = _clips(2, 9)
    assert det.learned()["ids"] == [] and int(det.bank_id_.max()) == -1
    np.testing.assert_array_equal(det.score(probe, ["id_00", "id_01"]), det.score(probe))


def test_k_larger_than_an_id_bank_uses_all_of_it() -> None:
    det = EmbedKnn(segment_frames=40, segment_hop=1, bank_hop=1, k=5).fit(_clips(2, 10), ["x", "y"])
    assert det.learned()["bank_segments_per_id"] == {"x": 1, "y": 1}
    assert np.isfinite(det.score(_clips(1, 11), ["x"])).all()


def test_bundle_round_trip_keeps_per_id_banks(tmp_path: Path) -> None:
    a, b = _clips(2, 12), _clips(2, 13, shift=3.0)
    det = EmbedKnn(**QUICK).fit(a + b, ["id_00", "id_00", "id_01", "id_01"])
    save_bundle(tmp_path / "b", det, LogMelConfig(n_mels=6), 1.0, {"method": "fixed", "value": 1.0}, "fan",
                ["id_00", "id_01"], {})
    state = torch.load(tmp_path / "b" / "weights.pt", weights_only=True)
    assert set(state) == {"detector.mean_", "detector.scale_", "detector.bank_", "detector.bank_id_"}
    assert state["detector.bank_id_"].dtype == torch.int64
    bundle = load_bundle(tmp_path / "b", device="cpu")
    probe = _clips(2, 14, shift=1.5)
    for ids in (["id_00", "id_01"], ["id_01", "id_00"], None):
        np.testing.assert_array_equal(bundle.score_features(probe, ids), det.score(probe, ids))


def test_load_state_dict_refuses_inconsistent_ids() -> None:
    det = EmbedKnn(**QUICK).fit(_clips(2, 15), ["p", "q"])
    state, learned = det.state_dict(), det.learned()
    with pytest.raises(ValueError, match="bank_id_"):
        EmbedKnn(**QUICK).load_state_dict(state, {**learned, "ids": ["p"]})
    with pytest.raises(ValueError, match="bank_id_"):
        EmbedKnn(**QUICK).load_state_dict({**state, "bank_id_": state["bank_id_"].float()}, learned)
    with pytest.raises(ValueError, match="dim"):
        EmbedKnn(**QUICK).load_state_dict(state, {**learned, "dim": 7})
    with pytest.raises(ValueError, match="mean_"):
        EmbedKnn(**QUICK).load_state_dict({**state, "mean_": torch.zeros(5)}, learned)


def test_too_few_frames_for_one_segment_are_refused() -> None:
    det = EmbedKnn(**QUICK)
    with pytest.raises(ValueError, match=r"fit clips\[1\] has 5 frames, fewer than one segment of segment_frames=8"):
        det.fit([torch.zeros(20, 4), torch.zeros(5, 4)])
    det.fit(_clips(2, 16))
    with pytest.raises(ValueError, match=r"score clips\[0\] has 7 frames"):
        det.score([torch.zeros(7, 6)])


@pytest.mark.parametrize("params,match", [({"segment_frames": 0}, "segment_frames"), ({"k": True}, "k must"),
                                          ({"bank_hop": 1.5}, "bank_hop"), ({"level_norm": "yes"}, "level_norm")])
def test_bad_hyper_parameters_are_refused(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EmbedKnn(**{**QUICK, **params}).fit(_clips(2, 17))


def test_only_log_mel_features_are_taken() -> None:
    with pytest.raises(ValueError, match="logmel"):
        build_spec("embed_knn", {"feature": MfccConfig().to_dict()})
    with pytest.raises(ValueError, match="segment_hop"):
        build_spec("embed_knn", {"params": {"segment_hop": 0}})


def test_streams_with_and_without_an_id_in_one_scorer_score_as_alone(tmp_path: Path) -> None:
    """The scorer scores a batch's streams that have a machine id apart from those that have none: passing no ids
    for the whole batch would score the id'd stream against the whole type's bank."""
    spec = build_spec("embed_knn", {"params": QUICK, "feature": FEATURE.to_dict(), "threshold": "percentile:95",
                                    "window_seconds": 1.0, "hop_seconds": 0.5})
    hum = [machine_audio(2.0, s) for s in range(4)]
    whine = [machine_audio(2.0, s, anomalous=True) for s in range(4, 8)]
    feats = spec.feature.extract_batch(hum + whine)
    fit_bundle(tmp_path / "b", spec, feats, ["hum"] * 4 + ["whine"] * 4, machine="mix")
    bundle = load_bundle(tmp_path / "b", device="cpu")
    x = machine_audio(3.0, 30, anomalous=True)
    ids = ["hum", None, "whine"]

    def run(scorer, n: int) -> list[list[float]]:
        out: list[list[float]] = [[] for _ in range(n)]
        for k in range(0, x.size, 1000):
            for i, w in enumerate(scorer.accept([x[k : k + 1000]] * n)):
                out[i] += [s for _, s in w]
        return out

    together = run(bundle.stream_scorer(3, 1.0, 0.5, machine_ids=ids), 3)
    for i, mid in enumerate(ids):
        alone = run(bundle.stream_scorer(1, 1.0, 0.5, machine_ids=[mid]), 1)[0]
        assert alone
        np.testing.assert_allclose(together[i], alone, rtol=1e-9)
    # a whine is far from the hum bank, nearer its own; the fallback (no id) takes the nearer of the two
    assert np.mean(together[0]) > 1.5 * np.mean(together[2])
    assert np.all(np.asarray(together[1]) <= np.asarray(together[2]) + 1e-9)
