"""Gain robustness on the few-normals units: does a detector call a normal clip anomalous when only its level changes?

The few-normals benchmark's score-level correlation (`bench_fewshot`) is measured across the test normals of a
unit, whose levels differ by a few tenths of a dB: a detector can follow the level and still show no correlation
there. This benchmark changes the level itself. The protocol, fixed before any result:

- Units, splits and training exactly as `bench_fewshot` at its `half` level (the training half), for `--splits`
  seeds (5: seeds 0-4), every detector with its shipped config or variant.
- Each unit's test normals are scored as recorded and with every sample scaled by each gain in `GAINS_DB`
  (-6 to +6 dB: a microphone moved or its gain knob turned; 1.5 dB is about the level step between the normal and
  anomalous clips of the sets where loudness gives the anomalies away).
- Gain AUC at gain g: the AUC of the normals at g dB against the same normals as recorded (ties count half): 0.5
  means the score ignores the level; 1.0 means every normal clip turned g dB louder (or quieter) outscores every
  recorded one, as a level meter's would for g > 0. A unit's figure per split, the mean over a type's units, over
  types, then over splits (with the spread over splits). Beside it, the anomaly AUC of the same bundles at 0 dB.
- An entry ending in `+pretrained` (`ssl_knn+pretrained`) is trained as `bench_pretrain` trains it: pre-trained
  on every unit's training clips and the fixed synthetic set (5 clips per generator type), then one bundle per unit.
- The reference `rms_level` (clip RMS in dBFS) is 1.0 at every g > 0 and 0.0 at every g < 0.

Usage: python -m benchmarks.bench_gain --models modspec_graph,embed_knn [--splits 5] [--name NAME]
       -> benchmarks/results/NAME.json
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_fewshot import Audio, auc, real_units, score_unit, split, train_config, train_units
from benchmarks.bench_pretrain import PRETRAINED
from benchmarks.bench_realdata import DEFAULT_REAL
from benchmarks.common import RESULTS, write_result

log = logging.getLogger("bench_gain")

GAINS_DB = (-6.0, -3.0, -1.5, 1.5, 3.0, 6.0)
LEVEL = "half"


def trained(entry: str, units: list[Any], seed: int, audio: Audio, work: Path) -> tuple[str, dict[int, Any]]:
    """(label, each unit's bundle by index) at the half level: `bench_pretrain`'s training for `+pretrained` entries,
    `bench_fewshot`'s otherwise."""
    from benchmarks.bench_pretrain import DEFAULT_SYNTH, synthetic_clips, train_pretrained

    if not entry.endswith(PRETRAINED):
        return train_units(entry, units, seed, LEVEL, None, audio, work)[:2]
    synth = work / "synth"
    clips = synthetic_clips(synth, DEFAULT_SYNTH, reuse=True)
    return train_pretrained(entry[: -len(PRETRAINED)], units, seed, LEVEL, None, clips, work)


def gain_figures(entry: str, units: list[Any], seeds: range, audio: Audio, work: Path) -> tuple[str, dict[str, Any]]:
    """(label, figures): per gain the mean gain AUC (and its spread over splits, and per unit), and the anomaly AUC."""
    per: dict[str, list[list[float]]] = {str(g): [] for g in GAINS_DB}  # gain -> split -> unit AUCs
    anomaly: list[list[float]] = []
    label = entry
    for seed in seeds:
        label, bundles = trained(entry, units, seed, audio, work)
        rows: dict[str, list[float]] = {str(g): [] for g in GAINS_DB}
        anom = []
        for k, unit in enumerate(units):
            n_normal = len(split(unit, k, seed)[1])
            base = np.asarray(score_unit(bundles[k], unit, k, seed, audio))
            normal, anomalous = base[:n_normal], base[n_normal:]
            anom.append(float(auc(normal, anomalous)))
            for g in GAINS_DB:
                gained = np.asarray(score_unit(bundles[k], unit, k, seed, audio, gain_db=g))[:n_normal]
                rows[str(g)].append(float(auc(normal, gained)))
        for g in rows:
            per[g].append(rows[g])
        anomaly.append(anom)
        log.info("%s split %d done", label, seed)
    types = sorted({u.machine for u in units})

    def headline(split_rows: list[list[float]]) -> tuple[float, float, dict[str, float]]:
        arr = np.asarray(split_rows)  # [splits, units]
        by_type = np.stack([arr[:, [i for i, u in enumerate(units) if u.machine == t]].mean(axis=1) for t in types],
                           axis=1)
        means = by_type.mean(axis=1)
        return float(means.mean()), float(means.std()), {u.name: float(arr[:, i].mean()) for i, u in enumerate(units)}

    out: dict[str, Any] = {"gain_auc": {}, "gain_auc_split_std": {}, "gain_auc_units": {}}
    for g, rows_ in per.items():
        mean, std, units_ = headline(rows_)
        out["gain_auc"][g], out["gain_auc_split_std"][g], out["gain_auc_units"][g] = mean, std, units_
    out["anomaly_auc"], out["anomaly_auc_split_std"], out["anomaly_auc_units"] = headline(anomaly)
    return label, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="comma-separated models (MODEL:KEY=VALUE variants allowed)")
    parser.add_argument("--real-dir", type=Path, default=DEFAULT_REAL)
    parser.add_argument("--splits", type=int, default=5, help="seeded splits (seeds 0..N-1); the protocol: 5")
    parser.add_argument("--name", default="gain")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    units = real_units(args.real_dir)
    if units is None:
        return 2
    audio = Audio()
    t0 = time.perf_counter()
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_gain_") as tmp:
        for entry in args.models.split(","):
            label, figures = gain_figures(entry, units, range(args.splits), audio, Path(tmp))
            models[label] = figures
            shown = "  ".join(f"{float(g):+g} dB {v:.2f}" for g, v in figures["gain_auc"].items())
            print(f"{label:<40} gain AUC  {shown}   (anomaly AUC {figures['anomaly_auc']:.2f})")
    result = {"protocol": __doc__.split("\n\n", 1)[1].split("Usage:")[0].strip(),
              "units": [{"machine": u.machine, "id": u.id} for u in units], "splits": args.splits,
              "gains_db": list(GAINS_DB), "configs": {e: train_config(e.removesuffix(PRETRAINED), None, 0)[1] for e in args.models.split(",")},
              "models": models, "total_seconds": round(time.perf_counter() - t0, 1)}
    out = write_result(args.name, result, args.out_dir)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
