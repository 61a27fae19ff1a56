"""Every registered detector (plus the test plug-ins for seams no shipped model uses yet) against the shared
contract, plus the DCASE AE's own architecture.

The data comes from each detector's `example_input()` and is built so that only a detector that learned something
can separate it: normal vectors lie near a random 4-dim subspace; anomalies use the same subspace with the sign of
some coordinates flipped, so every dimension has the same mean and variance in both sets and only their correlations
differ (an untrained autoencoder scores them at chance). Machine ids, when asked for, shift each id's data (every value
alike, or by a per-dimension tilt); for a classifier of ids (`anomaly="other_id"`) an anomaly is a clip that sounds like the next id.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from models.bundle import load_bundle, save_bundle
from models.detectors import REGISTRY, Detector, NotFittedError, get_detector, register, registered
from models.detectors.base import standardizer
from models.detectors.dcase_ae import DcaseAE
from models.features import LogMelConfig, feature_from_dict
from models.features.stgram import StgramConfig
from models.training.loop import split_by_clip
from tests import plugins

RANK = 4
AUC_FLOOR = 0.9
# a feature config of `dim` values for detectors that insist on a kind (`Detector.feature_kinds`)
RECORDED = {"stgram": lambda dim: StgramConfig(n_mels=128, n_fft=dim - 128, hop_length=16),
            "logmel": lambda dim: LogMelConfig(n_mels=dim)}
NAMES = registered() + [c.name for c in plugins.DETECTORS]  # the noise models: tests/models/test_lstm_noise.py


@pytest.fixture(scope="module", autouse=True)
def _plugins() -> Iterator[None]:
    with plugins.plugins_registered():
        yield


def example_data(cls: type[Detector], seed: int = 7) -> dict:
    """train / normal / anomaly clips (and their ids) of the shape `cls.example_input()` asks for."""
    spec = cls.example_input()
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(RANK, spec.dim))
    w_anomaly = w * rng.choice([-1.0, 1.0], size=spec.dim)
    id_names = [f"id_{k:02d}" for k in range(max(spec.n_ids, 1))]

    scale = 10.0 ** rng.uniform(-2, 2, size=spec.dim)  # score vectors: members on unrelated scales
    tilt = 1.0 if spec.id_offset == "level" else np.linspace(-1.0, 1.0, spec.dim)  # id k's data: + 2 k tilt

    def clips(weights: np.ndarray, n: int, anomalous: bool) -> tuple[list[torch.Tensor], list[str] | None]:
        out, ids = [], []
        for i in range(n):
            k = i % len(id_names)
            if spec.scores:  # an anomaly is a 6-sigma high score of one member, a different one each time
                x = rng.normal(size=(spec.n_vectors, spec.dim))
                if anomalous:
                    x[:, i % spec.dim] += 6.0
                x = x * scale + 100.0 * scale
            else:
                x = rng.normal(size=(spec.n_vectors, RANK)) @ weights
                x = x + 0.3 * rng.normal(size=(spec.n_vectors, spec.dim))
            if anomalous and spec.anomaly == "other_id":  # normal data of the next id, labelled as this one
                x = rng.normal(size=(spec.n_vectors, RANK)) @ w + 0.3 * rng.normal(size=(spec.n_vectors, spec.dim))
                x = x + 2.0 * ((k + 1) % len(id_names) - k) * tilt
            out.append(torch.tensor(x + 5.0 + 2.0 * k * tilt, dtype=torch.float32))
            ids.append(id_names[k])
        return out, (ids if spec.n_ids else None)

    data = {}
    for part, weights, n in (("train", w, 24), ("normal", w, 10), ("anomaly", w_anomaly, 10)):
        data[part], data[f"{part}_ids"] = clips(weights, n, part == "anomaly")
    data["dim"] = spec.dim
    return data


@pytest.fixture(scope="module", params=NAMES)
def case(request: pytest.FixtureRequest, _plugins: None) -> tuple[Detector, dict]:
    cls = REGISTRY[request.param]
    data = example_data(cls)
    return cls(**cls.quick_params).fit(data["train"], data["train_ids"]), data


def _test_set(data: dict) -> tuple[list[torch.Tensor], list[str] | None, np.ndarray]:
    ids = None if data["normal_ids"] is None else data["normal_ids"] + data["anomaly_ids"]
    return (data["normal"] + data["anomaly"], ids,
            np.r_[np.zeros(len(data["normal"])), np.ones(len(data["anomaly"]))])


def test_registry_is_consistent() -> None:
    assert "dcase_ae" in REGISTRY
    for name, cls in REGISTRY.items():
        assert cls.name == name and issubclass(cls, Detector)
        assert cls.granularity in ("vector", "window") and cls.bundle_kind in ("detector", "classifier", "denoiser")
        if cls.default_feature:
            feature_from_dict(cls.default_feature)  # buildable: training falls back to it
    with pytest.raises(ValueError, match="unknown detector 'nope'.*dcase_ae"):
        get_detector("nope")


def test_register_refuses_a_second_class_under_a_taken_name() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(type("Impostor", (DcaseAE,), {"name": "dcase_ae"}))
    assert REGISTRY["dcase_ae"] is DcaseAE


@pytest.mark.parametrize("name", NAMES)
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


def test_fitted_detector_beats_auc_floor(case) -> None:
    det, data = case
    clips, ids, y = _test_set(data)
    scores = det.score(clips, ids)
    assert scores.shape == (len(clips),) and scores.dtype == np.float64
    assert roc_auc_score(y, scores) >= AUC_FLOOR


def test_learned_attributes_end_in_underscore_and_state_is_tensors(case) -> None:
    det, _ = case
    unfitted = type(det)(**det.get_params())
    assert det.is_fitted and not unfitted.is_fitted
    learned = set(vars(det)) - set(vars(unfitted))
    assert learned and all(k.endswith("_") for k in learned), learned
    state = det.state_dict()
    assert state and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    import json

    json.dumps(det.learned(), allow_nan=False)  # JSON-safe, for the bundle's `learned` block


def test_same_seed_same_scores(case) -> None:
    det, data = case
    again = type(det)(**det.get_params()).fit(data["train"], data["train_ids"])
    clips, ids, _ = _test_set(data)
    np.testing.assert_array_equal(again.score(clips, ids), det.score(clips, ids))


def test_state_dict_round_trip_gives_identical_scores(case) -> None:
    det, data = case
    clips, ids, _ = _test_set(data)
    fresh = type(det)(**det.get_params()).load_state_dict(det.state_dict(), det.learned())
    np.testing.assert_array_equal(fresh.score(clips, ids), det.score(clips, ids))


def test_bundle_round_trip_gives_identical_scores(case, tmp_path) -> None:
    det, data = case
    clips, ids, _ = _test_set(data)
    # only recorded here (these tests feed feature vectors directly), but of a kind the detector takes
    kinds = det.feature_kinds
    feature = LogMelConfig(n_mels=data["dim"]) if kinds is None else RECORDED[kinds[0]](data["dim"])
    save_bundle(tmp_path / "b", det, feature, 1.5, {"method": "fixed", "value": 1.5}, "fan", ["id_00"], {})
    bundle = load_bundle(tmp_path / "b", device="cpu")
    assert bundle.name == det.name and type(bundle.detector) is type(det)
    assert bundle.meta["granularity"] == det.granularity
    np.testing.assert_array_equal(bundle.score_features(clips, ids), det.score(clips, ids))


def test_vector_scores_average_to_clip_scores(case) -> None:
    det, data = case
    clips, ids, _ = _test_set(data)
    if det.granularity == "window":
        with pytest.raises(NotImplementedError):
            det.score_vectors(clips[0])
        return
    lengths = [c.shape[0] for c in clips]
    row_ids = None if ids is None else [i for i, n in zip(ids, lengths) for _ in range(n)]
    per_vector = det.score_vectors(torch.cat(clips), row_ids)
    assert per_vector.shape == (sum(lengths),) and per_vector.device.type == "cpu"
    means = [float(p.double().mean()) for p in torch.split(per_vector, lengths)]
    np.testing.assert_allclose(means, det.score(clips, ids), rtol=1e-5)
    # a window of the monitor is any run of vectors: scoring it piecewise gives the same numbers
    k = min(7, lengths[0])
    piece_ids = None if row_ids is None else row_ids[:k]
    np.testing.assert_allclose(det.score_vectors(clips[0][:k], piece_ids).numpy(), per_vector[:k].numpy(), rtol=1e-5)


def test_id_conditioned_detectors_refuse_clips_without_ids(case) -> None:
    det, data = case
    if not det.needs_ids:
        return
    with pytest.raises(ValueError, match="machine id"):
        det.score(data["normal"])
    with pytest.raises(ValueError, match="machine id"):
        type(det)(**det.get_params()).fit(data["train"])


@pytest.mark.parametrize("name", NAMES)
def test_fit_refuses_bad_training_sets(name: str) -> None:
    cls = REGISTRY[name]
    data = example_data(cls)
    dim, ids = data["dim"], data["train_ids"]
    det = cls(**cls.quick_params)
    with pytest.raises(ValueError, match="empty"):
        det.fit([], [] if ids else None)
    bad = [c.clone() for c in data["train"][:3]]
    bad[1][min(5, bad[1].shape[0] - 1), min(3, dim - 1)] = float("nan")
    with pytest.raises(ValueError, match=r"\[1\].*NaN/inf"):
        det.fit(bad, ids[:3] if ids else None)
    with pytest.raises(ValueError, match=rf"\[1\].*dim {dim - 1}, expected {dim}"):
        det.fit([data["train"][0], data["train"][1][:, : dim - 1]], ids[:2] if ids else None)
    with pytest.raises(ValueError, match="no feature vectors"):
        det.fit([data["train"][0], torch.zeros((0, dim))], ids[:2] if ids else None)
    with pytest.raises(ValueError, match="list"):
        det.fit(data["train"][0])


def test_score_refuses_bad_input(case) -> None:
    det, data = case
    dim = data["dim"]
    one = None if data["normal_ids"] is None else data["normal_ids"][:1]
    with pytest.raises(ValueError, match=f"dim {dim + 1}, expected {dim}"):
        det.score([torch.zeros((5, dim + 1))], one)
    with pytest.raises(ValueError, match="NaN/inf"):
        det.score([torch.full((5, dim), float("inf"))], one)
    with pytest.raises(ValueError, match="empty"):
        det.score([], [] if one else None)
    if det.granularity == "vector":
        with pytest.raises(ValueError, match=rf"\[N, {dim}\]"):
            det.score_vectors(torch.zeros((5, dim + 1)), None if one is None else one * 5)


@pytest.mark.parametrize("name", NAMES)
def test_unfitted_detector_says_so(name: str) -> None:
    data = example_data(REGISTRY[name])
    det = REGISTRY[name]()
    assert not det.is_fitted
    with pytest.raises(NotFittedError, match="not fitted"):
        det.score(data["normal"], data["normal_ids"])
    with pytest.raises(NotFittedError):
        det.state_dict()


def test_load_state_dict_refuses_mismatched_state(case) -> None:
    det, _ = case
    state, learned = det.state_dict(), det.learned()
    fresh = lambda: type(det)(**det.get_params())  # noqa: E731
    victim = next(iter(state))
    with pytest.raises(ValueError):
        fresh().load_state_dict({k: v for k, v in state.items() if k != victim}, learned)
    with pytest.raises(ValueError, match="unexpected"):
        fresh().load_state_dict({**state, "surplus": torch.zeros(1)}, learned)


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


@pytest.fixture(scope="module")
def data() -> dict:
    return example_data(DcaseAE)


def test_dcase_ae_clip_score_is_mean_per_vector_mse(data: dict) -> None:
    det = DcaseAE(**DcaseAE.quick_params).fit(data["train"])
    clip = data["normal"][0]
    with torch.no_grad():
        x = (clip - det.mean_) / det.scale_
        expected = float(((det.net_(x) - x) ** 2).mean(dim=1).double().mean())
    assert det.score([clip])[0] == pytest.approx(expected, rel=1e-6)


def test_dcase_ae_without_normalisation_keeps_raw_scale(data: dict) -> None:
    det = DcaseAE(**{**DcaseAE.quick_params, "epochs": 1, "normalize": False}).fit(data["train"][:4])
    assert torch.equal(det.mean_, torch.zeros(data["dim"])) and torch.equal(det.scale_, torch.ones(data["dim"]))
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


def test_standardizer_shrinkage_pulls_variances_towards_their_mean_by_a_pseudo_count() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(0.0, [0.1, 1.0, 3.0], size=(2, 3))
    var = X.var(axis=0)
    for s in (1.0, 4.0):
        _, scale = standardizer(torch.from_numpy(X), shrinkage=s)
        np.testing.assert_allclose(scale.double().numpy() ** 2, (2 * var + s * var.mean()) / (2 + s), rtol=1e-5)
    _, raw = standardizer(torch.from_numpy(X))
    _, pulled = standardizer(torch.from_numpy(X), shrinkage=4.0)
    assert np.ptp(pulled.numpy()) < np.ptp(raw.numpy())  # two vectors' chance agreement no longer decides
    many = torch.from_numpy(rng.normal(0.0, [0.1, 1.0, 3.0], size=(20000, 3)))
    torch.testing.assert_close(standardizer(many, shrinkage=4.0)[1], standardizer(many)[1], rtol=0.05, atol=0)


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
