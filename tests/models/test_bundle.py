"""Bundles: a faithful round trip, and a clear BundleError (never code execution) for every way one can be broken."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.bundle import BUNDLE_SCHEMA, BundleError, load_bundle, save_bundle
from models.detectors.dcase_ae import DcaseAE
from models.features import LogMelConfig

FEATURE = LogMelConfig(n_fft=256, hop_length=128, n_mels=16, context=2)
SR = FEATURE.sample_rate


def _wavs(n: int, seconds: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return [(0.3 * np.sin(2 * np.pi * rng.uniform(300, 400) * t) + 0.05 * rng.normal(size=t.size)).astype(np.float32)
            for _ in range(n)]


@pytest.fixture(scope="module")
def detector() -> DcaseAE:
    feats = FEATURE.extract_batch(_wavs(6, 0.5, seed=0))
    return DcaseAE(hidden=16, bottleneck=4, n_layers=1, epochs=2, batch_size=32, progress=False,
                   num_threads=1).fit(feats)


@pytest.fixture()
def bundle_dir(tmp_path: Path, detector: DcaseAE) -> Path:
    return save_bundle(
        tmp_path / "bundle", detector, FEATURE, 0.75, {"method": "gamma", "q": 0.9, "n": 5}, "fan",
        ["id_00", "id_02"], {"n_clips": 6}, window_seconds=5.0, hop_seconds=0.5, extra={"note": "test"},
    )


def _meta(d: Path) -> dict:
    return json.loads((d / "bundle.json").read_text())


def _edit_meta(d: Path, **changes) -> None:
    meta = _meta(d)
    meta.update(changes)
    (d / "bundle.json").write_text(json.dumps(meta))


def _replace_weights(d: Path, payload: bytes) -> None:
    """Swap weights.pt and re-sign it, so the checks after the checksum are what is exercised."""
    (d / "weights.pt").write_bytes(payload)
    meta = _meta(d)
    meta["weights_sha256"] = hashlib.sha256(payload).hexdigest()
    (d / "bundle.json").write_text(json.dumps(meta))


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_round_trip_keeps_everything(bundle_dir: Path, detector: DcaseAE) -> None:
    b = load_bundle(bundle_dir, device="cpu")
    assert (b.name, b.machine, b.ids) == ("dcase_ae", "fan", ["id_00", "id_02"])
    assert b.feature == FEATURE and b.sample_rate == SR
    assert (b.threshold, b.threshold_method, b.window_seconds, b.hop_seconds) == (0.75, "gamma", 5.0, 0.5)
    assert b.detector.get_params() == {**detector.get_params(), "device": "cpu"}
    meta = b.meta
    assert meta["schema"] == BUNDLE_SCHEMA == 2 and meta["training"] == {"n_clips": 6}
    assert meta["extra"] == {"note": "test"} and meta["kind"] == b.kind == "detector"
    assert meta["granularity"] == b.granularity == "vector" and meta["stages"] == [] and meta["members"] == []
    assert meta["threshold"]["info"]["q"] == 0.9 and meta["threshold"]["per_id"] == {}
    assert set(meta["versions"]) == {"asd-monitor", "torch", "numpy", "python"} and meta["created"]
    wavs = _wavs(3, 0.5, seed=5) + _wavs(1, 0.8, seed=6)  # mixed lengths
    expected = detector.score([FEATURE.extract(w) for w in wavs])
    np.testing.assert_array_equal(b.score_wavs(wavs), expected)
    np.testing.assert_array_equal(b.score_features([FEATURE.extract(w) for w in wavs]), expected)


def test_weights_file_is_a_flat_tensor_dict(bundle_dir: Path, detector: DcaseAE) -> None:
    state = torch.load(bundle_dir / "weights.pt", weights_only=True)
    assert set(state) == {f"detector.{k}" for k in detector.state_dict()}
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_score_wavs_names_a_too_short_clip(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir, device="cpu")
    with pytest.raises(ValueError, match="clip 1: 100 samples is shorter than one feature vector"):
        b.score_wavs(_wavs(1, 0.5, seed=1) + [np.zeros(100, dtype=np.float32)])


def test_missing_directory_json_and_weights(tmp_path: Path, bundle_dir: Path) -> None:
    with pytest.raises(BundleError, match="bundle directory not found"):
        load_bundle(tmp_path / "nowhere")
    (bundle_dir / "weights.pt").unlink()
    with pytest.raises(BundleError, match="weights.pt: weights file missing"):
        load_bundle(bundle_dir)
    (bundle_dir / "bundle.json").unlink()
    with pytest.raises(BundleError, match="bundle.json: missing"):
        load_bundle(bundle_dir)


def test_malformed_json(bundle_dir: Path) -> None:
    (bundle_dir / "bundle.json").write_text('{"schema": 1, "model": ')
    with pytest.raises(BundleError, match="malformed JSON"):
        load_bundle(bundle_dir)
    (bundle_dir / "bundle.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="expected a JSON object"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("schema", [3, 0, None, "2", True])
def test_other_schema_version(bundle_dir: Path, schema) -> None:
    _edit_meta(bundle_dir, schema=schema)
    with pytest.raises(BundleError, match=f"bundle schema {schema!r}, this version reads schemas 1, 2"):
        load_bundle(bundle_dir)


def test_unknown_model_name(bundle_dir: Path) -> None:
    _edit_meta(bundle_dir, model={"name": "mystery_net", "params": {}})
    with pytest.raises(BundleError, match="unknown model 'mystery_net'.*dcase_ae"):
        load_bundle(bundle_dir)


def test_unknown_hyper_parameter(bundle_dir: Path) -> None:
    meta = _meta(bundle_dir)
    _edit_meta(bundle_dir, model={"name": "dcase_ae", "params": {**meta["model"]["params"], "dropout": 0.5}})
    with pytest.raises(BundleError, match="unknown hyper-parameter.*dropout"):
        load_bundle(bundle_dir)


def test_missing_and_ill_typed_fields(bundle_dir: Path) -> None:
    meta = _meta(bundle_dir)
    del meta["threshold"]
    (bundle_dir / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="missing field 'threshold.value'"):
        load_bundle(bundle_dir)
    _edit_meta(bundle_dir, threshold={"value": "high", "per_id": {}})
    with pytest.raises(BundleError, match="'threshold.value' has the wrong type"):
        load_bundle(bundle_dir)
    _edit_meta(bundle_dir, threshold={"value": 1.0, "per_id": {"id_00": "x"}})
    with pytest.raises(BundleError, match="per_id must map ids to numbers"):
        load_bundle(bundle_dir)
    _edit_meta(bundle_dir, threshold={"value": 1.0, "per_id": {}}, kind="oracle")
    with pytest.raises(BundleError, match="kind 'oracle' is not one of"):
        load_bundle(bundle_dir)
    _edit_meta(bundle_dir, kind="detector", stages=[{"name": "mystery_stage", "params": {}}])
    with pytest.raises(BundleError, match="unknown stage 'mystery_stage'.*pca"):
        load_bundle(bundle_dir)
    _edit_meta(bundle_dir, stages=[], sample_rate=44100)
    with pytest.raises(BundleError, match="sample_rate 44100 differs"):
        load_bundle(bundle_dir)


def test_corrupted_weights_fail_the_checksum(bundle_dir: Path) -> None:
    data = bytearray((bundle_dir / "weights.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle_dir / "weights.pt").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(bundle_dir)


def test_unreadable_weights(bundle_dir: Path) -> None:
    _replace_weights(bundle_dir, b"this is not a torch file")
    with pytest.raises(BundleError, match="not a plain tensor file"):
        load_bundle(bundle_dir)


def test_nan_weights_are_refused(bundle_dir: Path, detector: DcaseAE) -> None:
    state = {f"detector.{k}": v.clone() for k, v in detector.state_dict().items()}
    state["detector.ae.net.0.weight"][0, 0] = float("nan")
    _replace_weights(bundle_dir, _saved(state))
    with pytest.raises(BundleError, match=r"NaN in detector.ae.net.0.weight.*retrain"):
        load_bundle(bundle_dir)


def test_missing_extra_and_misshapen_tensors(bundle_dir: Path, detector: DcaseAE) -> None:
    state = {f"detector.{k}": v for k, v in detector.state_dict().items()}
    _replace_weights(bundle_dir, _saved({k: v for k, v in state.items() if k != "detector.ae.net.0.weight"}))
    with pytest.raises(BundleError, match=r"missing \['ae.net.0.weight'\]"):
        load_bundle(bundle_dir)
    _replace_weights(bundle_dir, _saved({**state, "detector.ae.extra": torch.zeros(3)}))
    with pytest.raises(BundleError, match=r"unexpected \['ae.extra'\]"):
        load_bundle(bundle_dir)
    _replace_weights(bundle_dir, _saved({**state, "stage3.mean_": torch.zeros(3)}))
    with pytest.raises(BundleError, match=r"parts the bundle does not have: \['stage3'\]"):
        load_bundle(bundle_dir)
    _replace_weights(bundle_dir, _saved({**state, "noprefix": torch.zeros(3)}))
    with pytest.raises(BundleError, match="no part prefix"):
        load_bundle(bundle_dir)
    _replace_weights(bundle_dir, _saved({**state, "detector.ae.net.0.bias": torch.zeros(99)}))
    with pytest.raises(BundleError, match=r"'ae.net.0.bias'\] has shape \(99,\)"):
        load_bundle(bundle_dir)
    _replace_weights(bundle_dir, _saved({"nested": {"a": torch.zeros(1)}}))
    with pytest.raises(BundleError, match="flat dict"):
        load_bundle(bundle_dir)


class _Payload:
    """Unpickling this would create a file: proof of code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_loading_never_unpickles_objects(bundle_dir: Path, detector: DcaseAE, tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    _replace_weights(bundle_dir, _saved({**detector.state_dict(), "detector.mean_": _Payload(marker)}))
    with pytest.raises(BundleError, match="not a plain tensor file"):
        load_bundle(bundle_dir)
    assert not marker.exists()


def test_save_refuses_non_json_metadata(tmp_path: Path, detector: DcaseAE) -> None:
    with pytest.raises(BundleError, match="not plain JSON"):
        save_bundle(tmp_path / "b", detector, FEATURE, 1.0, {"method": "fixed"}, "fan", [], {"when": object()})
    with pytest.raises(BundleError, match="threshold must be finite"):
        save_bundle(tmp_path / "b", detector, FEATURE, float("nan"), {"method": "fixed"}, "fan", [], {})
    assert not (tmp_path / "b" / "bundle.json").exists()


# -- schema 1, members, per-id thresholds ---------------------------------------------------------------------------

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_schema1_bundle_written_before_schema2_scores_identically() -> None:
    """tests/fixtures/bundle_schema1 was written by the schema-1 code (commit e904a97), together with the scores it
    gave; today's loader must read it and give exactly those scores, offline and per vector."""
    from tests.helpers import machine_audio

    ref = json.loads((FIXTURES / "bundle_schema1_scores.json").read_text())
    b = load_bundle(FIXTURES / "bundle_schema1", device="cpu")
    assert json.loads((FIXTURES / "bundle_schema1" / "bundle.json").read_text())["schema"] == 1
    assert (b.kind, b.stages, b.members, b.per_id_thresholds) == ("detector", [], {}, {})
    clips = [machine_audio(2.0, 100), machine_audio(2.0, 101, anomalous=True), machine_audio(3.0, 102)]
    np.testing.assert_array_equal(b.score_wavs(clips), list(ref["clips"].values()))
    vec = b.chain.score_vectors(b.feature.extract(clips[0])).double().numpy()
    np.testing.assert_array_equal(vec, ref["vector_scores_normal_seed100"])


def test_member_bundles_are_copied_loaded_and_checked(tmp_path: Path, bundle_dir: Path, detector: DcaseAE) -> None:
    outer = save_bundle(tmp_path / "outer", detector, FEATURE, 1.0, {"method": "fixed"}, "fan", [], {},
                        members={"ae_a": bundle_dir, "ae-b.2": bundle_dir})
    b = load_bundle(outer, device="cpu")
    assert list(b.members) == ["ae_a", "ae-b.2"] and all(m.name == "dcase_ae" for m in b.members.values())
    wavs = _wavs(2, 0.5, seed=3)
    np.testing.assert_array_equal(b.members["ae_a"].score_wavs(wavs), load_bundle(bundle_dir).score_wavs(wavs))
    data = bytearray((outer / "members" / "ae_a" / "weights.pt").read_bytes())
    data[100] ^= 0xFF
    (outer / "members" / "ae_a" / "weights.pt").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="member 'ae_a'.*checksum mismatch"):
        load_bundle(outer)
    _edit_meta(outer, members=["../escape"])
    with pytest.raises(BundleError, match="not a plain name"):
        load_bundle(outer)
    with pytest.raises(BundleError, match="plain name"):
        save_bundle(tmp_path / "bad", detector, FEATURE, 1.0, {"method": "fixed"}, "fan", [], {},
                    members={"../x": bundle_dir})


def test_per_id_thresholds_round_trip(tmp_path: Path, detector: DcaseAE) -> None:
    out = save_bundle(tmp_path / "ids", detector, FEATURE, 1.0, {"method": "gamma"}, "fan", ["id_00", "id_02"], {},
                      per_id_thresholds={"id_00": 0.5})
    b = load_bundle(out, device="cpu")
    assert (b.threshold_for("id_00"), b.threshold_for("id_02"), b.threshold_for(None)) == (0.5, 1.0, 1.0)
    with pytest.raises(BundleError, match="must be finite"):
        save_bundle(tmp_path / "nan", detector, FEATURE, 1.0, {}, "fan", [], {}, per_id_thresholds={"a": float("inf")})


def test_a_bundle_json_that_is_a_folder_is_a_bundle_error(tmp_path: Path) -> None:
    (tmp_path / "b" / "bundle.json").mkdir(parents=True)
    with pytest.raises(BundleError, match="cannot be read"):
        load_bundle(tmp_path / "b", device="cpu")
