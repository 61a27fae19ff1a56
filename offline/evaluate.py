"""`asd-offline evaluate`: score the test clips of each bundle's machine type and write the report.

REPORT_DIR gets `results.json` (the DESIGN.md schema plus extra keys), `summary.md` (side-by-side table, also
printed), and one folder per model with `results.csv`, the DCASE submission files under `submission/` and the
PNG plots (`confusion_<machine>.png`, `scores_<machine>.png`).

Two untrained references are always evaluated on the same clips, so every figure has a floor to be read against:
- `chance`: uniform random scores from a fixed seed (`--chance-seed`, default 0; the generator is seeded with the
  seed and the machine type, so a machine's draw does not depend on what else is evaluated). Its AUC is an honest
  draw, scattered around 0.5 by the number of clips, not the analytical 0.5.
- `rms_level`: the clip's RMS level in dBFS (louder = more anomalous). A detector that does not beat it is marked
  `NO` in the "beats level" column.

Aggregation (DCASE 2020 conventions): AUC/pAUC per id; a machine type's value is the arithmetic mean over its ids
(the baseline's "Average" row); a model's `mean` is the arithmetic mean over machine types. `hmean` (harmonic mean,
the DCASE ranking statistic) is over the ids of the machine type, and for the model over all its ids. Ids without
both classes (e.g. unlabeled evaluation clips) are null and left out of every mean; their scores still go into the
submission files. When the clips carry an SNR (MIMII), a machine type also gets `snr: {SNR: {auc, pauc, ids}}`; its
per-id figures then pool all SNRs.

Clips at another sample rate than a bundle's are resampled on reading, as `asd-offline train` reads them (the score
command, meant for single files, refuses them instead).
"""

from __future__ import annotations

import argparse
import logging
import re
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from models.threshold import STUDY_PERCENTILE
from offline.datasets.records import Clip
from offline.metrics import Confusion, arithmetic_mean, auc_pauc, confusion_at, harmonic_mean
from offline import report
from offline.report import REFERENCE_MODELS, safe_name

if TYPE_CHECKING:
    from models.bundle import Bundle

log = logging.getLogger(__name__)

LEVEL_FLOOR_DB = -300.0  # an all-zero clip has level -inf; any finite floor keeps the ranking and the AUC defined


@dataclass
class MachineScores:
    """One model's scores for the clips of one machine type; `threshold` is None for the reference models."""

    clips: list[Clip]
    scores: np.ndarray
    threshold: float | None = None
    bundle_path: Path | None = None
    per_id: dict[str, float] = field(default_factory=dict)  # the bundle's per-id thresholds
    train_p95: float | None = None  # 95th percentile of the bundle's training scores (the MIMII study's rule)
    calibration: dict[str, Any] | None = None  # how sure the bundle's threshold is (`models.threshold.calibration`)

    def thresholds(self) -> np.ndarray:
        """The decision threshold of each clip: its id's own, else the bundle's."""
        assert self.threshold is not None
        return np.array([self.per_id.get(c.id, self.threshold) for c in self.clips], dtype=float)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, metavar="ROOT_OR_MANIFEST",
                        help="dataset root (DCASE or MIMII layout) or manifest CSV")
    parser.add_argument(
        "--bundle", dest="bundles", action="append", required=True, type=bundle_arg, metavar="[LABEL=]DIR",
        help="bundle directory; repeat to compare several side by side. LABEL names its row (default: the model "
             "name), so variants of one model (e.g. with and without a cleaning stage) can stand side by side",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="REPORT_DIR", help="report directory (created)")
    parser.add_argument("--split", default="test", choices=("train", "test"),
                        help="which clips to score (default test)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--batch-size", type=int, default=32, help="clips loaded and scored per call (default 32)")
    parser.add_argument("--chance-seed", type=int, default=0, help="seed of the 'chance' reference scores (default 0)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots (faster on many machine types)")


