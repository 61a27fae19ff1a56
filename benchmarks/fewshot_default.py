"""The recommended default for few normal clips, chosen on the benchmark's labels of *other* machine types only.

A default has to be chosen on some faults, and the only real ones here are the benchmark's. Choosing on all of
them and quoting the winner's figure would be choosing on the test labels. Instead, the choice is a rule that is
evaluated the way it will be used, on a machine type it has not seen (leave one type out):

1. Candidates: the detectors of the stored few-normals results that ignore the microphone gain, by the gain
   benchmark (normal clips only): gain AUC within `GAIN_TOLERANCE` of 0.5 at -3 and +3 dB (`bench_gain`). A monitor
   whose alarms follow its input gain is not usable, whatever its AUC.
2. For each machine type T and each level: the candidate with the highest mean AUC over the *other* types is
   chosen, and its AUC on T is what the rule gets on T. The rule's figure is the mean of those over the types,
   beside the best candidate's own figure (which is optimistic: chosen on every type's labels).
3. The default is the candidate the rule chooses on all types together at the training half (ties: name order).

Usage: python -m benchmarks.fewshot_default --gain benchmarks/results/gain.json [--gain ...] \
           benchmarks/results/fewshot_*.json --name NAME -> benchmarks/results/NAME.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.bench_fewshot import REFERENCES
from benchmarks.common import RESULTS, write_result
from models.training import selection
from models.training.selection import GAIN_TOLERANCE

GAIN_CHECKED_DB = tuple(str(g) for g in selection.GAIN_CHECK_DB)  # the gain gate of `asd-offline select`


def gain_independent(gain_docs: list[dict[str, Any]]) -> dict[str, bool]:
    """Label -> whether its gain AUC stays within the tolerance at the checked gains (`select`'s gain gate)."""
    return {label: selection.gain_independent({g: f["gain_auc"][g] for g in GAIN_CHECKED_DB})
            for doc in gain_docs for label, f in doc["models"].items()}


def type_aucs(docs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """level -> label -> type -> AUC (the mean over splits), from every stored result; one label, one source."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for doc in docs:
        for level, body in doc["levels"].items():
            for label, s in body["summary"].items():
                if label not in REFERENCES:
                    out.setdefault(level, {}).setdefault(label, s["machines"])
    return out


def choose(aucs: dict[str, dict[str, float]], types: list[str]) -> str:
    """The candidate with the highest mean AUC over `types` (ties: name order)."""
    means = {label: sum(a[t] for t in types) / len(types) for label, a in sorted(aucs.items())}
    best = max(means.values())
    return min(label for label, v in means.items() if v == best)


def leave_one_type_out(aucs: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per held-out type, the choice on the others and its AUC there; the rule's mean over types."""
    types = sorted(next(iter(aucs.values())))
    held: dict[str, Any] = {}
    for t in types:
        chosen = choose(aucs, [u for u in types if u != t])
        held[t] = {"chosen": chosen, "auc": aucs[chosen][t]}
    overall = choose(aucs, types)
    return {"held_out": held, "rule_mean_auc": sum(h["auc"] for h in held.values()) / len(types),
            "chosen_on_all_types": overall,
            "its_mean_auc": sum(aucs[overall][t] for t in types) / len(types)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="stored bench_fewshot results")
    parser.add_argument("--gain", action="append", type=Path, required=True, help="stored bench_gain results")
    parser.add_argument("--name", default="fewshot_default")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    independent = gain_independent([json.loads(p.read_text()) for p in args.gain])
    aucs = type_aucs([json.loads(p.read_text()) for p in args.results])
    levels: dict[str, Any] = {}
    for level, by_label in aucs.items():
        pool = {label: a for label, a in by_label.items() if independent.get(label)}
        if pool:
            levels[level] = {"candidates": sorted(pool), **leave_one_type_out(pool)}
            r = levels[level]
            held = ", ".join(f"{t}: {h['chosen']} {h['auc']:.2f}" for t, h in r["held_out"].items())
            print(f"{level:>5}: rule {r['rule_mean_auc']:.3f} ({held}); on all types {r['chosen_on_all_types']} "
                  f"{r['its_mean_auc']:.3f}")
    measured = {label for by_label in aucs.values() for label in by_label}
    excluded = sorted(measured - {name for name, ok in independent.items() if ok})
    default = levels.get("half", {}).get("chosen_on_all_types")
    out = write_result(args.name, {"rule": __doc__.split("\n\n", 1)[1].split("Usage:")[0].strip(),
                                   "results": [str(p) for p in args.results], "gain": [str(p) for p in args.gain],
                                   "gain_tolerance": GAIN_TOLERANCE, "excluded": excluded, "levels": levels,
                                   "default": default}, args.out_dir)
    print(f"default: {default}; excluded (gain-dependent or not measured for gain): {', '.join(excluded)}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
