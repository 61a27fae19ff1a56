"""The GPU benchmark runs where CI runs (on the CPU, tiny models), so it works when a session is lent a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import bench_gpu


def test_tiny_run_on_the_cpu_measures_training_and_batched_scoring(tmp_path: Path) -> None:
    bench_gpu.main(["--device", "cpu", "--tiny", "--clips", "3", "--epochs", "1", "--streams", "1,3", "--ticks", "2",
                    "--models", "stgram_mfn,ssl_knn,lstm_denoiser", "--name", "gpu_test", "--out-dir", str(tmp_path)])
    doc = json.loads((tmp_path / "gpu_test.json").read_text())
    assert doc["device"] == "cpu" and doc["tiny"] and doc["machine"]["cpu_count"]
    models = doc["models"]
    assert list(models) == ["stgram_mfn", "ssl_knn", "lstm_denoiser"]
    for name, m in models.items():
        assert m["epochs_run"] == 1 and m["params"]["epochs"] == 1, name
        assert 0 < m["seconds_per_epoch"] <= m["train_wall_seconds"], name
        assert m["fit_seconds_at_shipped_epochs_extrapolated"] == pytest.approx(
            m["seconds_per_epoch"] * m["shipped_epochs"], abs=0.1), name
        assert m["peak_accelerator_mib"] is None and m["training_device"] == "cpu", name
    assert models["ssl_knn"]["pretraining"] and not models["stgram_mfn"]["pretraining"]
    for name in ("stgram_mfn", "ssl_knn"):  # STgram-MFN's streams carry machine ids: it classifies them
        rows = models[name]["scoring"]
        assert [r["streams"] for r in rows] == [1, 3], name
        assert all(0 < r["seconds_per_hop_mean"] <= r["seconds_per_hop_max"] for r in rows), name
    assert models["lstm_denoiser"]["scoring"] == []  # a denoiser has no scores
    assert doc["failed"] == {}


def test_a_failing_model_is_recorded_and_the_others_still_measured(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = bench_gpu.train

    def train(model: str, *args, **kwargs):
        if model == "lstm_classifier":
            raise RuntimeError("out of memory")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(bench_gpu, "train", train)
    with pytest.raises(SystemExit, match=r"failed: \['lstm_classifier'\]"):
        bench_gpu.main(["--device", "cpu", "--tiny", "--clips", "2", "--epochs", "1", "--models",
                        "lstm_classifier,lstm_denoiser", "--name", "gpu_test", "--out-dir", str(tmp_path)])
    doc = json.loads((tmp_path / "gpu_test.json").read_text())
    assert doc["failed"] == {"lstm_classifier": "RuntimeError: out of memory"} and list(doc["models"]) == ["lstm_denoiser"]


def test_refuses_what_it_cannot_measure(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not measured by this benchmark"):
        bench_gpu.main(["--device", "cpu", "--models", "ocsvm", "--out-dir", str(tmp_path)])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device"):
            bench_gpu.main(["--out-dir", str(tmp_path)])
