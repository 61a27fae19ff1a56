"""The seed SVDD's own mode, end to end through the CLI: a training .npz of per-file quality-score vectors of clean
recordings, inference .npz files of clean and increasingly noisy sets -> one JSON per test set of non-negative
distances and one PNG of all sets side by side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.bundle import load_bundle
from offline.cli import main

DIM = 20  # the seed's 20 quality scores per file
MIXING = np.random.default_rng(11).normal(size=(3, DIM))


def _quality_scores(path: Path, n: int, noise: float, seed: int) -> Path:
    """Per-file vectors of correlated quality scores (three latent factors); `noise` moves files off the normal
    manifold the way degraded recordings shift many scores at once."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) @ MIXING + 0.1 * rng.normal(size=(n, DIM)) + 3.0
    X += noise * rng.normal(size=(n, DIM))
    np.savez(path, X=X.astype(np.float32), names=np.array([f"{path.stem}_{i:03d}.wav" for i in range(n)]))
    return path


def test_npz_in_json_and_png_out(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train = _quality_scores(tmp_path / "train_clean.npz", 200, 0.0, seed=0)
    sets = [_quality_scores(tmp_path / f"{name}.npz", 30, noise, seed=k + 1)
            for k, (name, noise) in enumerate([("clean", 0.0), ("snr25", 0.3), ("snr20", 0.8), ("snr15", 2.0)])]
    config = tmp_path / "svdd.yaml"
    config.write_text("params: {hidden: [32], rep_dim: 8, pretrain_epochs: 10, lr: 0.001, batch_size: 32}\n"
                      "threshold: percentile:95\n")
    bundle = tmp_path / "svdd"
    assert main(["train", "--data", str(train), "--model", "deep_svdd", "--config", str(config), "--out", str(bundle),
                 "--epochs", "20", "--no-progress", "--device", "cpu"]) == 0
    b = load_bundle(bundle, device="cpu")
    assert b.feature.to_dict() == {"kind": "vectors", "sample_rate": 1, "dim": DIM} and b.name == "deep_svdd"

    out = tmp_path / "report"
    capsys.readouterr()
    assert main(["score", "--bundle", str(bundle), *map(str, sets), "--out", str(out)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 120  # stdout keeps its one line per row
    assert sorted(p.name for p in out.iterdir()) == ["clean.json", "distributions.png", "snr15.json", "snr20.json",
                                                     "snr25.json"]
    assert (out / "distributions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reports = {s.stem: json.loads((out / f"{s.stem}.json").read_text()) for s in sets}
    for s in sets:
        r = reports[s.stem]
        assert r["path"] == str(s) and r["model"] == "deep_svdd" and r["n"] == 30 == len(r["files"])
        assert r["files"][0]["name"] == f"{s.stem}_000.wav" and r["threshold"] == b.threshold
        scores = np.array([f["score"] for f in r["files"]])
        assert (scores >= 0).all()  # one-class distances: 0 is the centre, the cleanest
        np.testing.assert_allclose(scores, b.score_wavs([row[None] for row in np.load(s)["X"]]), rtol=1e-6)
        assert r["summary"]["anomalous"] == int((scores > b.threshold).sum())
    medians = [reports[s.stem]["summary"]["median"] for s in sets]
    assert medians == sorted(medians)  # the noisier the set, the farther from the centre


def test_out_needs_a_vectors_bundle(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tests.helpers import SR, machine_audio
    import soundfile as sf

    from models.training.recipe import build_spec, fit_bundle

    spec = build_spec("deep_svdd", {"params": {"hidden": [8], "rep_dim": 4, "epochs": 1, "pretrain_epochs": 0,
                                                "progress": False},
                                     "feature": {"kind": "logmel", "sample_rate": SR, "n_fft": 256,
                                                 "hop_length": 128, "n_mels": 16},
                                     "threshold": "percentile:90"})
    feats = spec.feature.extract_batch([machine_audio(1.0, s) for s in range(4)])
    fit_bundle(tmp_path / "b", spec, feats[:3], None, feats[3:], None, machine="hum")
    wav = tmp_path / "x.wav"
    sf.write(wav, machine_audio(1.0, 9), SR)
    assert main(["score", "--bundle", str(tmp_path / "b"), str(wav), "--out", str(tmp_path / "r")]) == 2
    assert "--out writes one test set per vector file" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
