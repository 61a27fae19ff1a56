"""id_classifier's own maths: it tells generated machines' ids apart, its scores equal scikit-learn's own -log p
(two ids: the binary model exported as two rows; three: the multinomial one; balanced or not), the stable surprise
where the log-softmax rounds to 0, the most-likely-id fallback for an id that was not trained, gain invariance,
the one-id error, the bundle round trip (plain tensors, weights_only) and the errors on bad settings or state."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from models.bundle import load_bundle, save_bundle
from models.detectors._segments import segment_embeddings
from models.detectors.id_classifier import IdClassifier, surprise
from models.features import LogMelConfig
from models.synth.voices import MachineVoice
from tests.helpers import SR

FEATURE = LogMelConfig(sample_rate=SR, n_fft=256, hop_length=128, n_mels=24)
QUICK = IdClassifier.quick_params


def _clips(n: int, seed: int, shift: float = 0.0, t: int = 40, dim: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t, dim, generator=g) + shift + torch.linspace(0, 3, dim) for _ in range(n)]


def _fans(machine_id: int, instances: range) -> list[torch.Tensor]:
    """2 s log-mel clips of one generated fan id, one per recording (`instance`: another day, new noise)."""
    return [FEATURE.extract(MachineVoice("fan", machine_id, sample_rate=SR, seed=3, instance=k).generate(2 * SR))
            for k in instances]


def test_it_tells_generated_machine_ids_apart() -> None:
    names = ["id_00", "id_01", "id_02"]
    train = {n: _fans(k, range(3)) for k, n in enumerate(names)}
    test = {n: _fans(k, range(10, 14)) for k, n in enumerate(names)}
    det = IdClassifier(**QUICK).fit([c for n in names for c in train[n]], [n for n in names for _ in train[n]])
    assert det.learned()["ids"] == names
    own, wrong = [], []
    for n in names:
        own += det.score(test[n], [n] * len(test[n])).tolist()
        for other in set(names) - {n}:
            wrong += det.score(test[n], [other] * len(test[n])).tolist()
    # other recordings of a machine look like their own id, and like no other
    assert roc_auc_score(np.r_[np.zeros(len(own)), np.ones(len(wrong))], own + wrong) >= 0.95
    assert np.median(own) < 0.5 < np.median(wrong)


def _reference(det: IdClassifier, train: list[torch.Tensor], train_ids: list[str], test: list[torch.Tensor],
               balanced: bool) -> list[np.ndarray]:
    """scikit-learn's own log p(id | segment) of each test clip's segments, its model fitted on the standardised
    training segments as the detector fits it."""
    def z(clips: list[torch.Tensor], hop: int) -> list[np.ndarray]:
        return [((segment_embeddings(c, det.segment_frames, hop, True) - det.mean_.double()) / det.scale_.double())
                .numpy() for c in clips]

    parts = z(train, det.train_hop)
    y = np.repeat([det.ids_.index(i) for i in train_ids], [p.shape[0] for p in parts])
    model = LogisticRegression(C=det.C, max_iter=det.max_iter, class_weight="balanced" if balanced else None)
    model.fit(np.concatenate(parts), y)
    return [model.predict_log_proba(p) for p in z(test, det.segment_hop)]


@pytest.mark.parametrize("n_ids", [2, 3])
@pytest.mark.parametrize("balanced", [True, False])
def test_scores_are_scikit_learns_mean_surprise_at_the_own_id(n_ids: int, balanced: bool) -> None:
    names = [f"m{k}" for k in range(n_ids)]
    counts = [4, 2, 3][:n_ids]  # unequal: balanced weighting matters
    train = [c for k, n in enumerate(counts) for c in _clips(n, 20 + k, shift=0.7 * k)]
    train_ids = [names[k] for k, n in enumerate(counts) for _ in range(n)]
    det = IdClassifier(**QUICK, balanced=balanced).fit(train, train_ids)
    assert det.coef_.shape == (n_ids, 12) and det.coef_.dtype == torch.float64
    test = _clips(3, 30, shift=0.7)
    logp = _reference(det, train, train_ids, test, balanced)
    for own in names:
        expected = [-p[:, names.index(own)].mean() for p in logp]
        np.testing.assert_allclose(det.score(test, [own] * len(test)), expected, rtol=1e-6, atol=1e-9)
    # an id that was not trained: the surprise at the most likely id, segment by segment
    fallback = det.score(test, ["never_seen"] * len(test))
    np.testing.assert_allclose(fallback, [-p.max(axis=1).mean() for p in logp], rtol=1e-6, atol=1e-9)
    per_id = np.array([det.score(test, [n] * len(test)) for n in names])
    assert np.all(fallback <= per_id.min(axis=0) + 1e-12)


def test_surprise_keeps_the_order_where_the_log_softmax_rounds_to_zero() -> None:
    logits = torch.tensor([[0.0, -40.0, -45.0], [0.0, -50.0, -60.0], [1.0, 2.0, 0.5]], dtype=torch.float64)
    target = torch.tensor([0, 0, 1])
    got = surprise(logits, target)
    naive = -torch.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
    np.testing.assert_allclose(got[2], naive[2], rtol=1e-12)
    assert got[0] == pytest.approx(np.exp(-40.0) + np.exp(-45.0), rel=1e-9)
    assert 0 < got[1] < got[0]  # both are ~0 by the naive route, in order here


def test_a_gain_change_does_not_change_the_score() -> None:
    det = IdClassifier(**QUICK).fit(_fans(0, range(2)) + _fans(1, range(2)), ["a", "a", "b", "b"])
    x = MachineVoice("fan", 0, sample_rate=SR, seed=3, instance=9).generate(2 * SR)
    loud, quiet = det.score([FEATURE.extract(x), FEATURE.extract(0.5 * x)], ["a", "a"])
    assert loud == pytest.approx(quiet, rel=1e-5)


def test_one_machine_id_is_refused_with_what_to_use_instead() -> None:
    with pytest.raises(ValueError, match=r"at least 2 machine ids of the type.*\['solo'\].*embed_knn"):
        IdClassifier(**QUICK).fit(_clips(3, 1), ["solo"] * 3)


def test_bundle_round_trip_is_plain_tensors(tmp_path: Path) -> None:
    det = IdClassifier(**QUICK).fit(_clips(2, 2) + _clips(2, 3, shift=2.0), ["id_00", "id_00", "id_01", "id_01"])
    save_bundle(tmp_path / "b", det, LogMelConfig(n_mels=6), 1.0, {"method": "fixed", "value": 1.0}, "fan",
                ["id_00", "id_01"], {})
    state = torch.load(tmp_path / "b" / "weights.pt", weights_only=True)
    assert set(state) == {"detector.mean_", "detector.scale_", "detector.coef_", "detector.intercept_"}
    bundle = load_bundle(tmp_path / "b", device="cpu")
    assert bundle.learned["detector"]["ids"] == ["id_00", "id_01"] and bundle.needs_id
    probe = _clips(2, 4, shift=1.0)
    for ids in (["id_00", "id_01"], ["id_01", "id_00"], ["id_09", "id_00"]):
        np.testing.assert_array_equal(bundle.score_features(probe, ids), det.score(probe, ids))


def test_load_state_dict_refuses_what_does_not_match() -> None:
    det = IdClassifier(**QUICK).fit(_clips(2, 5) + _clips(2, 6, shift=2.0), ["p", "p", "q", "q"])
    state, learned = det.state_dict(), det.learned()
    with pytest.raises(ValueError, match="at least 2"):
        IdClassifier(**QUICK).load_state_dict(state, {**learned, "ids": ["p"]})
    with pytest.raises(ValueError, match="coef_"):
        IdClassifier(**QUICK).load_state_dict(state, {**learned, "ids": ["p", "q", "r"]})
    with pytest.raises(ValueError, match="mean_"):
        IdClassifier(**QUICK).load_state_dict(state, {**learned, "dim": 5})


@pytest.mark.parametrize("params,match", [({"C": 0.0}, "C "), ({"C": True}, "C "), ({"balanced": "yes"}, "balanced"),
                                          ({"train_hop": 0}, "train_hop"), ({"max_iter": 1.5}, "max_iter"),
                                          ({"level_norm": 1}, "level_norm")])
def test_bad_hyper_parameters_are_refused(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        IdClassifier(**{**QUICK, **params}).fit(_clips(2, 7) + _clips(2, 8), ["a", "a", "b", "b"])


def test_a_fit_that_stops_at_max_iter_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="models.detectors.id_classifier"):
        IdClassifier(**QUICK, max_iter=1).fit(_clips(3, 9) + _clips(3, 10, shift=0.5), ["a"] * 3 + ["b"] * 3)
    assert any("max_iter=1" in r.getMessage() for r in caplog.records)
