"""How well a threshold set from a few normal clips keeps its false-alarm promise, on real normal clips it never saw.

The protocol was fixed before this script's first result (issue #13, "calibration with few clips"):

- **Units, splits, levels**: those of `bench_fewshot` (the same seeded training halves and learning curve).
- **Training**: every detector with its config as `asd-offline train` uses it, holdout and threshold rule
  included (with fewer than 10 clips the recipe cross-fits the threshold's scores), through `train_bundle`.
- **Measured**, per unit, split and level: the threshold; what the bundle states about it
  (`Bundle.calibration_for(id)`: where its normal scores came from, how many, the share above the threshold and
  its 95 % interval, the quantile the rule estimates); and the *realised* false-alarm rate, the share of the unit's
  test normals (clips of that machine the model did not see) scored above the threshold. No anomalous clip is read.
- **Figures** per level: the rule's nominal rate (1 - quantile), the mean stated rate, the realised rate pooled
  over every unit-split's test normals and its mean over types, the share of unit-splits whose realised rate lies
  above the stated interval (the bundle promised fewer false alarms than it gave), and the realised rate per unit.

Usage: python -m benchmarks.bench_calibration --models modspec_graph_level [--splits 20] [--levels 2,4,half]
       [--name NAME] -> benchmarks/results/NAME.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks import bench_fewshot as fewshot
from benchmarks.bench_realdata import DEFAULT_REAL
from benchmarks.common import model_config, write_result

log = logging.getLogger("bench_calibration")


def measure(config: dict[str, Any], units: Sequence[fewshot.Unit], seed: int, level: str, audio: fewshot.Audio,
            work: Path) -> list[dict[str, Any]]:
    """One record per unit: the threshold, the bundle's statement about it and the realised rate on test normals."""
    from models.bundle import load_bundle
    from models.training.recipe import train_bundle

    config = {**config, "seed": seed}
    records = []
    for k, unit in enumerate(units):
        out = work / f"{seed}_{level}_{k}"
        train_bundle(fewshot.training_clips(unit, k, seed, level), config["model"], unit.machine, out, config,
                     progress=False)
        bundle = load_bundle(out, device="cpu")
        normals = fewshot.split(unit, k, seed)[1]
        scores = np.asarray(bundle.score_wavs([audio(p, bundle.sample_rate) for p in normals],
                                              ids=[unit.id] * len(normals)), dtype=np.float64)
        threshold = float(bundle.threshold_for(unit.id))
        stated = bundle.calibration_for(unit.id) or {}
        records.append({"unit": unit.name, "threshold": threshold, "test_normals": len(normals),
                        "false_alarms": int(np.sum(scores > threshold)),
                        "stated": {key: stated.get(key) for key in
                                   ("scores", "n_scores", "false_alarm_rate", "false_alarm_rate_interval",
                                    "quantile")}})
    return records


def summarise(records: list[dict[str, Any]], units: Sequence[fewshot.Unit]) -> dict[str, Any]:
    """The level's figures (see the module docstring)."""
    realised = [r["false_alarms"] / r["test_normals"] for r in records]
    stated = [r["stated"]["false_alarm_rate"] for r in records if r["stated"]["false_alarm_rate"] is not None]
    highs = [(rate, r["stated"]["false_alarm_rate_interval"]) for rate, r in zip(realised, records)
             if r["stated"]["false_alarm_rate_interval"]]
    quantiles = {r["stated"]["quantile"] for r in records if r["stated"]["quantile"] is not None}
    per_unit = {u.name: float(np.mean([rate for rate, r in zip(realised, records) if r["unit"] == u.name]))
                for u in units}
    per_type = {t: float(np.mean([per_unit[u.name] for u in units if u.machine == t]))
                for t in sorted({u.machine for u in units})}
    return {
        "nominal_rate": None if len(quantiles) != 1 else 1.0 - quantiles.pop(),
        "stated_rate": float(np.mean(stated)) if stated else None,
        "stated_interval_width": float(np.mean([hi - lo for _, (lo, hi) in highs])) if highs else None,
        "realised_rate_pooled": sum(r["false_alarms"] for r in records) / sum(r["test_normals"] for r in records),
        "realised_rate_types": float(np.mean(list(per_type.values()))),
        "above_stated_interval": float(np.mean([rate > hi for rate, (_, hi) in highs])) if highs else None,
        "machines": per_type, "units": per_unit,
        "threshold_scores": sorted({str(r["stated"]["scores"]) for r in records}),
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", required=True, help="comma-separated models (MODEL:KEY=VALUE variants allowed)")
    p.add_argument("--real-dir", type=Path, default=DEFAULT_REAL)
    p.add_argument("--splits", type=int, default=20, help="seeded splits (seeds 0..N-1); the protocol: 20")
    p.add_argument("--levels", default="2,4,half", help="training normals per unit: numbers and/or 'half'")
    p.add_argument("--name", default="calibration")
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    units = fewshot.real_units(args.real_dir)
    if units is None:
        return 2
    levels = [v.strip() for v in args.levels.split(",") if v.strip()]
    audio = fewshot.Audio()
    t0 = time.perf_counter()
    models: dict[str, Any] = {}
    for entry in args.models.split(","):
        label, config = model_config(entry)
        per_level = {}
        for level in levels:
            records = []
            for seed in range(args.splits):
                with tempfile.TemporaryDirectory(prefix="bench_calibration_") as tmp:
                    records += measure(config, units, seed, level, audio, Path(tmp))
            per_level[level] = {"summary": summarise(records, units), "records": records}
            s = per_level[level]["summary"]
            log.info("%s %s: nominal %s, stated %s, realised %.3f (types %.3f), above the stated interval %s", label,
                     level, _fmt(s["nominal_rate"]), _fmt(s["stated_rate"]), s["realised_rate_pooled"],
                     s["realised_rate_types"], _fmt(s["above_stated_interval"]))
        models[label] = {"config": config, "levels": per_level}
    doc = {"protocol": __doc__, "units": [u.name for u in units], "splits": args.splits, "levels": levels,
           "models": models, "total_seconds": round(time.perf_counter() - t0, 1)}
    path = write_result(args.name, doc, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
