"""Paired few-normals figures from two stored `bench_fewshot` results, without retraining either side.

`bench_fewshot` pairs a detector with `dcase_ae` only when both are in one run, and the DCASE AE takes most of a
run's time. Its bootstrap draws depend only on the splits and units (not on the detectors), and its scores are
stored per split, so the summary of a run with both sets of detectors is the summary of their stored runs put
together: this script checks that the two results used the same protocol (the same protocol text, units, splits,
levels and bootstrap count, and identical `rms_level` scores in every split, i.e. the same test clips in the same
order), merges their runs per level and summarises them with `bench_fewshot.summarise`, the run's own code.

Usage: python -m benchmarks.fewshot_pair A.json B.json --name NAME -> benchmarks/results/NAME.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.bench_fewshot import REFERENCES, find_units, gain_correlation, print_summary, summarise
from benchmarks.bench_realdata import DEFAULT_REAL
from benchmarks.common import RESULTS, write_result

_SAME = ("protocol", "units", "splits", "bootstrap")


def merge(a: dict[str, Any], b: dict[str, Any], real_dir: Path) -> dict[str, Any]:
    """The result a run with both files' detectors would have written (figures only; timings per file)."""
    for key in _SAME:
        if a[key] != b[key]:
            raise ValueError(f"the two results differ in {key!r}: not the same protocol run")
    levels = [lv for lv in a["levels"] if lv in b["levels"]]
    if not levels:
        raise ValueError(f"no level in common: {list(a['levels'])} vs {list(b['levels'])}")
    units = find_units(real_dir)
    if [{"machine": u.machine, "id": u.id} for u in units] != [{k: u[k] for k in ("machine", "id")}
                                                               for u in a["units"]]:
        raise ValueError(f"the units in {real_dir} are not those of the results")
    out: dict[str, Any] = {}
    for level in levels:
        ra, rb = a["levels"][level]["runs"], b["levels"][level]["runs"]
        for ref in REFERENCES:
            if ra[ref] != rb[ref]:
                raise ValueError(f"level {level}: the {ref} scores differ: not the same splits or test clips")
        runs = {**ra, **{k: v for k, v in rb.items() if k not in REFERENCES}}
        summary = summarise(runs, units, int(a["bootstrap"]))
        for name in runs:
            summary[name]["gain_correlation"] = gain_correlation(runs[name], runs["rms_level"], units)
        out[level] = {"summary": summary}
    return {"protocol": a["protocol"], "units": a["units"], "splits": a["splits"], "bootstrap": a["bootstrap"],
            "models": {**a["models"], **b["models"]}, "levels": out,
            "failed": {"a": a.get("failed", {}), "b": b.get("failed", {})},
            "train_seconds": {**a.get("train_seconds", {}), **b.get("train_seconds", {})}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs=2, help="two bench_fewshot result JSONs")
    parser.add_argument("--name", required=True)
    parser.add_argument("--real-dir", type=Path, default=DEFAULT_REAL)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    a, b = (json.loads(p.read_text()) for p in args.results)
    try:
        result = merge(a, b, args.real_dir)
    except ValueError as e:
        print(f"cannot pair {args.results[0]} and {args.results[1]}: {e}", file=sys.stderr)
        return 2
    result["sources"] = [p.name for p in args.results]
    out = write_result(args.name, result, args.out_dir)
    print_summary(result["levels"])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
