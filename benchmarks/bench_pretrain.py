"""Few normal clips per machine, with self-supervised pre-training on all the other normal audio a user has.

The protocol is `bench_fewshot`'s (its text is stored as `protocol`: the same units, splits, levels, test clips,
scoring and figures, so `fewshot_pair` pairs a result of this script with a `bench_fewshot` result of the same
splits), with one addition for the detectors that pre-train (`pretrains`: `ssl_knn`), fixed before any result was
looked at and stored as `pretraining`:

- In each split and level, the representation is pre-trained once (`models.training.recipe.pretrain_detector`) on
  the training clips of every unit at that level (all machine types and ids: the normal clips a user has) plus a
  fixed synthetic set from the project's generator (`offline.synth.synthesize`: every synthetic machine type, one
  id, `--synth` normal clips each (5), seed 0, 0 dB SNR, 10 s at 16 kHz; the same set in every split). Labels and
  ids are not used in pre-training, and no test clip is read before scoring.
- Each unit's model is then `train_bundle` on that unit's training clips starting from a copy of the pre-trained
  detector (`pretrained=`): its bank is its own clips, as in `bench_fewshot`.

`bench_fewshot --models ssl_knn` is the same detector pre-trained on the unit's own training clips only; the two
results together say what the other machines' and the generator's audio add.

Usage: python -m benchmarks.bench_pretrain --models ssl_knn [--splits 20] [--levels 2,4,half] [--synth 5]
       [--epochs N] [--name NAME] -> benchmarks/results/NAME.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks import bench_fewshot as fs
from benchmarks.bench_realdata import DEFAULT_REAL
from benchmarks.common import RESULTS, write_result

log = logging.getLogger("bench_pretrain")

DEFAULT_SYNTH = 5  # synthetic normal clips per generator type in the pre-training set
PRETRAINED = "+pretrained"  # the row label's suffix: the same detector trained by bench_fewshot has the plain label


def synthetic_clips(out: Path, per_type: int, reuse: bool = False) -> list[Any]:
    """The fixed synthetic pre-training set at `out`: every generator machine type, one id, `per_type` normal clips
    (`reuse`: the set already written there, when there is one)."""
    from models.training.recipe import pretraining_clips
    from offline.datasets.index import load_clips
    from offline.synth.dataset import synthesize

    if per_type == 0:
        return []
    if not (reuse and (out / "synth.json").exists()):
        synthesize(out, ids=1, train_clips=per_type, test_clips=0, snr_db=0.0, seed=0)
    return pretraining_clips(load_clips(out))


def train_pretrained(entry: str, units: Sequence[fs.Unit], seed: int, level: str, epochs: int | None,
                     synth: Sequence[Any], work: Path) -> tuple[str, dict[int, Any]]:
    """`entry` pre-trained on every unit's training clips at this level and `synth`, then one bundle per unit on
    its own clips: (label, the bundle of each unit by index). The label is the entry's with `+pretrained`."""
    from models.bundle import load_bundle
    from models.detectors import get_detector
    from models.training.recipe import pretrain_detector, train_bundle

    label, config = fs.train_config(entry, epochs, seed)
    if not get_detector(config["model"]).pretrains:
        raise SystemExit(f"{entry}: not a detector that pre-trains (see the module docstring)")
    per_unit = [fs.training_clips(u, k, seed, level) for k, u in enumerate(units)]
    pre = pretrain_detector(config["model"], config, [c for clips in per_unit for c in clips] + list(synth),
                            progress=False)
    bundles: dict[int, Any] = {}
    for k, unit in enumerate(units):
        out = work / f"{label}_{seed}_{level}_{k}"
        train_bundle(per_unit[k], config["model"], unit.machine, out, config, progress=False, pretrained=pre)
        bundles[k] = load_bundle(out, device="cpu")
    return f"{label}{PRETRAINED}", bundles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="comma-separated detectors that pre-train (variants allowed)")
    parser.add_argument("--real-dir", type=Path, default=DEFAULT_REAL)
    parser.add_argument("--splits", type=int, default=20, help="seeded splits (seeds 0..N-1); the protocol: 20")
    parser.add_argument("--levels", default="2,4,half", help="training normals per unit: numbers and/or 'half'")
    parser.add_argument("--synth", type=int, default=DEFAULT_SYNTH,
                        help=f"synthetic normal clips per generator type (default {DEFAULT_SYNTH})")
    parser.add_argument("--epochs", type=int, default=None, help="pre-training epochs (default: the config's)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for the intervals")
    parser.add_argument("--name", default="pretrain", help="result name (default pretrain)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    units = fs.real_units(args.real_dir)
    if units is None:
        return 2
    entries = args.models.split(",")
    audio = fs.Audio()
    t_start = time.perf_counter()
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as tmp:
        synth = synthetic_clips(Path(tmp) / "synth", args.synth)
        for level in args.levels.split(","):
            runs: dict[str, list[dict[str, Any]]] = {}
            for seed in range(args.splits):
                for ref, scores in fs.reference_scores(units, seed, audio).items():
                    runs.setdefault(ref, []).append({"seed": seed, "scores": scores})
                for entry in entries:
                    t0 = time.perf_counter()
                    label, bundles = train_pretrained(entry, units, seed, level, args.epochs, synth, Path(tmp))
                    scores = {u.name: fs.score_unit(bundles[k], u, k, seed, audio) for k, u in enumerate(units)}
                    took = time.perf_counter() - t0
                    runs.setdefault(label, []).append({"seed": seed, "scores": scores})
                    seconds[label] = seconds.get(label, 0.0) + took
                log.info("level %s split %d done (%.0f s so far)", level, seed, time.perf_counter() - t_start)
            summary = fs.summarise(runs, units, args.bootstrap)
            for name in runs:
                summary[name]["gain_correlation"] = fs.gain_correlation(runs[name], runs["rms_level"], units)
            results[level] = {"summary": summary, "runs": runs}
    result = {
        "protocol": fs.__doc__.split("\n\n", 1)[1].split("Usage:")[0].strip(),
        "pretraining": __doc__.split("\n\n", 1)[1].split("Usage:")[0].strip(),
        "units": [{"machine": u.machine, "id": u.id, "normals": len(u.normals), "anomalies": len(u.anomalies),
                   "train_half": len(u.normals) // 2} for u in units],
        "models": {f"{label}{PRETRAINED}": config
                   for label, config in (fs.train_config(e, args.epochs, 0) for e in entries)},
        "synthetic_clips": len(synth),
        "epochs": args.epochs,
        "splits": args.splits,
        "bootstrap": args.bootstrap,
        "levels": results,
        "train_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    out = write_result(args.name, result, args.out_dir)
    fs.print_summary(results)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
