"""Few normal clips per machine, real audio: every detector side by side, with confidence intervals.

The protocol was fixed before any result was looked at (issue #13), and no detector may change it:

- **Units.** From `../shared/data/real/manifest.csv` (read its README): one unit is the clips of one machine type,
  one id and one origin folder, further split by DCASE domain (`source` / `target`) when the file name carries it
  (different sets, SNRs or domains never share a unit). Byte-identical files are kept once, in the larger set.
  A unit takes part when
  it has at least 4 normal clips and 1 anomalous clip. Within a type, the units are its ids (the monitor's
  `machine_id`). With the shared data this gives fan (MIMII id_00, and the MIMII fan clips whose id is not stated),
  valve and ToyCar (DCASE 2023 section 00, source and target domains); `units` in the result lists them.
- **Splits.** For each of `--splits` seeds (20) and each unit, the normals are shuffled (seeded by split and unit)
  and the first half (rounded down) is the training half; the other normals and all anomalies are the test clips.
  The learning curve trains on the first 2, the first 4 and all of the training half (`levels`), testing on the
  same clips, so levels differ only in what was trained on.
- **Training.** Every detector with its shipped config (`configs/MODEL.yaml`, or a `MODEL:KEY=VALUE` variant from
  `benchmarks.common`), `--epochs` for iterative ones when given. One model per unit (per id), trained on that
  unit's training clips; a detector that classifies machine ids (`needs_ids`, e.g. STgram-MFN) trains one model
  per type on the training clips of all its units, the other ids acting as its outliers, as a user with several
  machines of a type would. Models are trained through `train_bundle` (the `asd-offline train` path) with no
  held-out clips: the threshold is not measured here, AUC is.
- **Scores.** Each unit's test clips are scored by its bundle (`Bundle.score_wavs`, the offline and monitor scoring
  path) with the unit's id. References: `rms_level` (clip RMS in dBFS, louder = more anomalous) and `chance`
  (uniform random, seeded by split).
- **Figures.** AUC per unit; a type's AUC is the mean over its units; the headline is the mean over types, averaged
  over splits. Its 95 % interval is a percentile bootstrap (`--bootstrap` 1000 replicates): each replicate
  resamples every unit's test normals and anomalies with replacement in every split, the same draws for every
  detector, so the intervals of differences (`vs`: detector minus `rms_level`, minus `dcase_ae`, ...) are paired.
  Gain robustness: the Spearman correlation between a detector's scores and the clips' RMS level over each unit's
  test normals, averaged over units and splits (near +1: the detector is mostly a level meter).

Usage: python -m benchmarks.bench_fewshot --models dcase_ae,iforest [--splits 20] [--levels 2,4,half]
       [--epochs N] [--name NAME] -> benchmarks/results/NAME.json
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.bench_realdata import DEFAULT_REAL
from benchmarks.common import RESULTS, model_config, write_result

log = logging.getLogger("bench_fewshot")

MIN_NORMALS, MIN_ANOMALIES = 4, 1
REFERENCES = ("rms_level", "chance")
PAIRED = ("rms_level", "dcase_ae")  # every detector's difference to these, when they are in the run
# the detector `models.training.selection` chooses per unit from its training clips (not a model): `auto` among the
# default candidates, `auto[A;B]` among the entries A and B (variants allowed: `auto[embed_knn;modspec_graph:...]`)
AUTO = "auto"
# Added to the protocol above after it was fixed (2026-12-03), for the detectors that did not exist then, and stored
# beside it in a result (`other_types`) when one of them runs; every other detector is trained as before.
OTHER_TYPES = ("A classifier of ids that learns other machine types (`learns_other_types`: `across_types: true`) "
               "also fits, as extra classes, the training clips at the same split and level of every unit of the "
               "other machine types (what a user with those machines has); its type's model, test clips and scores "
               "are otherwise as above.")
_DOMAIN = re.compile(r"_(source|target)_")


@dataclass(frozen=True)
class Unit:
    """The clips of one machine (type, id) from one set: what one per-id model is trained and tested on."""

    machine: str
    id: str
    normals: tuple[Path, ...]
    anomalies: tuple[Path, ...]

    @property
    def name(self) -> str:
        return f"{self.machine}/{self.id}"


def find_units(real_dir: Path) -> list[Unit]:
    """The protocol's units from the manifest (see the module docstring), in a fixed order."""
    with (real_dir / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    def key(r: dict[str, str]) -> tuple[str, str, str]:
        domain = _DOMAIN.search(Path(r["path"]).name)
        return r["machine"], r["id"] + (f"_{domain.group(1)}" if domain else ""), r["path"].split("/")[0]

    size: dict[tuple[str, str, str], int] = {}
    for r in rows:
        size[key(r)] = size.get(key(r), 0) + 1
    groups: dict[tuple[str, str, str], dict[str, list[Path]]] = {}
    seen: set[str] = set()
    for r in sorted(rows, key=lambda r: (-size[key(r)], r["path"])):  # of identical files, the larger set's stays
        digest = hashlib.sha1((real_dir / r["path"]).read_bytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        groups.setdefault(key(r), {"normal": [], "anomaly": []})[r["label"]].append(real_dir / r["path"])
    for g in groups.values():
        g["normal"].sort()
        g["anomaly"].sort()
    units = [Unit(m, i, tuple(g["normal"]), tuple(g["anomaly"])) for (m, i, _), g in sorted(groups.items())
             if len(g["normal"]) >= MIN_NORMALS and len(g["anomaly"]) >= MIN_ANOMALIES]
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        raise ValueError(f"two sets give the same machine id: {names}; the protocol needs one set per id")
    return units


def real_units(real_dir: Path) -> list[Unit] | None:
    """The benchmark's units of the real recordings at `real_dir`; None, said on stderr, when they are not there."""
    if not (real_dir / "manifest.csv").exists():
        print(f"real recordings not found at {real_dir}", file=sys.stderr)
        return None
    return find_units(real_dir)


def split(unit: Unit, unit_index: int, seed: int) -> tuple[list[Path], list[Path]]:
    """(training half, test normals) of one unit in one split."""
    order = np.random.default_rng([seed, unit_index]).permutation(len(unit.normals))
    half = len(unit.normals) // 2
    return [unit.normals[i] for i in order[:half]], [unit.normals[i] for i in order[half:]]


def level_size(level: str, half: int) -> int:
    return half if level == "half" else min(int(level), half)


class Audio:
    """Every clip read once per sample rate (resampled to a bundle's rate, as training does), and its RMS level at
    the file's own rate."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Path, int | None], np.ndarray] = {}

    def __call__(self, path: Path, sample_rate: int | None = None) -> np.ndarray:
        from models.audio import load_wav

        if (path, sample_rate) not in self._cache:
            self._cache[path, sample_rate] = load_wav(path, sample_rate, resample=sample_rate is not None)[0]
        return self._cache[path, sample_rate]

    def level(self, path: Path) -> float:
        from models.audio import level_dbfs

        return level_dbfs(self(path))


def train_config(entry: str, epochs: int | None, seed: int) -> tuple[str, dict[str, Any]]:
    """(label, config): the shipped config or variant, no held-out clips (the threshold is not measured here).
    `auto`: the candidates' configs."""
    from models.detectors import get_detector
    from models.training.selection import default_candidates

    if entry == AUTO or (entry.startswith(f"{AUTO}[") and entry.endswith("]")):
        names = entry[len(AUTO) + 1 : -1].split(";") if entry != AUTO else default_candidates()
        candidates = dict(train_config(name, epochs, seed) for name in names)
        label = AUTO if entry == AUTO else f"{AUTO}[{', '.join(candidates)}]"
        return label, {"model": AUTO, "candidates": candidates}
    label, config = model_config(entry)
    model = config.get("model", entry)
    params = dict(config.get("params") or {})
    if get_detector(model).iterative():
        params.update(device="cpu", progress=False, **({"epochs": epochs} if epochs else {}))
    return label, {**config, "model": model, "params": params, "holdout": 0.0, "threshold": "percentile:100",
                   "seed": seed}


def run_detector(entry: str, units: Sequence[Unit], seed: int, level: str, epochs: int | None, audio: Audio,
                 work: Path) -> tuple[str, dict[str, list[float]], float] | tuple[str, dict[str, list[float]], float,
                                                                                 dict[str, Any]]:
    """Train `entry` on one split at one level and score every unit's test clips: (label, scores per unit, s), and
    for `auto` each unit's selection record."""
    t0 = time.perf_counter()
    label, bundles, extra = train_units(entry, units, seed, level, epochs, audio, work)
    scores = {u.name: score_unit(bundles[k], u, k, seed, audio) for k, u in enumerate(units)}
    return (label, scores, time.perf_counter() - t0, *([extra] if extra else []))


def train_units(entry: str, units: Sequence[Unit], seed: int, level: str, epochs: int | None, audio: Audio,
                work: Path) -> tuple[str, dict[int, Any], dict[str, Any]]:
    """`entry` trained on one split at one level: (label, the bundle that scores each unit, by unit index, and for
    `auto` the selection records)."""
    from models.bundle import load_bundle
    from models.detectors import get_detector
    from models.training.recipe import train_bundle

    label, config = train_config(entry, epochs, seed)
    if config["model"] == AUTO:
        return label, *train_selected(config["candidates"], units, seed, level, audio, work)
    by_ids = get_detector(config["model"]).needs_ids
    groups = ([[k for k, u in enumerate(units) if u.machine == m] for m in sorted({u.machine for u in units})]
              if by_ids else [[k] for k in range(len(units))])
    across = learns_other_types(config)
    bundles: dict[int, Any] = {}
    for group in groups:
        machine = units[group[0]].machine
        clips = [clip for k in group for clip in training_clips(units[k], k, seed, level)]
        others = [clip for k, u in enumerate(units) if across and u.machine != machine
                  for clip in training_clips(u, k, seed, level)]
        out = work / f"{label}_{seed}_{level}_{group[0]}"
        train_bundle(clips, config["model"], machine, out, config, progress=False, other_types=others)
        bundle = load_bundle(out, device="cpu")
        bundles.update({k: bundle for k in group})
    return label, bundles, {}


def learns_other_types(config: dict[str, Any]) -> bool:
    """The configured detector fits other machine types' clips too (`OTHER_TYPES`)."""
    from models.training.recipe import build_spec

    return config["model"] != AUTO and build_spec(config["model"], config).detector.learns_other_types()


def training_clips(unit: Unit, unit_index: int, seed: int, level: str) -> list[Any]:
    """A unit's training clips in one split at one level (the first of its training half), as the clip records
    `train_bundle` reads."""
    from offline.datasets.records import Clip

    half, _ = split(unit, unit_index, seed)
    return [Clip(path=p, machine=unit.machine, id=unit.id, split="train", label="normal")
            for p in half[: level_size(level, len(half))]]


def score_unit(bundle: Any, unit: Unit, unit_index: int, seed: int, audio: Audio, gain_db: float = 0.0) -> list[float]:
    """A unit's test clips scored by `bundle` with the unit's id, each clip's samples scaled by `gain_db`."""
    scale = np.float32(10 ** (gain_db / 20))
    wavs = [audio(p, bundle.sample_rate) * scale for p in test_clips(unit, unit_index, seed)]
    return [float(s) for s in bundle.score_wavs(wavs, ids=[unit.id] * len(wavs))]


def train_selected(candidates: dict[str, dict[str, Any]], units: Sequence[Unit], seed: int, level: str, audio: Audio,
                   work: Path) -> tuple[dict[int, Any], dict[str, Any]]:
    """The `auto` entry: per unit, `models.training.selection` chooses among `candidates` on the unit's training
    clips alone (pseudo-faults, no test clip read), then the chosen detector is trained like any other. Returns the
    bundles by unit index and each unit's selection record."""
    from models.bundle import load_bundle
    from models.training.recipe import train_bundle
    from models.training.selection import select_detector

    bundles: dict[int, Any] = {}
    selected: dict[str, Any] = {}
    for k, unit in enumerate(units):
        clips = training_clips(unit, k, seed, level)
        choice = select_detector(clips, unit.machine, candidates, seed=seed, load=lambda c, rate: audio(c.path, rate))
        selected[unit.name] = choice.to_dict()
        out = work / f"{AUTO}_{seed}_{level}_{k}"
        config = candidates[choice.chosen]
        train_bundle(clips, config.get("model", choice.chosen), unit.machine, out, config, progress=False)
        bundles[k] = load_bundle(out, device="cpu")
    return bundles, {"selected": selected}


def test_clips(unit: Unit, unit_index: int, seed: int) -> list[Path]:
    """A unit's test clips in one split: its test normals, then all its anomalies."""
    return [*split(unit, unit_index, seed)[1], *unit.anomalies]


def reference_scores(units: Sequence[Unit], seed: int, audio: Audio) -> dict[str, dict[str, list[float]]]:
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, list[float]]] = {"rms_level": {}, "chance": {}}
    for k, unit in enumerate(units):
        tests = test_clips(unit, k, seed)
        out["rms_level"][unit.name] = [audio.level(p) for p in tests]
        out["chance"][unit.name] = rng.uniform(size=len(tests)).tolist()
    return out


