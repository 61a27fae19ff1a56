"""Every registered detector against the shared contract, plus the DCASE AE's own architecture.

The synthetic data is built so that only a detector that learned something can separate it: normal vectors lie
near a random 4-dim subspace of a 40-dim space; anomalies use the same subspace with the sign of some coordinates
flipped, so every dimension has the same mean and variance in both sets and only their correlations differ
(an untrained autoencoder scores them at chance).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from models.bundle import load_bundle, save_bundle
from models.detectors import REGISTRY, Detector, NotFittedError, get_detector, register
from models.detectors.base import standardizer
from models.detectors.dcase_ae import DcaseAE
from models.features import LogMelConfig, feature_from_dict
from models.training import split_by_clip

DIM, RANK, N_VEC = 40, 4, 60
AUC_FLOOR = 0.9


def _clips(weights: np.ndarray, n: int, rng: np.random.Generator) -> list[torch.Tensor]:
    return [
        torch.tensor(rng.normal(size=(N_VEC, RANK)) @ weights + 0.3 * rng.normal(size=(N_VEC, DIM)) + 5.0,
                     dtype=torch.float32)
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def data() -> dict[str, list[torch.Tensor]]:
    rng = np.random.default_rng(7)
    w = rng.normal(size=(RANK, DIM))
    w_anomaly = w * rng.choice([-1.0, 1.0], size=DIM)
    return {"train": _clips(w, 24, rng), "normal": _clips(w, 10, rng), "anomaly": _clips(w_anomaly, 10, rng)}


@pytest.fixture(scope="module", params=sorted(REGISTRY))
def fitted(request: pytest.FixtureRequest, data: dict) -> Detector:
    cls = REGISTRY[request.param]
    return cls(**cls.quick_params).fit(data["train"])


def _test_set(data: dict) -> tuple[list[torch.Tensor], np.ndarray]:
    return data["normal"] + data["anomaly"], np.r_[np.zeros(len(data["normal"])), np.ones(len(data["anomaly"]))]


def test_registry_is_consistent() -> None:
    assert "dcase_ae" in REGISTRY
    for name, cls in REGISTRY.items():
        assert cls.name == name and issubclass(cls, Detector)
        if cls.default_feature:
            feature_from_dict(cls.default_feature)  # buildable: training falls back to it
    with pytest.raises(ValueError, match="unknown detector 'nope'.*dcase_ae"):
        get_detector("nope")


def test_register_refuses_a_second_class_under_a_taken_name() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(type("Impostor", (DcaseAE,), {"name": "dcase_ae"}))
    assert REGISTRY["dcase_ae"] is DcaseAE


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_params_round_trip_and_unknown_names(name: str) -> None:
    cls = REGISTRY[name]
    det = cls(**cls.quick_params)
    twin = cls(**det.get_params())
    assert twin.get_params() == det.get_params()
    assert all(det.get_params()[k] == v for k, v in cls.quick_params.items())
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        det.set_params(not_a_param=1)
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        cls.from_params({"not_a_param": 1})


def test_fitted_detector_beats_auc_floor(fitted: Detector, data: dict) -> None:
    clips, y = _test_set(data)
    scores = fitted.score(clips)
    assert scores.shape == (len(clips),) and scores.dtype == np.float64
    assert roc_auc_score(y, scores) >= AUC_FLOOR


def test_learned_attributes_end_in_underscore_and_state_is_tensors(fitted: Detector) -> None:
    unfitted = type(fitted)(**fitted.get_params())
    learned = set(vars(fitted)) - set(vars(unfitted))
    assert learned and all(k.endswith("_") for k in learned), learned
    state = fitted.state_dict()
    assert state and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())


def test_same_seed_same_scores(fitted: Detector, data: dict) -> None:
    again = type(fitted)(**fitted.get_params()).fit(data["train"])
    clips, _ = _test_set(data)
    np.testing.assert_array_equal(again.score(clips), fitted.score(clips))


def test_state_dict_round_trip_gives_identical_scores(fitted: Detector, data: dict) -> None:
    clips, _ = _test_set(data)
    fresh = type(fitted)(**fitted.get_params()).load_state_dict(fitted.state_dict())
    np.testing.assert_array_equal(fresh.score(clips), fitted.score(clips))


def test_bundle_round_trip_gives_identical_scores(fitted: Detector, data: dict, tmp_path) -> None:
    clips, _ = _test_set(data)
    feature = LogMelConfig(n_mels=DIM)  # only recorded here: these tests feed feature vectors directly
    save_bundle(tmp_path / "b", fitted, feature, 1.5, {"method": "fixed", "value": 1.5}, "fan", ["id_00"], {})
    bundle = load_bundle(tmp_path / "b", device="cpu")
    assert bundle.name == fitted.name and type(bundle.detector) is type(fitted)
    np.testing.assert_array_equal(bundle.score_features(clips), fitted.score(clips))


def test_frame_level_vector_scores_average_to_clip_scores(fitted: Detector, data: dict) -> None:
    clips, _ = _test_set(data)
    if not fitted.frame_level:
        with pytest.raises(NotImplementedError):
            fitted.score_vectors(clips[0])
        return
    per_vector = fitted.score_vectors(torch.cat(clips))
    assert per_vector.shape == (sum(c.shape[0] for c in clips),) and per_vector.device.type == "cpu"
    means = [float(p.double().mean()) for p in torch.split(per_vector, [c.shape[0] for c in clips])]
    np.testing.assert_allclose(means, fitted.score(clips), rtol=1e-5)
    # a window of the monitor is any run of vectors: scoring it piecewise gives the same numbers
    piece = clips[0][:7]
    np.testing.assert_allclose(fitted.score_vectors(piece).numpy(), per_vector[:7].numpy(), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_fit_refuses_bad_training_sets(name: str, data: dict) -> None:
    cls = REGISTRY[name]
    det = cls(**cls.quick_params)
    with pytest.raises(ValueError, match="empty"):
        det.fit([])
    bad = [c.clone() for c in data["train"][:3]]
    bad[1][5, 3] = float("nan")
    with pytest.raises(ValueError, match=r"\[1\].*NaN/inf"):
        det.fit(bad)
    with pytest.raises(ValueError, match=r"\[1\].*dim 39, expected 40"):
        det.fit([data["train"][0], data["train"][1][:, :39]])
    with pytest.raises(ValueError, match="no feature vectors"):
        det.fit([data["train"][0], torch.zeros((0, DIM))])
    with pytest.raises(ValueError, match="list"):
        det.fit(data["train"][0])


def test_score_refuses_bad_input(fitted: Detector, data: dict) -> None:
    with pytest.raises(ValueError, match="dim 41, expected 40"):
        fitted.score([torch.zeros((5, 41))])
    with pytest.raises(ValueError, match="NaN/inf"):
        fitted.score([torch.full((5, DIM), float("inf"))])
    with pytest.raises(ValueError, match="empty"):
        fitted.score([])
    if fitted.frame_level:
        with pytest.raises(ValueError, match=r"\[N, 40\]"):
            fitted.score_vectors(torch.zeros((5, 41)))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_unfitted_detector_says_so(name: str, data: dict) -> None:
    det = REGISTRY[name]()
    with pytest.raises(NotFittedError, match="not fitted"):
        det.score(data["normal"])
    with pytest.raises(NotFittedError):
        det.state_dict()


def test_load_state_dict_refuses_mismatched_state(fitted: Detector) -> None:
    state = fitted.state_dict()
    fresh = lambda: type(fitted)(**fitted.get_params())  # noqa: E731
    victim = next(iter(state))
    with pytest.raises(ValueError):
        fresh().load_state_dict({k: v for k, v in state.items() if k != victim})
    with pytest.raises(ValueError, match="unexpected"):
        fresh().load_state_dict({**state, "surplus": torch.zeros(1)})


# -- the DCASE 2020 baseline specifically ---------------------------------------------------------------------------


def test_dcase_ae_matches_the_baseline_architecture() -> None:
    feature = feature_from_dict(DcaseAE.default_feature)
    assert feature == LogMelConfig(n_mels=128, n_fft=1024, hop_length=512, power=2.0, context=5)
    net = DcaseAE()._build(feature.dim).net
    linears = [(m.in_features, m.out_features) for m in net if isinstance(m, torch.nn.Linear)]
    widths = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640]
    assert linears == list(zip(widths[:-1], widths[1:]))
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU"] * 9 + ["Linear"]
    bns = [m for m in net if isinstance(m, torch.nn.BatchNorm1d)]
    assert all(bn.eps == 1e-3 and bn.momentum == 0.01 for bn in bns)  # Keras defaults
    params = DcaseAE().get_params()
    assert (params["epochs"], params["batch_size"], params["lr"], params["validation_split"]) == (100, 512, 1e-3, 0.1)


def test_dcase_ae_clip_score_is_mean_per_vector_mse(data: dict) -> None:
    det = DcaseAE(**DcaseAE.quick_params).fit(data["train"])
    clip = data["normal"][0]
    with torch.no_grad():
        x = (clip - det.mean_) / det.scale_
        expected = float(((det.net_(x) - x) ** 2).mean(dim=1).double().mean())
    assert det.score([clip])[0] == pytest.approx(expected, rel=1e-6)


def test_dcase_ae_without_normalisation_keeps_raw_scale(data: dict) -> None:
    det = DcaseAE(**{**DcaseAE.quick_params, "epochs": 1, "normalize": False}).fit(data["train"][:4])
    assert torch.equal(det.mean_, torch.zeros(DIM)) and torch.equal(det.scale_, torch.ones(DIM))
    assert np.isfinite(det.score(data["normal"][:2])).all()


def test_dcase_ae_history_reports_training_and_validation_loss(data: dict) -> None:
    det = DcaseAE(**{**DcaseAE.quick_params, "epochs": 3}).fit(data["train"])
    assert [h["epoch"] for h in det.history_] == [1, 2, 3]
    assert all(np.isfinite(h["loss"]) and np.isfinite(h["val_loss"]) for h in det.history_)
    assert det.history_[-1]["loss"] < det.history_[0]["loss"]


def test_standardizer_matches_numpy_and_keeps_constant_dims_finite() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(40.0, 3.0, size=(5000, 6)).astype(np.float32)
    X[:, 4] = -7.0
    mean, scale = standardizer(torch.from_numpy(X), chunk=777)
    np.testing.assert_allclose(mean.numpy(), X.astype(np.float64).mean(axis=0), rtol=1e-6)
    expected = X.astype(np.float64).std(axis=0)
    expected[4] = 1.0  # a constant input dimension is left unscaled instead of divided by zero
    np.testing.assert_allclose(scale.numpy(), expected, rtol=1e-5)


def test_validation_split_holds_out_whole_clips() -> None:
    lengths = [5, 3, 4, 6, 2, 7, 5, 3, 4, 1]
    train, val = split_by_clip(lengths, 0.2, torch.Generator().manual_seed(0))
    assert sorted(torch.cat([train, val]).tolist()) == list(range(sum(lengths)))
    offsets = np.cumsum([0, *lengths])
    clips_of = lambda rows: {int(np.searchsorted(offsets, r, side="right") - 1) for r in rows.tolist()}  # noqa: E731
    assert len(clips_of(val)) == 2 and not clips_of(val) & clips_of(train)
    for c in clips_of(val):  # every row of a validation clip is in validation
        assert set(range(offsets[c], offsets[c + 1])) <= set(val.tolist())
    _, none = split_by_clip([10], 0.5, torch.Generator().manual_seed(0))
    assert none.numel() == 0  # a single clip is never held out entirely
