"""Few-normals learning curve on synthetic machines: a development set apart from the real benchmark.

Choices for the few-normals regime (a hyper-parameter, a variant) need faults to be judged on, and the only real
ones are `bench_fewshot`'s test clips: choosing on them is choosing on test labels. This script gives a second set
to choose on: `eval_synth` (synth, train with each model's config, evaluate) repeated for every training-clip count
and seed given, by default one machine id per type as the real benchmark trains one model per id. A choice is made
here by a rule stated before the run (e.g. the highest mean AUC over all counts and seeds) and then measured once on
the real benchmark.

    python -m benchmarks.synth_curve --models modspec_graph,modspec_graph:scale_shrinkage=1 \\
        --train-clips 2,4,8 --seeds 1,2,3 --name synth_curve_example
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import write_result
from benchmarks.eval_synth import add_data_args, run

log = logging.getLogger("synth_curve")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: mean AUC and pAUC over all runs, and per training-clip count (mean over seeds)."""
    models = list(runs[0]["results"])
    out: dict[str, Any] = {}
    for model in models:
        entries = [(r["train_clips"], r["results"][model]["mean"]) for r in runs]
        per_count: dict[str, dict[str, float]] = {}
        for count in sorted({c for c, _ in entries}):
            sel = [m for c, m in entries if c == count]
            per_count[str(count)] = {k: float(np.mean([m[k] for m in sel])) for k in ("auc", "pauc")}
        out[model] = {"auc": float(np.mean([m["auc"] for _, m in entries])),
                      "pauc": float(np.mean([m["pauc"] for _, m in entries])), "train_clips": per_count}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", required=True, help="comma-separated models, as eval_synth's --models")
    p.add_argument("--ids", type=int, default=1, help="machine ids per type (default 1: one model per id)")
    p.add_argument("--train-clips", type=_ints, default=[2, 4, 8], help="comma-separated training-clip counts")
    p.add_argument("--seeds", type=_ints, default=[1, 2, 3], help="comma-separated data seeds")
    add_data_args(p)
    p.add_argument("--name", default="synth_curve")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    log.setLevel(logging.INFO)
    runs = []
    for seed in args.seeds:
        for count in args.train_clips:
            one = argparse.Namespace(**{**vars(args), "train_clips": count, "seed": seed})  # eval_synth's run
            with tempfile.TemporaryDirectory(prefix="synth_curve_") as tmp:
                result = run(one, Path(tmp))
            runs.append({"seed": seed, "train_clips": count, "results": result["results"],
                         "timing": result["timing"]})
            log.info("seed %d, %d clips done", seed, count)
    summary = summarize(runs)
    doc = {"data": {"machines": args.machines.split(","), "ids": args.ids, "train_clips": args.train_clips,
                    "seeds": args.seeds, "test_clips": args.test_clips, "snr_db": args.snr, "clip_seconds": 10},
           "models": result["models"], "epochs_override": args.epochs, "summary": summary, "runs": runs}
    path = write_result(args.name, doc, args.out)
    for model, entry in summary.items():
        curve = "  ".join(f"{c}: {v['auc']:.3f}" for c, v in entry["train_clips"].items())
        print(f"{model:50s} mean AUC {entry['auc']:.3f}  pAUC {entry['pauc']:.3f}   {curve}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
