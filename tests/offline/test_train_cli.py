"""`asd-offline train` and `asd-offline models` end to end on a tiny DCASE-layout data set written here."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from models.bundle import load_bundle
from models.detectors import REGISTRY, registered
from models.features import feature_from_dict
from offline.cli import main
from offline.train import DEFAULT_CONFIG, FEW_CLIPS_CONFIG, SHRUNK_BELOW
from offline.datasets.records import Clip
from models.training.recipe import train_bundle

SR = 16000
REPO = Path(__file__).resolve().parents[2]
FAST = ["--epochs", "2", "--no-progress", "--device", "cpu"]


def _tone(rng: np.random.Generator, seconds: float, anomaly: bool) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    f0 = rng.uniform(180, 220)
    x = sum(0.2 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 5)) + 0.02 * rng.normal(size=t.size)
    if anomaly:  # bearing-like clicks
        x[rng.integers(0, t.size, 40)] += 0.8
    return np.clip(x, -1, 1).astype(np.float32)


def write_dcase(root: Path, machine: str = "fan", ids: tuple[str, ...] = ("id_00", "id_02"), n_train: int = 8,
                n_test: int = 2, seconds: float = 1.0) -> Path:
    """DCASE 2020 layout: <machine>/{train,test}/{normal,anomaly}_id_XX_NNNNNNNN.wav, 16-bit PCM like the originals."""
    rng = np.random.default_rng(0)
    for split, labels in (("train", [("normal", n_train)]), ("test", [("normal", n_test), ("anomaly", n_test)])):
        folder = root / machine / split
        folder.mkdir(parents=True, exist_ok=True)
        for mid in ids:
            for label, n in labels:
                for k in range(n):
                    sf.write(folder / f"{label}_{mid}_{k:08d}.wav", _tone(rng, seconds, label == "anomaly"), SR,
                             subtype="PCM_16")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dcase(tmp_path_factory.mktemp("data"))


def test_models_lists_registered_detectors(capsys: pytest.CaptureFixture) -> None:
    assert main(["models"]) == 0
    assert capsys.readouterr().out.splitlines() == sorted(REGISTRY)


def test_train_writes_a_loadable_bundle(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "fan_ae"
    rc = main(["train", "--data", str(dataset), "--model", "dcase_ae", "--machine", "fan", "--out", str(out),
               "--holdout", "0.25", *FAST])
    assert rc == 0
    assert f"wrote {out}" in capsys.readouterr().out
    b = load_bundle(out, device="cpu")
    assert (b.name, b.machine, b.ids, b.threshold_method) == ("dcase_ae", "fan", ["id_00", "id_02"], "gamma")
    assert (b.window_seconds, b.hop_seconds) == (10.0, 1.0)
    assert b.feature == feature_from_dict(REGISTRY["dcase_ae"].default_feature)
    t = b.meta["training"]
    assert (t["n_clips"], t["n_fit_clips"], t["n_holdout_clips"], t["threshold_scores"]) == (16, 12, 4, "holdout")
    assert t["epochs_run"] == 2 and t["audio_seconds"] == pytest.approx(16.0)
    assert t["n_vectors"] == 12 * b.feature.n_vectors(SR)
    assert b.meta["threshold"]["info"]["n"] == 4
    assert b.meta["model"]["params"]["epochs"] == 2
    # the threshold sits among the held-out normal scores' range, as a 0.9 quantile should
    assert t["score_stats"]["min"] < b.threshold < 2 * t["score_stats"]["max"]


def test_train_one_id_with_config_and_percentile(dataset: Path, tmp_path: Path) -> None:
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({
        "model": "dcase_ae",
        "feature": {"n_mels": 32},
        "params": {"hidden": 32, "bottleneck": 4, "epochs": 5, "num_threads": 1},
        "window_seconds": 4, "hop_seconds": 0.5, "seed": 3,
    }))
    out = tmp_path / "b"
    rc = main(["train", "--data", str(dataset), "--model", "dcase_ae", "--machine", "fan", "--id", "id_02",
               "--config", str(config), "--out", str(out), "--threshold", "percentile:80", *FAST])
    assert rc == 0
    b = load_bundle(out, device="cpu")
    assert b.ids == ["id_02"] and b.meta["training"]["n_clips"] == 8
    assert b.feature.n_mels == 32 and b.feature.context == 5  # merged over the model's default
    params = b.meta["model"]["params"]
    assert (params["hidden"], params["bottleneck"], params["epochs"], params["seed"]) == (32, 4, 2, 3)  # flag wins
    assert (b.window_seconds, b.hop_seconds, b.threshold_method) == (4.0, 0.5, "percentile")


def test_few_clips_get_a_cross_fitted_threshold(dataset: Path, tmp_path: Path, caplog) -> None:
    """10 % of the machine's clips would hold out too few for a gamma threshold (this used to be refused): every
    clip is scored by a model fitted on the others, and the final model is fitted on all of them."""
    out = tmp_path / "b"
    with caplog.at_level(logging.INFO):
        rc = main(["train", "--data", str(dataset), "--model", "dcase_ae", "--machine", "fan", "--id", "id_02",
                   "--holdout", "0.1", "--out", str(out), *FAST])
    assert rc == 0
    training = load_bundle(out, device="cpu").meta["training"]
    n = training["n_clips"]
    assert training["threshold_scores"] == "cross-fitted" and training["cross_fit_folds"] == min(5, n)
    assert training["n_fit_clips"] == n and training["n_holdout_clips"] == 0
    assert "cross-fitted scores" in caplog.text


@pytest.mark.parametrize(("ids", "config", "shrinkage"), [
    (["--id", "id_00", "--id", "id_02"], "modspec_graph_level", 0.0),  # 16 clips
    (["--id", "id_02"], "modspec_graph_level", 0.0),  # 8
])
def test_without_model_or_config_audio_gets_the_few_normals_default(dataset: Path, tmp_path: Path, ids: list,
                                                                    config: str, shrinkage: float) -> None:
    out = tmp_path / "b"
    assert main(["train", "--data", str(dataset), "--machine", "fan", *ids, "--out", str(out), *FAST]) == 0
    b = load_bundle(out, device="cpu")
    expected = yaml.safe_load((REPO / "configs" / "variants" / f"{config}.yaml").read_text())
    assert b.name == expected["model"] == "modspec_graph"
    assert b.feature.level_norm is True and b.meta["model"]["params"]["scale_shrinkage"] == shrinkage
    default = b.meta["training"]["default"]
    assert default["config"] == config and default["training_clips"] == b.meta["training"]["n_clips"]


@pytest.mark.parametrize(("n_train", "config", "shrinkage"), [
    (SHRUNK_BELOW - 1, FEW_CLIPS_CONFIG, 1.0), (SHRUNK_BELOW, DEFAULT_CONFIG, 0.0)])
def test_the_default_shrinks_scales_below_its_clip_count(tmp_path: Path, n_train: int, config: str,
                                                        shrinkage: float) -> None:
    data = write_dcase(tmp_path / "d", ids=("id_00",), n_train=n_train, n_test=1)
    out = tmp_path / "b"
    assert main(["train", "--data", str(data), "--machine", "fan", "--out", str(out), *FAST]) == 0
    b = load_bundle(out, device="cpu")
    assert b.meta["training"]["default"] == {
        "config": config, "training_clips": n_train,
        "rule": f"{FEW_CLIPS_CONFIG} below {SHRUNK_BELOW} training clips, else {DEFAULT_CONFIG}"}
    assert b.meta["model"]["params"]["scale_shrinkage"] == shrinkage and b.feature.level_norm is True
    assert FEW_CLIPS_CONFIG == "modspec_graph_level_2clips" and SHRUNK_BELOW == 3  # what the README states


def test_a_config_names_the_model_and_vectors_need_one(dataset: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "b"
    assert main(["train", "--data", str(dataset), "--machine", "fan", "--config",
                 str(REPO / "configs" / "ocsvm.yaml"), "--out", str(out), *FAST]) == 0
    b = load_bundle(out, device="cpu")
    assert b.name == "ocsvm" and "default" not in b.meta["training"]
    nameless = tmp_path / "nameless.yaml"
    nameless.write_text(yaml.safe_dump({"seed": 1}))
    assert main(["train", "--data", str(dataset), "--machine", "fan", "--config", str(nameless),
                 "--out", str(tmp_path / "c"), *FAST]) == 2
    assert "names no `model`: give --model" in capsys.readouterr().err
    vectors = _vectors_npz(tmp_path / "v.npz")
    assert main(["train", "--data", str(vectors), "--out", str(tmp_path / "v"), *FAST]) == 2
    assert "--model is required for pre-computed vectors" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "nope"], "unknown detector 'nope'"),
        (["--machine", "pump"], "no clips of machine 'pump'"),
        (["--id", "id_09"], r"id\(s\) \['id_09'\]; ids present: \['id_00', 'id_02'\]"),
        (["--threshold", "median"], "bad threshold spec"),
        (["--holdout", "1.5"], r"holdout must be in \[0, 1\)"),
    ],
)
def test_train_reports_bad_requests(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list,
                                    message: str) -> None:
    args = {"--model": "dcase_ae", "--machine": "fan"}
    for flag, value in zip(extra[::2], extra[1::2]):
        args[flag] = value
    argv = ["train", "--data", str(dataset), "--out", str(tmp_path / "b"), *FAST]
    argv += [x for kv in args.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "asd-offline train: error:" in err and re.search(message, err), err
    assert not (tmp_path / "b").exists()


def test_config_errors(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("params: {epochs: 1}\nlearning_rate: 0.1\n")
    argv = ["train", "--data", str(dataset), "--model", "dcase_ae", "--machine", "fan", "--out", str(tmp_path / "b")]
    assert main([*argv, "--config", str(bad)]) == 2
    assert "unknown key(s) ['learning_rate']" in capsys.readouterr().err
    bad.write_text("model: other_model\n")
    assert main([*argv, "--config", str(bad)]) == 2
    assert "config is for model 'other_model'" in capsys.readouterr().err
    bad.write_text("params: {seed: 4}\n")
    assert main([*argv, "--config", str(bad)]) == 2
    assert "set `seed` at the top level" in capsys.readouterr().err
    bad.write_text("params: {dropout: 0.2}\n")
    assert main([*argv, "--config", str(bad)]) == 2
    assert "unknown hyper-parameter(s) ['dropout']" in capsys.readouterr().err


MODEL_CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if p.name != "monitor.example.yaml")


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_state_the_code_defaults_and_build(path: Path) -> None:
    from models.training.recipe import build_spec

    config = yaml.safe_load(path.read_text())
    cls = REGISTRY[config["model"]]
    assert path.stem == cls.name
    assert feature_from_dict(config["feature"]) == feature_from_dict({"kind": "logmel", **cls.default_feature})
    defaults = cls().get_params()
    stated = {k: v for k, v in config["params"].items() if k != "members"}  # an ensemble's members are its content
    assert {k: defaults[k] for k in stated} == stated
    spec = build_spec(cls.name, config)
    assert [s.name for s in spec.stages] == [s if isinstance(s, str) else s["name"] for s in config.get("stages", [])]


# dcase_ae_denoised names a denoiser bundle the user trains first: tests/offline/test_noise_cli.py builds it so
VARIANTS = sorted(p for p in (REPO / "configs" / "variants").glob("*.yaml") if p.stem != "dcase_ae_denoised")


@pytest.mark.parametrize("path", VARIANTS, ids=lambda p: p.stem)
def test_variant_configs_load_and_build(path: Path) -> None:
    """Named variants (configs/variants/) are read as `asd-offline train --config` reads them, members inlined."""
    from models.training.recipe import build_spec
    from offline.train import load_config

    config = load_config(path)
    spec = build_spec(config["model"], {k: v for k, v in config.items() if k != "pairs"})
    assert spec.detector.name == config["model"]
    for member in (config.get("params") or {}).get("members", []):
        assert isinstance(member["config"], dict)  # read from its file, relative to the variant's folder
        build_spec(member["model"], member["config"])


def test_train_bundle_api_with_holdout_zero(dataset: Path, tmp_path: Path) -> None:
    """The monitor's demo calls this directly with a handful of clips and tiny epochs."""
    from offline.datasets.index import load_clips

    clips: list[Clip] = load_clips(dataset, machine="fan")
    out = train_bundle(clips, "dcase_ae", "fan", tmp_path / "demo",
                       {"params": {"epochs": 1, "num_threads": 1}, "holdout": 0}, device="cpu", progress=False)
    b = load_bundle(out, device="cpu")
    t = b.meta["training"]
    assert (t["n_fit_clips"], t["n_holdout_clips"], t["threshold_scores"]) == (16, 0, "training")
    assert b.meta["model"]["params"]["device"] == "cpu" and b.meta["model"]["params"]["progress"] is False
    assert json.loads((out / "bundle.json").read_text())["extra"]["config"]["holdout"] == 0


