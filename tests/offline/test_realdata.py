"""Opt-in: the DCASE AE trained on real MIMII fan id_00 normals, scored on real anomalies.

Skipped when ../shared/data/real is absent (`real_data_dir` fixture). One seeded split of the 20 normals (10 train,
10 test; all 20 anomalies test), 30 epochs, the same code path as `benchmarks/bench_realdata.py`, which reports the
spread over several splits (benchmarks/results/realdata_fan_id00.json).

What was measured, and why the check is on one fixed split: over 10 splits the AE reaches AUC 0.58 +- 0.09 (100
epochs; 30 and 500 epochs give the same mean), hardly above the seeded chance draw (0.54 +- 0.11), while the clip
level alone separates the classes perfectly (every anomalous clip of this sample is louder than every normal one).
The DCASE 2020 baseline is weak on fan id_00 too (published AUC 0.54). So the AE does NOT clearly beat chance on this
data in general; split 0 is where it does best of the 10 (0.71-0.72 at 30 and 100 epochs, reproducible run to run),
and the test pins that as a regression floor: a broken feature path or training loop falls to chance and fails it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

# Split 0, 30 epochs: AE AUC 0.72 measured (0.71 with 100 epochs, twice); the floor leaves 0.1 margin. Chance on
# 10 normals x 20 anomalies has sd sqrt(31 / 2400) = 0.11, so 0.62 is about one sd above it: a floor, not a claim.
AUC_FLOOR = 0.62
EPOCHS = 30

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_realdata.py"
    spec = importlib.util.spec_from_file_location("bench_realdata", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_manifest_split_keeps_audio_in_place(real_data_dir: Path, tmp_path: Path) -> None:
    bench = _bench()
    rows = (bench.fan_id00_manifest(real_data_dir, tmp_path / "m.csv", seed=3, n_train=10)).read_text().splitlines()
    body = [r.split(",") for r in rows[1:]]
    assert rows[0] == "path,machine,id,split,label"
    assert sum(r[3] == "train" for r in body) == 10
    assert all(r[4] == "normal" for r in body if r[3] == "train")
    assert sum(r[4] == "anomaly" for r in body) == 20
    assert all(Path(r[0]).is_absolute() and Path(r[0]).is_file() for r in body)
    assert not list(tmp_path.glob("**/*.wav"))
    other = bench.fan_id00_manifest(real_data_dir, tmp_path / "m2.csv", seed=4, n_train=10).read_text()
    assert other != "\n".join(rows) + "\n"  # another seed, another split


def test_ae_auc_floor_on_real_fan_split0(real_data_dir: Path, tmp_path: Path) -> None:
    run = _bench().run_split(real_data_dir, tmp_path, seed=0, n_train=10, epochs=EPOCHS)
    assert run["n_test"] == {"normal": 10, "anomaly": 20}
    assert run["dcase_ae"]["auc"] > AUC_FLOOR, run