def run(args: argparse.Namespace) -> int:
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    loaded = _load_bundles(args.bundles, args.device)
    noise = [b.kind != "detector" for _, _, b in loaded]
    if any(noise):
        if not all(noise):
            raise ValueError("noise models (classifier, denoiser) and detectors are evaluated on different data: "
                             "give them in separate calls")
        from offline.evaluate_noise import evaluate_noise, summary_table

        doc = evaluate_noise(args.data, loaded, args.out, split=args.split)
        print(summary_table(doc["noise_models"]))
        print(f"report: {args.out}")
        return 0
    results = evaluate(
        args.data, loaded, args.out, split=args.split, device=args.device, batch_size=args.batch_size,
        chance_seed=args.chance_seed, plots=not args.no_plots,
    )
    report.print_summary(results, title=f"AUC / pAUC on {args.data} ({args.split})")
    print(f"report: {args.out}")
    return 0


# --- scoring -------------------------------------------------------------------------------------------------------


_LABEL = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.+-]*)=(.+)$")


def bundle_arg(text: str) -> tuple[str | None, Path]:
    """`DIR` or `LABEL=DIR` (a plain label: letters, digits, `_ . + -`) -> (label or None, DIR)."""
    m = _LABEL.match(text)
    return (m.group(1), Path(m.group(2))) if m else (None, Path(text))


def _load_bundles(entries: Sequence[tuple[str | None, Path] | tuple[str, Path, "Bundle"] | Path | str],
                  device: str) -> list[tuple[str, Path, "Bundle"]]:
    """(row label, path, bundle) for each `--bundle` (or already loaded triple); a label (default: the model name)
    names one bundle per machine type."""
    from models.bundle import load_bundle

    loaded = []
    for entry in entries:
        if isinstance(entry, tuple) and len(entry) == 3:  # already loaded (`run` looks at the kinds first)
            loaded.append(entry)
            continue
        label, path = entry if isinstance(entry, tuple) else bundle_arg(str(entry))
        b = load_bundle(path, device=device)
        loaded.append((label or b.name, Path(path), b))
    seen: dict[tuple[str, str], Path] = {}
    for label, path, b in loaded:
        if label in REFERENCE_MODELS:
            raise ValueError(f"{path}: name {label!r} is reserved for a reference row of the report; give the "
                             "bundle a label (--bundle LABEL=DIR)")
        key = (label, b.machine)
        if key in seen:
            raise ValueError(
                f"{seen[key]} and {path} are both {label!r} for machine type {b.machine!r}; label them apart "
                "(--bundle LABEL=DIR) or evaluate them in separate calls"
            )
        seen[key] = path
    return loaded