# -- every registered model the same way; per-id thresholds; pre-computed vectors --------------------------------


@pytest.mark.parametrize("name", registered())
def test_every_registered_detector_trains_quickly_with_epochs_and_scores(name: str, dataset: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "quick.yaml"
    quick = {k: v for k, v in REGISTRY[name].quick_params.items() if k != "epochs"}
    if REGISTRY[name].combines_members:
        quick["members"] = list(REGISTRY[name].quick_members)
    config = {"params": quick, "threshold": "percentile:90"}
    if REGISTRY[name].quick_feature:
        config["feature"] = {**REGISTRY[name].default_feature, **REGISTRY[name].quick_feature}
    cfg.write_text(yaml.safe_dump(config))
    out = tmp_path / name
    assert main(["train", "--data", str(dataset), "--model", name, "--machine", "fan", "--config", str(cfg),
                 "--out", str(out), *FAST]) == 0
    b = load_bundle(out, device="cpu")
    assert b.name == name and b.meta["schema"] == 2
    if REGISTRY[name].iterative():
        assert b.meta["training"]["epochs_run"] == 2 and b.detector.get_params()["epochs"] == 2
    # and scored by the CLI: one JSON line per file, the bundle's own numbers
    wavs = sorted((dataset / "fan" / "test").glob("*_id_00_*.wav"))[:2]
    capsys.readouterr()
    assert main(["score", "--bundle", str(out), "--device", "cpu", "--id", "id_00", *map(str, wavs)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = b.score_wavs([sf.read(w, dtype="float32")[0] for w in wavs], ids=["id_00"] * len(wavs))
    assert [line["path"] for line in lines] == [str(w) for w in wavs]
    np.testing.assert_allclose([line["score"] for line in lines], expected, rtol=1e-5)


def test_a_one_pass_detector_says_it_ignores_epochs(dataset: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    from tests import plugins

    with plugins.plugins_registered(), caplog.at_level("INFO"):
        name = plugins.WindowQuantileGaussian.name
        assert main(["train", "--data", str(dataset), "--model", name, "--machine", "fan", "--out",
                     str(tmp_path / "b"), "--threshold", "percentile:90", *FAST]) == 0
    assert [r.getMessage() for r in caplog.records if "--epochs 2 does not apply" in r.getMessage()]


def test_ids_with_enough_held_out_clips_get_their_own_threshold(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "per_id"
    assert main(["train", "--data", str(dataset), "--model", "dcase_ae", "--machine", "fan", "--out", str(out),
                 "--holdout", "0.5", "--threshold", "percentile:90", *FAST]) == 0
    b = load_bundle(out, device="cpu")
    assert set(b.per_id_thresholds) == {"id_00", "id_02"}
    assert all(np.isfinite(v) and v > 0 for v in b.per_id_thresholds.values())


def _vectors_npz(path: Path, n: int = 40, dim: int = 6, shift: float = 0.0) -> Path:
    rng = np.random.default_rng(3)
    latent = rng.normal(size=(n, 2))
    X = latent @ rng.normal(size=(2, dim)) + 0.1 * rng.normal(size=(n, dim)) + shift
    np.savez(path, X=X.astype(np.float32), names=np.array([f"file{i}.wav" for i in range(n)]),
             ids=np.array(["id_00", "id_01"] * (n // 2)))
    return path


def test_train_and_score_precomputed_vectors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _vectors_npz(tmp_path / "scores.npz")
    out = tmp_path / "vec"
    assert main(["train", "--data", str(data), "--model", "dcase_ae", "--out", str(out), *FAST]) == 0
    b = load_bundle(out, device="cpu")
    assert b.feature.to_dict() == {"kind": "vectors", "sample_rate": 1, "dim": 6} and b.machine == "vectors"
    assert b.meta["training"]["n_clips"] == 40 and b.ids == ["id_00", "id_01"]
    capsys.readouterr()
    assert main(["score", "--bundle", str(out), str(data), str(_vectors_npz(tmp_path / "far.npz", shift=9.0))]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 80 and [ln["row"] for ln in lines[:3]] == [0, 1, 2] and lines[1]["name"] == "file1.wav"
    assert lines[1]["id"] == "id_01" and lines[1]["threshold"] == b.threshold_for("id_01")
    near = np.array([ln["score"] for ln in lines[:40]])
    far = np.array([ln["score"] for ln in lines[40:]])
    assert far.min() > near.max()  # vectors far from the training rows score higher
    np.testing.assert_allclose(near, b.score_wavs([r[None] for r in np.load(data)["X"]],
                                                  ids=list(np.load(data)["ids"])), rtol=1e-6)


def test_vector_file_errors_are_per_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _vectors_npz(tmp_path / "scores.npz")
    out = tmp_path / "vec"
    assert main(["train", "--data", str(data), "--model", "dcase_ae", "--out", str(out), *FAST]) == 0
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=np.zeros((3, 5), np.float32))
    capsys.readouterr()
    assert main(["score", "--bundle", str(out), str(bad), str(data), "--id", "id_00"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["error"] == f"{bad}: rows have 5 values, the bundle takes 6" and len(lines) == 41
    assert all(ln.get("threshold") == load_bundle(out).threshold_for("id_00") for ln in lines[1:])


def test_training_names_silent_resampled_and_multichannel_clips(tmp_path: Path, caplog) -> None:
    from models.training.recipe import train_bundle

    rng = np.random.default_rng(0)
    clips = []
    for i in range(6):
        x = (0.1 * rng.standard_normal(16000)).astype(np.float32)
        rate, data = 16000, x
        if i == 1:
            data = np.zeros(16000, np.float32)  # a dead microphone among the normals
        if i == 2:
            rate, data = 32000, np.repeat(x, 2)
        if i == 3:
            data = np.stack([x, x], axis=1)
        path = tmp_path / f"normal_id_00_{i:03d}.wav"
        sf.write(path, data, rate, subtype="FLOAT")
        clips.append(Clip(path=path, machine="fan", id="id_00", split="train", label="normal"))
    with caplog.at_level(logging.WARNING):
        train_bundle(clips, "iforest", "fan", tmp_path / "b",
                     {"feature": {"kind": "logmel", "n_mels": 16}, "params": {"n_estimators": 10}})
    text = caplog.text
    assert "are silent" in text and "normal_id_00_001.wav" in text
    assert "were resampled to 16000 Hz" in text and "normal_id_00_002.wav (32000 Hz)" in text
    assert "channel 0 was used" in text and "normal_id_00_003.wav (2 channels)" in text
