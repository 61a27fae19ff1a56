"""Side-by-side AUC/pAUC of any registered models on a synthetic data set, through the same commands a user runs.

For each machine type: `asd-offline synth`, then `asd-offline train --model M --machine T --config configs/M.yaml`
for every model, then one `asd-offline evaluate` over all bundles (which adds the `chance` and `rms_level`
references). Records per model and type the AUC / pAUC (mean of per-id values, the DCASE convention), the model
mean, and train and evaluate wall times. Thresholds and model choices never see the test labels: every model is
trained with its shipped config, and each threshold comes from held-out normal training clips.

    python -m benchmarks.eval_synth --models iforest,ocsvm,lof --snr 0      # -> results/eval_synth_0dB.json
    python -m benchmarks.eval_synth --models iforest,iforest:ae_clean,iforest:none   # with and without cleaning
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import model_config, write_result

ALL_MACHINES = "fan,pump,slider,valve,ToyCar,ToyConveyor"


def _cli(argv: list[str]) -> None:
    from offline.cli import main

    rc = main(argv)
    if rc != 0:
        raise SystemExit(f"asd-offline {' '.join(argv)} exited {rc}")


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    data = work / "data"
    machines = args.machines.split(",")
    models = [model_config(entry) for entry in args.models.split(",")]
    t0 = time.perf_counter()
    _cli(["synth", str(data), "--machines", args.machines, "--ids", str(args.ids), "--train-clips",
          str(args.train_clips), "--test-clips", str(args.test_clips), "--snr", str(args.snr), "--seed",
          str(args.seed)])
    timing: dict[str, Any] = {"synth_seconds": round(time.perf_counter() - t0, 1), "train_seconds": {}}
    bundles = []
    for label, config in models:
        t1 = time.perf_counter()
        config_path = work / "configs" / f"{label}.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        for machine in machines:
            out = work / "bundles" / f"{label}-{machine}"
            argv = ["train", "--data", str(data), "--model", config["model"], "--machine", machine, "--out",
                    str(out), "--no-progress", "--seed", str(args.seed), "--config", str(config_path)]
            if args.epochs is not None:
                argv += ["--epochs", str(args.epochs)]
            _cli(argv)
            bundles.append(f"{label}={out}")
        timing["train_seconds"][label] = round(time.perf_counter() - t1, 1)
    t2 = time.perf_counter()
    report = work / "report"
    _cli(["evaluate", "--data", str(data), "--out", str(report), "--no-plots", "--device", "cpu",
          *[a for b in bundles for a in ("--bundle", b)]])
    timing["evaluate_seconds"] = round(time.perf_counter() - t2, 1)
    results = json.loads((report / "results.json").read_text())
    table = {
        name: {"mean": entry["mean"],
               "machines": {m: {"auc": e["auc"], "pauc": e["pauc"]} for m, e in entry["machines"].items()}}
        for name, entry in results["models"].items()
    }
    return {"data": {"machines": machines, "ids": args.ids, "train_clips": args.train_clips,
                     "test_clips": args.test_clips, "snr_db": args.snr, "seed": args.seed, "clip_seconds": 10},
            "models": {label: config for label, config in models}, "epochs_override": args.epochs, "results": table,
            "timing": timing}


def add_data_args(p: argparse.ArgumentParser) -> None:
    """The options every synthetic side-by-side shares (eval_synth, synth_curve)."""
    p.add_argument("--machines", default=ALL_MACHINES)
    p.add_argument("--test-clips", type=int, default=40)
    p.add_argument("--snr", type=float, default=0.0)
    p.add_argument("--epochs", type=int, help="override every iterative model's epochs (default: its config)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", required=True,
                   help="comma-separated MODEL (its shipped config) or MODEL:ae_clean / MODEL:ddae / MODEL:none "
                        "(its cleaning autoencoder swapped or dropped)")
    p.add_argument("--ids", type=int, default=3)
    p.add_argument("--train-clips", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    add_data_args(p)
    p.add_argument("--name", help="result name (default eval_synth_<snr>dB)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="eval_synth_") as tmp:
        result = run(args, Path(tmp))
    name = args.name or f"eval_synth_{args.snr:g}dB"
    path = write_result(name, result, args.out)
    for model, entry in result["results"].items():
        per = "  ".join(f"{m} {e['auc']:.2f}" for m, e in entry["machines"].items() if e["auc"] is not None)
        print(f"{model:12s} mean AUC {entry['mean']['auc']:.3f}  pAUC {entry['mean']['pauc']:.3f}   {per}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