# -- figures ----------------------------------------------------------------------------------------------------


def auc(normal: np.ndarray, anomaly: np.ndarray) -> np.ndarray:
    """AUC along the last axis (ties count half): P(anomaly score > normal score)."""
    diff = anomaly[..., :, None] - normal[..., None, :]
    return (diff > 0).mean(axis=(-1, -2)) + 0.5 * (diff == 0).mean(axis=(-1, -2))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def summarise(runs: dict[str, list[dict[str, Any]]], units: Sequence[Unit], n_boot: int) -> dict[str, Any]:
    """Per detector: AUC per type and their mean over splits, the paired bootstrap intervals, gain correlation.
    `runs[name]` holds one entry per split: {"seed", "scores": {unit: [...]}} with the test clips in
    `test_clips` order (normals first)."""
    names = list(runs)
    seeds = [r["seed"] for r in runs[names[0]]]
    machines = sorted({u.machine for u in units})
    n_normal = {(s, k): len(split(u, k, s)[1]) for s in seeds for k, u in enumerate(units)}
    rng = np.random.default_rng(12345)
    draws = {(s, k): (rng.integers(0, n_normal[s, k], size=(n_boot, n_normal[s, k])),
                      rng.integers(0, len(u.anomalies), size=(n_boot, len(u.anomalies))))
             for s in seeds for k, u in enumerate(units)}

    def curves(name: str) -> tuple[np.ndarray, np.ndarray]:
        """(point AUC [splits, units], bootstrap AUC [n_boot, splits, units])."""
        point = np.zeros((len(seeds), len(units)))
        boot = np.zeros((n_boot, len(seeds), len(units)))
        for i, run in enumerate(runs[name]):
            for k, u in enumerate(units):
                s = np.asarray(run["scores"][u.name], dtype=np.float64)
                n0 = n_normal[run["seed"], k]
                normal, anomaly = s[:n0], s[n0:]
                point[i, k] = auc(normal, anomaly)
                i0, i1 = draws[run["seed"], k]
                boot[:, i, k] = auc(normal[i0], anomaly[i1])
        return point, boot

    def type_mean(a: np.ndarray) -> np.ndarray:  # [..., units] -> [..., types] -> mean over types
        per_type = np.stack([a[..., [k for k, u in enumerate(units) if u.machine == m]].mean(-1) for m in machines],
                            axis=-1)
        return per_type.mean(-1)

    computed = {n: curves(n) for n in names}
    out: dict[str, Any] = {}
    for name, (point, boot) in computed.items():
        headline = type_mean(boot).mean(-1)  # [n_boot]: mean over types, then over splits
        entry: dict[str, Any] = {
            "mean_auc": float(type_mean(point).mean()),
            "ci95": [float(np.percentile(headline, 2.5)), float(np.percentile(headline, 97.5))],
            "split_std": float(type_mean(point).std(ddof=1)) if len(seeds) > 1 else 0.0,
            "machines": {m: float(point[:, [k for k, u in enumerate(units) if u.machine == m]].mean())
                         for m in machines},
            "units": {u.name: float(point[:, k].mean()) for k, u in enumerate(units)},
            "vs": {},
        }
        for ref in PAIRED:
            if ref in computed and ref != name:
                diff = headline - type_mean(computed[ref][1]).mean(-1)
                entry["vs"][ref] = {"diff": float(type_mean(point).mean() - type_mean(computed[ref][0]).mean()),
                                    "ci95": [float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))]}
        out[name] = entry
    return out


