"""Accuracy on real recordings: models side by side on MIMII fan id_00, against rms_level and chance.

The real set (../shared/data/real, see its README) has 20 normal and 20 anomalous fan id_00 clips (the
`mimii_mohxen_fan_id00` folder) and no split. Each run draws a seeded split of the normals (`--n-train` to train,
the rest to test; all anomalies to test), writes it as a manifest CSV in a temporary folder (the audio stays where
it is), trains every model with its shipped config through `train_bundle` and scores them with
`offline.evaluate.evaluate`, so the benchmark exercises the same code as `asd-offline train` / `evaluate`.
Repeating over seeds shows how much of a single figure is the luck of a 10-normal test set.

Usage: python -m benchmarks.bench_realdata [--models dcase_ae,iforest] [--seeds 10] [--epochs 100] [--n-train 10]
       -> benchmarks/results/realdata_fan_id00.json
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.common import RESULTS, model_config, write_result

DEFAULT_REAL = ROOT.parent / "shared" / "data" / "real"
NAME = "realdata_fan_id00"
MACHINE, ID = "fan", "id_00"
FOLDER = "mimii_mohxen_fan_id00/"  # the 20 + 20 clips of one set; other folders' fan id_00 clips come from other sets
REFERENCES = ("rms_level", "chance")

log = logging.getLogger("bench_realdata")


def fan_id00_manifest(real_dir: Path, out_csv: Path, seed: int, n_train: int) -> Path:
    """Write a manifest of the fan id_00 clips with a seeded train/test split of the normals (anomalies: test)."""
    with (real_dir / "manifest.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f)
                if r["machine"] == MACHINE and r["id"] == ID and r["path"].startswith(FOLDER)]
    normals = sorted(r["path"] for r in rows if r["label"] == "normal")
    anomalies = sorted(r["path"] for r in rows if r["label"] == "anomaly")
    if not 0 < n_train < len(normals) or not anomalies:
        raise ValueError(
            f"{real_dir}: {len(normals)} normal / {len(anomalies)} anomalous {MACHINE} {ID} clips; "
            f"cannot train on {n_train} normals and still test"
        )
    order = np.random.default_rng(seed).permutation(len(normals))
    train = {normals[i] for i in order[:n_train]}
    with out_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "machine", "id", "split", "label"])
        for p in normals:
            w.writerow([real_dir / p, MACHINE, ID, "train" if p in train else "test", "normal"])
        for p in anomalies:
            w.writerow([real_dir / p, MACHINE, ID, "test", "anomaly"])
    return out_csv


def train_config(entry: str, epochs: int, seed: int, threshold: str = "gamma") -> tuple[str, dict[str, Any]]:
    """(label, config): the entry's config (`benchmarks.common.model_config`: the shipped one or a cleaning
    variant), with `epochs` for iterative models and 30 % of the training normals held out to set the threshold
    (the gamma fit needs at least 3 held-out clips, with distinct scores: a forest on 7 clips can score 3 held-out
    clips alike, so `threshold` can name a percentile instead)."""
    from models.detectors import get_detector

    label, config = model_config(entry)
    model = config.get("model", entry)
    params = {**config.get("params", {})}
    if get_detector(model).iterative():
        params.update(epochs=epochs, device="cpu", progress=False)
    return label, {**config, "model": model, "params": params, "holdout": 0.3, "seed": seed, "threshold": threshold}


def run_split(real_dir: Path, work: Path, seed: int, n_train: int, epochs: int,
              models: tuple[str, ...] = ("dcase_ae",), threshold: str = "gamma") -> dict[str, Any]:
    """Train every model and evaluate them side by side on one seeded split; AUC/pAUC with the two references."""
    from offline.datasets.index import load_clips
    from offline.evaluate import evaluate
    from models.training.recipe import train_bundle

    manifest = fan_id00_manifest(real_dir, work / f"manifest_seed{seed}.csv", seed, n_train)
    out: dict[str, Any] = {"seed": seed, "train_seconds": {}}
    bundles = []
    labels = []
    for entry in models:
        t0 = time.perf_counter()
        label, config = train_config(entry, epochs, seed, threshold)
        path = train_bundle(load_clips(manifest), config["model"], MACHINE, work / f"bundle_{label}_seed{seed}",
                            config)
        bundles.append((label, path))
        labels.append(label)
        out["train_seconds"][label] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    results = evaluate(manifest, bundles, work / f"report_seed{seed}", device="cpu", chance_seed=seed, plots=False)
    out["evaluate_seconds"] = round(time.perf_counter() - t0, 2)
    for name in (*labels, *REFERENCES):
        entry = results["models"][name]["machines"][MACHINE]["ids"][ID]
        out[name] = {"auc": entry["auc"], "pauc": entry["pauc"]}
    for model in labels:
        fan = results["models"][model]["machines"][MACHINE]
        out[model]["threshold"] = fan["threshold"]
        out[model]["confusion"] = {k: fan["confusion"][k] for k in ("tn", "fp", "fn", "tp")}
    out["n_test"] = {"normal": entry["n_normal"], "anomaly": entry["n_anomaly"]}
    return out


def spread(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-dir", type=Path, default=DEFAULT_REAL)
    parser.add_argument("--seeds", type=int, default=10, help="number of seeded splits (seeds 0..N-1)")
    parser.add_argument("--n-train", type=int, default=10, help="normal clips used for training per split")
    parser.add_argument("--epochs", type=int, default=100, help="epochs of iterative models (the AE baseline: 100)")
    parser.add_argument("--models", default="dcase_ae",
                        help="comma-separated models, evaluated side by side (MODEL:ae_clean / :ddae / :none: "
                             "its cleaning autoencoder swapped or dropped)")
    parser.add_argument("--threshold", default="gamma", help="threshold spec of every model (default gamma)")
    parser.add_argument("--name", default=NAME, help=f"result name (default {NAME})")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not (args.real_dir / "manifest.csv").exists():
        print(f"real recordings not found at {args.real_dir}", file=sys.stderr)
        return 2

    models = tuple(args.models.split(","))
    configs = dict(train_config(m, args.epochs, 0, args.threshold) for m in models)
    names = (*configs, *REFERENCES)
    t0 = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_realdata_") as tmp:
        for seed in range(args.seeds):
            runs.append(run_split(args.real_dir, Path(tmp), seed, args.n_train, args.epochs, models, args.threshold))
            log.info("seed %d: %s", seed, {m: runs[-1][m] for m in names})
    summary = {m: {k: spread([r[m][k] for r in runs]) for k in ("auc", "pauc")} for m in names}
    result = {
        "data": {
            "real_dir": str(args.real_dir),
            "clips": f"MIMII {MACHINE} {ID}: 20 normal, 20 anomaly (channel 0, 16 kHz, 10 s)",
            "split": f"per seed: {args.n_train} normals train (30 % of them held out for the threshold), "
                     "the other normals and all anomalies test",
        },
        "models": configs,
        "references": {"chance": "seeded uniform random scores (seed = split seed)",
                       "rms_level": "clip RMS level in dBFS, louder = more anomalous"},
        "seeds": list(range(args.seeds)),
        "summary": summary,
        "runs": runs,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    out = write_result(args.name, result, args.out_dir)
    for m in names:
        s = summary[m]
        print(f"{m:10s} AUC {s['auc']['mean']:.3f} ± {s['auc']['std']:.3f}   pAUC {s['pauc']['mean']:.3f} ± "
              f"{s['pauc']['std']:.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
