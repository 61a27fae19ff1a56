"""The noise models from the command line: `synth --pairs`, `train` from each pair source, `score`, `denoise` on
every input kind, `evaluate` on pairs, and a detector trained behind the denoiser stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from models.bundle import load_bundle
from offline.cli import main
from offline.datasets.pairs import mix_at_snr, read_pair_folder
from tests.offline.test_train_cli import write_dcase

REPO = Path(__file__).resolve().parents[2]
FAST = ["--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pairs") / "p"
    assert main(["synth", str(out), "--pairs", "--machines", "fan,valve", "--ids", "1", "--train-clips", "2",
                 "--test-clips", "1", "--duration", "3", "--pair-snrs", "6,-6"]) == 0
    return out


@pytest.fixture(scope="module")
def bundles(pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("noise_bundles")
    out = {}
    for model in ("lstm_classifier", "lstm_denoiser"):
        out[model] = root / model
        assert main(["train", "--data", str(pairs), "--model", model, "--config",
                     str(REPO / "configs" / "variants" / f"{model}_quick.yaml"), "--out", str(out[model]), "--epochs", "2",
                     *FAST]) == 0
    return out


def _lines(capsys: pytest.CaptureFixture) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_synth_pairs_are_the_same_audio_with_noise_at_each_snr(pairs: Path) -> None:
    train, val = read_pair_folder(pairs, 16000)
    assert len(train) == 2 * 2 * 2 and len(val) == 2 * 1 * 2  # types x recordings x SNRs
    assert {p.machine_id for p in train} == {"fan_id_00", "valve_id_00"}
    measured: dict[tuple[str, str], dict[float, float]] = {}
    for p in train + val:
        recording, snr = p.name.rsplit("_", 1)
        noise = p.noisy.astype(np.float64) - p.clean
        ratio = 10 * np.log10(np.mean(p.clean.astype(np.float64) ** 2) / np.mean(noise**2))
        measured.setdefault((p.machine_id, recording), {})[float(snr.removesuffix("dB.wav"))] = ratio
    for by_snr in measured.values():
        # the generator's SNR is nominal over a long recording (a 3 s valve clip has more or fewer strokes), but the
        # same recording's two sides differ by exactly the SNR step
        assert all(abs(v - snr) < 2.5 for snr, v in by_snr.items())
        assert by_snr[6.0] - by_snr[-6.0] == pytest.approx(12.0, abs=0.3)


def test_mix_at_snr_sets_the_ratio() -> None:
    rng = np.random.default_rng(0)
    clean, noise = rng.normal(size=16000).astype(np.float32), rng.normal(size=16000).astype(np.float32) * 3
    noisy = mix_at_snr(clean, noise, -6.0)
    assert 10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2)) == pytest.approx(-6.0, abs=1e-3)
    with pytest.raises(ValueError, match="silent"):
        mix_at_snr(clean, np.zeros_like(clean), 0.0)


def test_trained_noise_bundles_report_validation_and_score(bundles: dict[str, Path], pairs: Path, capsys) -> None:
    clf = load_bundle(bundles["lstm_classifier"], device="cpu")
    den = load_bundle(bundles["lstm_denoiser"], device="cpu")
    assert (clf.kind, den.kind) == ("classifier", "denoiser")
    assert set(clf.meta["training"]["validation"]) >= {"accuracy", "roc_auc"}
    assert set(den.meta["training"]["validation"]) >= {"mse", "mse_noisy"}
    assert clf.threshold == 0.5 and clf.meta["training"]["pairs"] == "folder"
    files = sorted((pairs / "val" / "noisy").rglob("*.wav"))[:1] + sorted((pairs / "val" / "clean").rglob("*.wav"))[:1]
    capsys.readouterr()
    assert main(["score", "--bundle", str(bundles["lstm_classifier"]), *map(str, files)]) == 0
    scores = [r["score"] for r in _lines(capsys)]
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    assert main(["score", "--bundle", str(bundles["lstm_denoiser"]), str(files[0])]) != 0
    assert "scores nothing" in _lines(capsys)[0]["error"]


def test_denoise_writes_npy_wav_and_pair_examples(bundles: dict[str, Path], pairs: Path, tmp_path: Path,
                                                  capsys) -> None:
    den = load_bundle(bundles["lstm_denoiser"], device="cpu")
    noisy_wav = sorted((pairs / "val" / "noisy").rglob("*.wav"))[0]
    clean_wav = pairs / "val" / "clean" / noisy_wav.relative_to(pairs / "val" / "noisy")
    mel = den.feature.extract(sf.read(noisy_wav, dtype="float32")[0]).numpy()
    np.save(tmp_path / "frames.npy", mel)
    np.save(tmp_path / "bands.npy", mel.T)  # librosa's layout
    np.save(tmp_path / "clean.npy", den.feature.extract(sf.read(clean_wav, dtype="float32")[0]).numpy())
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["denoise", "--bundle", str(bundles["lstm_denoiser"]), str(tmp_path / "frames.npy"),
                 str(tmp_path / "bands.npy"), str(noisy_wav), str(pairs), "--clean", str(tmp_path / "clean.npy"),
                 "--clean", str(tmp_path / "clean.npy"), "--out", str(out)]) == 0
    rows = _lines(capsys)
    assert len(rows) == 4 and not any("error" in r for r in rows)
    assert np.load(rows[0]["denoised"]).shape == mel.shape and np.load(rows[1]["denoised"]).shape == mel.T.shape
    np.testing.assert_allclose(np.load(rows[0]["denoised"]), np.load(rows[1]["denoised"]).T)
    assert set(rows[0]["mse_db2"]) == {"noisy", "denoised"}
    wav, sr = sf.read(rows[2]["denoised"])
    assert sr == 16000 and abs(wav.size - sf.info(noisy_wav).frames) < 2048 and np.abs(wav).max() > 0
    assert all(Path(rows[3][k]).exists() for k in ("clean", "noisy", "denoised", "png"))
    assert {"noisy_snr_db", "denoised_snr_db", "resynthesis_snr_db"} <= set(rows[3])
    assert all(Path(r["png"]).stat().st_size > 1000 for r in rows)


def test_denoise_refuses_what_it_cannot_read(bundles: dict[str, Path], tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "wrong.npy", np.zeros((10, 7), dtype=np.float32))
    (tmp_path / "x.txt").write_text("hi")
    capsys.readouterr()
    assert main(["denoise", "--bundle", str(bundles["lstm_denoiser"]), str(tmp_path / "wrong.npy"),
                 str(tmp_path / "x.txt"), "--out", str(tmp_path / "o")]) == 2
    rows = _lines(capsys)
    assert "80 bands" in rows[0]["error"] and "expected a .npy" in rows[1]["error"]
    assert main(["denoise", "--bundle", str(bundles["lstm_classifier"]), str(tmp_path / "wrong.npy")]) == 2
    assert "needs a denoiser" in capsys.readouterr().err


def test_training_from_recordings_plus_a_noise_recording(tmp_path: Path) -> None:
    data = write_dcase(tmp_path / "d", ids=("id_00",), n_train=4, seconds=3.0)
    noise = np.random.default_rng(1).normal(size=16000 * 5).astype(np.float32) * 0.05
    sf.write(tmp_path / "site.wav", noise, 16000)
    out = tmp_path / "den"
    assert main(["train", "--data", str(data), "--machine", "fan", "--model", "lstm_denoiser", "--config",
                 str(REPO / "configs" / "variants" / "lstm_denoiser_quick.yaml"), "--noise", str(tmp_path / "site.wav"),
                 "--out", str(out), "--epochs", "1", *FAST]) == 0
    t = load_bundle(out, device="cpu").meta["training"]
    assert t["pairs"] == "mixed" and t["noise"].endswith("site.wav")
    assert (t["n_pairs"], t["n_val_pairs"]) == (3 * 3, 1 * 3)  # one of 4 recordings held out before mixing, 3 SNRs


def test_bad_noise_training_requests_are_clear(pairs: Path, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"pairs": {"snr": [0]}}))
    cases = [
        (["--data", str(pairs), "--model", "lstm_classifier", "--config", str(cfg)], "unknown key"),
        (["--data", str(pairs), "--model", "lstm_classifier", "--noise", str(cfg)], "holds ready pairs"),
        (["--data", str(pairs), "--model", "dcase_ae", "--machine", "fan", "--noise", str(cfg)], "for the noise"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(["train", *argv, "--out", str(tmp_path / "x"), *FAST]) == 2
        assert message in capsys.readouterr().err
    lonely = tmp_path / "lonely"
    for side in ("noisy", "clean"):
        (lonely / "train" / side / "m").mkdir(parents=True)
    sf.write(lonely / "train" / "noisy" / "m" / "a.wav", np.zeros(16000, dtype=np.float32), 16000)
    assert main(["train", "--data", str(lonely), "--model", "lstm_classifier", "--out", str(tmp_path / "y"),
                 *FAST]) == 2
    assert "without a partner" in capsys.readouterr().err


def test_evaluate_reports_noise_models_on_pairs(bundles: dict[str, Path], pairs: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main(["evaluate", "--data", str(pairs), "--bundle", str(bundles["lstm_classifier"]), "--bundle",
                 str(bundles["lstm_denoiser"]), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())["noise_models"]
    assert set(res["lstm_classifier"]["snr"]) == {"6", "-6"} and 0 <= res["lstm_classifier"]["roc_auc"] <= 1
    assert set(res["lstm_denoiser"]["snr_db_median"]) == {"noisy", "denoised_resynthesised", "clean_resynthesised"}
    assert "lstm_denoiser" in (out / "summary.md").read_text()


def test_a_detector_trains_and_scores_behind_the_denoiser(bundles: dict[str, Path], tmp_path: Path, capsys) -> None:
    data = write_dcase(tmp_path / "d", ids=("id_00",), n_train=4, seconds=3.0)
    den_feature = load_bundle(bundles["lstm_denoiser"], device="cpu").feature.to_dict()
    cfg = tmp_path / "ae.yaml"
    cfg.write_text(yaml.safe_dump({"feature": {**den_feature, "context": 5},
                                   "params": {"hidden": 16, "bottleneck": 4, "n_layers": 1},
                                   "stages": [{"name": "lstm_denoiser",
                                               "params": {"bundle": str(bundles["lstm_denoiser"])}}]}))
    out = tmp_path / "ae"
    assert main(["train", "--data", str(data), "--machine", "fan", "--model", "dcase_ae", "--config", str(cfg),
                 "--out", str(out), "--epochs", "1", *FAST]) == 0
    b = load_bundle(out, device="cpu")
    assert [s["name"] for s in b.meta["stages"]] == ["lstm_denoiser"] and b.meta["learned"]["stage0"]["context"] == 5
    capsys.readouterr()
    assert main(["score", "--bundle", str(out), *map(str, sorted((data / "fan" / "test").glob("*.wav"))[:2])]) == 0
    assert all(np.isfinite(r["score"]) for r in _lines(capsys))


def test_variant_configs_build(bundles: dict[str, Path]) -> None:
    """configs/variants/: the quick noise-model settings, and the AE behind a denoiser (its bundle path is the
    user's; here the one trained above, whose log-mel the variant must match)."""
    from models.training.recipe import build_spec

    folder = REPO / "configs" / "variants"
    for name in ("lstm_classifier", "lstm_denoiser"):
        config = yaml.safe_load((folder / f"{name}_quick.yaml").read_text())
        config.pop("pairs")
        assert build_spec(name, config).detector.get_params()["epochs"] < REPO_DEFAULT_EPOCHS[name]
    config = yaml.safe_load((folder / "dcase_ae_denoised.yaml").read_text())
    config["stages"][0]["params"]["bundle"] = str(bundles["lstm_denoiser"])
    spec = build_spec("dcase_ae", config)
    assert [s.name for s in spec.stages] == ["lstm_denoiser"] and spec.feature.n_mels == 80


REPO_DEFAULT_EPOCHS = {"lstm_classifier": 50, "lstm_denoiser": 10}