def gain_correlation(runs: list[dict[str, Any]], references: list[dict[str, Any]], units: Sequence[Unit]) -> float:
    """Mean Spearman correlation of scores with the RMS level over each unit's test normals."""
    values = []
    for run, ref in zip(runs, references):
        for k, u in enumerate(units):
            n0 = len(split(u, k, run["seed"])[1])
            values.append(spearman(np.asarray(run["scores"][u.name][:n0]),
                                   np.asarray(ref["scores"][u.name][:n0])))
    return float(np.mean(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="comma-separated models (MODEL:KEY=VALUE variants allowed)")
    parser.add_argument("--real-dir", type=Path, default=DEFAULT_REAL)
    parser.add_argument("--splits", type=int, default=20, help="seeded splits (seeds 0..N-1); the protocol: 20")
    parser.add_argument("--levels", default="2,4,half", help="training normals per unit: numbers and/or 'half'")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of iterative models (default: config's)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for the intervals")
    parser.add_argument("--name", default="fewshot", help="result name (default fewshot)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    units = real_units(args.real_dir)
    if units is None:
        return 2
    levels = args.levels.split(",")
    entries = args.models.split(",")
    audio = Audio()
    t_start = time.perf_counter()
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    failed: dict[str, dict[str, str]] = {}  # level -> label -> why it could not train there
    with tempfile.TemporaryDirectory(prefix="bench_fewshot_") as tmp:
        for level in levels:
            runs: dict[str, list[dict[str, Any]]] = {}
            for seed in range(args.splits):
                for ref, scores in reference_scores(units, seed, audio).items():
                    runs.setdefault(ref, []).append({"seed": seed, "scores": scores})
                for entry in entries:
                    label = train_config(entry, args.epochs, 0)[0]
                    if label in failed.get(level, {}):
                        continue
                    try:
                        label, scores, took, *extra = run_detector(entry, units, seed, level, args.epochs, audio,
                                                                   Path(tmp))
                    except ValueError as e:  # e.g. too few clips for the model at this level: said, not hidden
                        failed.setdefault(level, {})[label] = str(e)
                        runs.pop(label, None)
                        log.warning("%s cannot train at level %s: %s", label, level, e)
                        continue
                    runs.setdefault(label, []).append({"seed": seed, "scores": scores, **(extra[0] if extra else {})})
                    seconds[label] = seconds.get(label, 0.0) + took
                log.info("level %s split %d done (%.0f s so far)", level, seed, time.perf_counter() - t_start)
            summary = summarise(runs, units, args.bootstrap)
            for name in runs:
                summary[name]["gain_correlation"] = gain_correlation(runs[name], runs["rms_level"], units)
            results[level] = {"summary": summary, "runs": runs}
    result = {
        "protocol": __doc__.split("\n\n", 1)[1].split("Usage:")[0].strip(),
        "units": [{"machine": u.machine, "id": u.id, "normals": len(u.normals), "anomalies": len(u.anomalies),
                   "train_half": len(u.normals) // 2} for u in units],
        "models": dict(train_config(e, args.epochs, 0) for e in entries),
        **({"other_types": OTHER_TYPES}
           if any(learns_other_types(train_config(e, args.epochs, 0)[1]) for e in entries) else {}),
        "epochs": args.epochs,
        "splits": args.splits,
        "bootstrap": args.bootstrap,
        "levels": results,
        "failed": failed,
        "train_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    out = write_result(args.name, result, args.out_dir)
    print_summary(results)
    print(f"wrote {out}")
    return 0


def print_summary(levels: dict[str, Any]) -> None:
    """One line per level and detector: mean AUC, its interval, gain correlation, paired differences."""
    for level, entry in levels.items():
        for name, s in entry["summary"].items():
            vs = "  ".join(f"vs {r} {v['diff']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]"
                           for r, v in s["vs"].items())
            print(f"{level:>4} {name:28s} AUC {s['mean_auc']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]  "
                  f"gain r {s['gain_correlation']:+.2f}  {vs}")


if __name__ == "__main__":
    sys.exit(main())