def _score_machine(
    clips: list[Clip], bundles: list[tuple[str, Path, "Bundle"]], batch_size: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Scores of every bundle and the RMS level, reading each clip once per distinct bundle sample rate and holding
    at most `batch_size` clips in memory."""
    from models.audio import level_dbfs, load_wav

    by_rate: dict[int, list[int]] = defaultdict(list)
    for i, (_, _, b) in enumerate(bundles):
        by_rate[int(b.sample_rate)].append(i)
    scores: list[list[np.ndarray]] = [[] for _ in bundles]
    levels: list[float] = []
    for start in range(0, len(clips), batch_size):
        batch = clips[start : start + batch_size]
        for k, (rate, idx) in enumerate(by_rate.items()):
            wavs = [load_wav(c.path, sample_rate=rate, resample=True)[0] for c in batch]  # as training reads them
            if k == 0:
                levels += [max(level_dbfs(w), LEVEL_FLOOR_DB) for w in wavs]
            for i in idx:
                _, path, bundle = bundles[i]
                try:
                    s = np.asarray(bundle.score_wavs(wavs, ids=[c.id for c in batch]), dtype=float)
                except ValueError as exc:
                    where = f"{batch[0].path} .. {batch[-1].path}"
                    raise ValueError(f"bundle {path} could not score {where}: {exc}") from exc
                if s.shape != (len(batch),) or not np.isfinite(s).all():
                    raise ValueError(f"bundle {path} returned bad scores for {batch[0].path} ..: {s!r}")
                scores[i].append(s)
        log.info("scored %d/%d clips", min(start + batch_size, len(clips)), len(clips))
    return [np.concatenate(s) for s in scores], np.asarray(levels)


def chance_scores(machine: str, n: int, seed: int) -> np.ndarray:
    """Uniform random scores; seeded with (seed, machine) so each machine type's draw is reproducible on its own."""
    return np.random.default_rng([seed, zlib.crc32(machine.encode())]).random(n)


# --- metrics -------------------------------------------------------------------------------------------------------


def _labels(clips: Sequence[Clip]) -> np.ndarray:
    return np.array([c.is_anomaly for c in clips], dtype=int)


def _group_metrics(clips: Sequence[Clip], scores: np.ndarray) -> dict[str, Any]:
    """AUC/pAUC of the labeled clips of one group (unlabeled clips cannot count)."""
    keep = [i for i, c in enumerate(clips) if c.label is not None]
    return auc_pauc(_labels([clips[i] for i in keep]), scores[keep]).to_dict()


def _per_id(clips: Sequence[Clip], scores: np.ndarray) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(clips):
        groups[c.id].append(i)
    return {ident: _group_metrics([clips[i] for i in idx], scores[idx]) for ident, idx in sorted(groups.items())}


def _means(entries: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    return {k: arithmetic_mean(e[k] for e in entries) for k in ("auc", "pauc")}


def _hmeans(entries: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    return {k: harmonic_mean(e[k] for e in entries) for k in ("auc", "pauc")}


def _confusion(ms: MachineScores, idx: Sequence[int] | None = None, *, train_p95: bool = False
               ) -> Confusion | None:
    """Counts over the labeled clips (of `idx`, default all) at the bundle threshold, or at the 95th percentile of
    its training scores; None for references, bundles without that percentile, or when nothing is labeled."""
    pool = range(len(ms.clips)) if idx is None else idx
    labeled = [i for i in pool if ms.clips[i].label is not None]
    threshold = ms.train_p95 if train_p95 else ms.threshold
    if ms.threshold is None or threshold is None or not labeled:
        return None
    y = _labels([ms.clips[i] for i in labeled])
    per_clip = None if train_p95 else ms.thresholds()[labeled]
    return confusion_at(y, ms.scores[labeled], threshold, per_clip)


def _snr_groups(ms: MachineScores) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(ms.clips):
        if c.snr is not None:
            groups[c.snr].append(i)
    return dict(sorted(groups.items()))


def machine_metrics(ms: MachineScores) -> dict[str, Any]:
    """The results.json entry of one machine type: per id, means, per SNR when the clips say it, confusion counts."""
    ids = _per_id(ms.clips, ms.scores)
    out: dict[str, Any] = {**_means(list(ids.values())), "hmean": _hmeans(list(ids.values())), "ids": ids}
    snrs = _snr_groups(ms)
    if snrs:
        out["snr"] = {}
        for snr, idx in snrs.items():
            snr_ids = _per_id([ms.clips[i] for i in idx], ms.scores[idx])
            out["snr"][snr] = {**_means(list(snr_ids.values())), "ids": snr_ids}
            p95 = _confusion(ms, idx, train_p95=True)
            if p95 is not None:
                out["snr"][snr]["confusion_train_p95"] = p95.to_dict()
    out["n_clips"] = len(ms.clips)
    if ms.threshold is not None:
        out["threshold"] = ms.threshold
        if ms.per_id:
            out["threshold_per_id"] = dict(ms.per_id)
    conf = _confusion(ms)
    if conf is not None:
        out["confusion"] = conf.to_dict()
    if ms.calibration is not None:
        # what the bundle expected of its threshold, beside what the test normals show
        out["threshold_calibration"] = {**ms.calibration, "test_false_alarm_rate": (
            None if conf is None or conf.tn + conf.fp == 0 else conf.fp / (conf.tn + conf.fp))}
    p95 = _confusion(ms, train_p95=True)
    if p95 is not None:
        out["confusion_train_p95"] = p95.to_dict()
    if ms.bundle_path is not None:
        out["bundle"] = str(ms.bundle_path)
    return out


def model_metrics(machines: dict[str, MachineScores], kind: str) -> dict[str, Any]:
    """A model's results.json entry: its machine types, their arithmetic mean, the harmonic mean over all ids."""
    entries = {m: machine_metrics(ms) for m, ms in sorted(machines.items())}
    all_ids = [e for m in entries.values() for e in m["ids"].values()]
    return {"machines": entries, "mean": _means(list(entries.values())), "hmean": _hmeans(all_ids), "kind": kind}


# --- the whole evaluation ------------------------------------------------------------------------------------------


def evaluate(
    data: Path,
    bundle_paths: Sequence[tuple[str | None, Path] | tuple[str, Path, "Bundle"] | Path | str],
    out: Path,
    *,
    split: str = "test",
    device: str = "auto",
    batch_size: int = 32,
    chance_seed: int = 0,
    plots: bool = True,
) -> dict[str, Any]:
    """Score, compute metrics, write every report file; returns the results.json content. Each bundle is a path,
    `LABEL=path`, or a (label or None, path) pair."""
    from offline.datasets.index import load_clips

    bundles = _load_bundles(bundle_paths, device)
    clips = [c for c in load_clips(data) if c.split == split]
    by_machine: dict[str, list[Clip]] = defaultdict(list)
    for c in clips:
        by_machine[c.machine].append(c)

    runs: dict[str, dict[str, MachineScores]] = defaultdict(dict)
    for machine in sorted({b.machine for _, _, b in bundles}):
        mclips = sorted(by_machine.get(machine, []), key=lambda c: (c.id, str(c.path)))
        if not mclips:
            raise ValueError(f"{data}: no {split} clips of machine type {machine!r} (found: {sorted(by_machine)})")
        mbundles = [(label, p, b) for label, p, b in bundles if b.machine == machine]
        log.info("%s: %d %s clips, %d bundle(s)", machine, len(mclips), split, len(mbundles))
        scores, levels = _score_machine(mclips, mbundles, batch_size)
        for (label, path, b), s in zip(mbundles, scores):
            p95 = b.meta.get("training", {}).get("train_score_percentiles", {}).get(str(STUDY_PERCENTILE))
            runs[label][machine] = MachineScores(mclips, s, float(b.threshold), path, dict(b.per_id_thresholds),
                                                 None if p95 is None else float(p95),
                                                 b.meta["threshold"].get("info", {}).get("calibration"))
        runs["chance"][machine] = MachineScores(mclips, chance_scores(machine, len(mclips), chance_seed))
        runs["rms_level"][machine] = MachineScores(mclips, levels)

    ordered = list(dict.fromkeys(label for label, _, _ in bundles)) + list(REFERENCE_MODELS)  # command-line order
    model_of = {label: b.name for label, _, b in bundles}
    results: dict[str, Any] = {
        "models": {n: {**model_metrics(runs[n], "reference" if n in REFERENCE_MODELS else "bundle"),
                       **({"model": model_of[n]} if n in model_of else {})} for n in ordered},
        "meta": {
            "data": str(data),
            "split": split,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "chance": f"uniform random scores, seed {chance_seed} combined with the machine type",
            "rms_level": "clip RMS level in dBFS, louder = more anomalous",
            "aggregation": "machine = mean over ids; model mean = mean over machine types; hmean over ids",
        },
    }
    write_report(out, results, runs, plots=plots)
    return results


def write_report(
    out: Path, results: dict[str, Any], runs: dict[str, dict[str, MachineScores]], *, plots: bool = True
) -> None:
    """results.json, summary.md and per-model CSVs; submission files and plots for the bundle models."""
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "results.json", results)
    (out / "summary.md").write_text(report.summary_markdown(results))
    for name, machines in runs.items():
        folder = out / safe_name(name)
        folder.mkdir(exist_ok=True)
        model = results["models"][name]
        report.write_model_csv(folder / "results.csv", model)
        for machine, ms in machines.items():
            if ms.threshold is None:
                continue
            report.write_submission(folder / "submission", machine, ms.clips, ms.scores, ms.threshold, ms.per_id)
            if not plots:
                continue
            title = f"{name} / {machine}"
            conf = _confusion(ms)
            if conf is not None:
                report.plot_confusion(folder / f"confusion_{safe_name(machine)}.png", conf, title)
            groups = {"": None, **_snr_groups(ms)}
            for snr, idx in groups.items():
                p95 = _confusion(ms, idx, train_p95=True)
                if p95 is not None:
                    name = safe_name(f"{machine}_{snr}" if snr else machine)
                    report.plot_confusion(folder / f"confusion_p95_{name}.png", p95,
                                          f"{title}{f' {snr}' if snr else ''}", rule="95th pct of training scores")
            auc = model["machines"][machine]["auc"]
            report.plot_score_distribution(
                folder / f"scores_{safe_name(machine)}.png", ms.scores, [c.label for c in ms.clips], ms.threshold,
                f"{title}  AUC {auc:.3f}" if auc is not None else title,
            )
