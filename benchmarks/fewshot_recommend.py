"""The recommended detector for few normal clips, chosen from a stored `bench_fewshot --models auto` run without
reading a test label.

The `auto` entry records, for every split and unit, each candidate's pseudo-AUC on that unit's training clips
(`models.training.selection`: cross-fitted, held-out clips with and without synthetic faults). This script averages
them per level over units and splits (a candidate that could not be measured somewhere is averaged where it could,
and its count says so) and names the highest at each level: the default a user with that many clips gets
recommended. It also counts how often `auto` chose each candidate. Test scores are not read here; the README puts
the recommended detector's measured AUC beside the others.

Usage: python -m benchmarks.fewshot_recommend benchmarks/results/fewshot_auto.json --name NAME
       -> benchmarks/results/NAME.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, write_result


def recommend(doc: dict[str, Any], label: str = "auto") -> dict[str, Any]:
    """Per level, for the `label` entry (`auto`, or `auto[...]` with its own candidates): mean pseudo-AUC and
    number of measurements per candidate, how often each was chosen, the highest (ties: the first in name order,
    as the selection itself breaks them)."""
    out: dict[str, Any] = {}
    for level, body in doc["levels"].items():
        runs = body["runs"].get(label)
        if not runs:
            continue
        values: dict[str, list[float]] = defaultdict(list)
        chosen: Counter[str] = Counter()
        for run in runs:
            for sel in run["selected"].values():
                chosen[sel["chosen"]] += 1
                for name, v in sel["pseudo_auc"].items():
                    values[name].append(float(v))
        means = {name: sum(v) / len(v) for name, v in sorted(values.items())}
        best = max(means.values())
        out[level] = {"mean_pseudo_auc": means, "n_measured": {n: len(v) for n, v in sorted(values.items())},
                      "times_chosen": dict(sorted(chosen.items())),
                      "recommended": min(n for n, v in means.items() if v == best)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("auto", type=Path, help="a bench_fewshot result with an auto entry")
    parser.add_argument("--entry", default="auto", help="the auto entry's label (default auto)")
    parser.add_argument("--name", default="fewshot_recommend")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    doc = json.loads(args.auto.read_text())
    levels = recommend(doc, args.entry)
    if not levels:
        raise SystemExit(f"{args.auto}: no {args.entry!r} entry in any level")
    for level, r in levels.items():
        table = ", ".join(f"{n} {v:.3f}" for n, v in sorted(r["mean_pseudo_auc"].items(), key=lambda kv: -kv[1]))
        print(f"{level:>5}: recommended {r['recommended']}  (mean pseudo-AUC: {table}; chosen {r['times_chosen']})")
    out = write_result(args.name, {"source": str(args.auto), "entry": args.entry, "protocol": doc["protocol"], "splits": doc["splits"],
                                   "levels": levels}, args.out_dir)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
