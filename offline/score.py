"""`asd-offline score --bundle DIR FILE... [--id ID]`: one JSON line per file on stdout, in the order given.

A scored file gives `{"path", "score", "threshold", "anomalous"}` (anomalous = score > threshold; the threshold is
the id's own when the bundle has one for `--id`). A file that cannot be scored (unreadable, truncated, wrong sample
rate, too short for one feature vector...) gives `{"path", "error"}` and the others are still scored. For a
`vectors` bundle each FILE is an `.npz`/`.csv` of rows, and every row gets its own line with `row` and `name` (and
the row's `id` when the file has ids and `--id` is not given); with `--out DIR` each such file is also one test set:
`DIR/<file stem>.json` (its rows' scores and a summary) and `DIR/distributions.png` (every set's scores side by side,
with the threshold): the seed SVDD's clean vs noisy comparison. Exit status: 0 when everything was scored, 1 when at
least one file failed, 2 when the bundle itself cannot be loaded or cannot score what it was given (nothing is
scored then). Only the bundle directory is needed: feature config, stages, detector and thresholds come from it.

A recording longer than `--long-seconds` (default 60 s: an hour of audio as one clip would need all of its
features at once) is scored as the monitor scores it, in the bundle's windows and hop, read from the file block by
block: its line has `"windows"`, the window-score summary (`score` is the highest window score, `mean_score`,
`anomalous_windows`, `first_anomalous_s`: the end of the first window above the threshold) and, with
`--window-scores`, every `[end_s, score]`. Memory then does not grow with the file's length.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    from models.audio import WavReader
    from models.bundle import Bundle

log = logging.getLogger(__name__)

LONG_FILE_SECONDS = 60.0
READ_BLOCK_SECONDS = 1.0


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "exit status: 0 every file scored, 1 some file failed (its line has 'error'), 2 bundle unusable"
    parser.add_argument("--bundle", required=True, type=Path, metavar="DIR", help="bundle directory")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE",
                        help="wav files to score (.npz/.csv of vectors for a vectors bundle)")
    parser.add_argument("--id", dest="machine_id", metavar="ID",
                        help="machine id of the files: its own threshold, and required by per-id models")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--batch-size", type=int, default=16, help="files scored per call (default 16)")
    parser.add_argument("--long-seconds", type=float, default=LONG_FILE_SECONDS, metavar="S",
                        help=f"files longer than this are scored in the bundle's windows (default {LONG_FILE_SECONDS:g})")
    parser.add_argument("--window-scores", action="store_true",
                        help="with long files, list every window's [end_s, score]")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="vectors bundles: also write DIR/<file>.json per file and DIR/distributions.png")


def run(args: argparse.Namespace) -> int:
    from models.bundle import load_bundle

    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    bundle = load_bundle(args.bundle, device=args.device)  # BundleError is a ValueError: the CLI exits 2
    if args.out is not None and bundle.input_kind != "vectors":
        raise ValueError("--out writes one test set per vector file: it needs a bundle trained on .npz/.csv vectors")
    failed = 0
    if bundle.input_kind == "vectors":
        lines = score_vector_files(bundle, args.files, args.machine_id)
        if args.out is not None:
            lines = list(lines)
            write_score_sets(bundle, args.bundle, lines, args.out)
    else:
        bundle.check_machine_id(args.machine_id)
        lines = score_files(bundle, args.files, args.batch_size, args.machine_id, args.long_seconds,
                            args.window_scores)
    for line in lines:
        failed += "error" in line
        print(json.dumps(line), flush=True)
    return 1 if failed else 0


def score_vector_files(bundle: "Bundle", paths: Sequence[Path], machine_id: str | None) -> Iterator[dict[str, Any]]:
    """One result per row of each vector file; a file that cannot be read gives one error line."""
    from models.features.vectors import read_vectors

    for path in paths:
        try:
            vf = read_vectors(path)
            if vf.dim != bundle.feature.dim:
                raise ValueError(f"{path}: rows have {vf.dim} values, the bundle takes {bundle.feature.dim}")
            ids = [machine_id] * len(vf) if machine_id is not None else vf.ids
            scores = bundle.score_wavs([vf.X[i : i + 1] for i in range(len(vf))], ids=ids)
        except ValueError as exc:  # FeatureInputError and BundleError are ValueErrors
            yield _error_line(path, exc)
            continue
        for i, score in enumerate(scores):
            mid = None if ids is None else ids[i]
            line: dict[str, Any] = {"path": str(path), "row": i, "name": vf.names[i]}
            if mid is not None and machine_id is None:
                line["id"] = mid
            threshold = bundle.threshold_for(mid)
            yield {**line, "score": float(score), "threshold": threshold, "anomalous": bool(score > threshold)}


def write_score_sets(bundle: "Bundle", bundle_dir: Path, lines: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """One JSON per scored vector file (a test set) and one PNG of all sets' score distributions; files that failed
    get no JSON (their error is on stdout). Returns the paths written."""
    from offline.report import plot_score_sets, safe_name, write_json

    by_file: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        if "error" not in line:
            by_file.setdefault(line["path"], []).append(line)
    out.mkdir(parents=True, exist_ok=True)
    written, sets, taken = [], {}, set()
    for path, rows in by_file.items():
        label = safe_name(Path(path).stem)
        name, k = label, 1
        while name in taken:  # a/x.npz and b/x.npz
            k += 1
            name = f"{label}-{k}"
        taken.add(name)
        scores = np.array([r["score"] for r in rows])
        keep = ("row", "name", "id", "score", "anomalous")
        report = {"path": path, "bundle": str(bundle_dir), "model": bundle.name, "threshold": rows[0]["threshold"],
                  "n": len(rows),
                  "summary": {"mean": float(scores.mean()), "median": float(np.median(scores)),
                              "min": float(scores.min()), "max": float(scores.max()),
                              "anomalous": int(sum(r["anomalous"] for r in rows))},
                  "files": [{k: r[k] for k in keep if k in r} for r in rows]}
        write_json(out / f"{name}.json", report)
        written.append(out / f"{name}.json")
        sets[name] = scores
    if sets:
        thresholds = {r["threshold"] for rows in by_file.values() for r in rows}
        shown = thresholds.pop() if len(thresholds) == 1 else None  # per-id thresholds: no single line to draw
        plot_score_sets(out / "distributions.png", sets, shown, f"{bundle.name}: scores per test set")
        written.append(out / "distributions.png")
    log.info("wrote %d test set report(s) to %s", len(sets), out)
    return written


def score_files(bundle: "Bundle", paths: Sequence[Path], batch_size: int = 16, machine_id: str | None = None,
                long_seconds: float = LONG_FILE_SECONDS, window_scores: bool = False) -> Iterator[dict[str, Any]]:
    """Result dicts in input order. Files are read and scored in batches; when a batch's scoring call fails, its
    files are scored one by one so that only the bad file gets the error. Long files: `score_long_file`."""
    from models.audio import AudioError, WavReader

    threshold = float(bundle.threshold_for(machine_id))
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        results: dict[int, dict[str, Any]] = {}
        wavs: dict[int, np.ndarray] = {}
        for i, path in enumerate(batch):
            try:
                reader = WavReader(path, sample_rate=bundle.sample_rate)
                if reader.frames > long_seconds * reader.sample_rate:
                    results[i] = score_long_file(bundle, reader, machine_id, threshold, window_scores)
                else:
                    wavs[i] = reader.read()
            except (AudioError, ValueError) as exc:
                results[i] = _error_line(path, exc)
        for i, score in _score_isolating_failures(bundle, wavs, machine_id).items():
            if isinstance(score, str):
                results[i] = {"path": str(batch[i]), "error": f"{batch[i]}: {score}"}
            else:
                results[i] = {"path": str(batch[i]), "score": score, "threshold": threshold,
                              "anomalous": score > threshold}
        yield from (results[i] for i in range(len(batch)))


def _error_line(path: Path, exc: Exception) -> dict[str, Any]:
    """The error line of a file: the message, prefixed with the path unless it already names it."""
    message = str(exc)
    return {"path": str(path), "error": message if str(path) in message else f"{path}: {message}"}


def score_long_file(bundle: "Bundle", reader: "WavReader", machine_id: str | None, threshold: float,
                    window_scores: bool = False) -> dict[str, Any]:
    """A long recording in the bundle's windows and hop, fed block by block to the monitor's stream scorer."""
    import torch

    window, hop = bundle.window_seconds, bundle.hop_seconds
    scorer = bundle.stream_scorer(1, window, hop, machine_ids=[machine_id])
    rate = reader.sample_rate
    n, total, peak, anomalous = 0, 0.0, float("-inf"), 0
    first: float | None = None
    listed: list[list[float]] = []
    with torch.inference_mode():
        for block in reader.blocks(int(READ_BLOCK_SECONDS * rate)):
            for end, score in scorer.accept([block])[0]:
                n, total, peak = n + 1, total + score, max(peak, score)
                if score > threshold:
                    anomalous += 1
                    first = end / rate if first is None else first
                if window_scores:
                    listed.append([round(end / rate, 3), score])
    if n == 0:
        raise ValueError(f"{reader.path}: shorter than one {window:g} s window")
    line: dict[str, Any] = {"path": str(reader.path), "score": peak, "threshold": threshold,
                            "anomalous": peak > threshold, "windows": n, "window_seconds": window,
                            "hop_seconds": hop, "mean_score": total / n, "anomalous_windows": anomalous,
                            "first_anomalous_s": first}
    if window_scores:
        line["window_scores"] = listed
    return line


def _score_isolating_failures(bundle: "Bundle", wavs: dict[int, np.ndarray],
                              machine_id: str | None) -> dict[int, float | str]:
    """Scores by position; a position whose clip the detector rejects maps to the error message instead."""
    if not wavs:
        return {}
    keys = list(wavs)
    try:
        ids = None if machine_id is None else [machine_id] * len(keys)
        scores = np.asarray(bundle.score_wavs([wavs[k] for k in keys], ids=ids), dtype=float)
        return {k: float(s) for k, s in zip(keys, scores)}
    except ValueError as exc:
        if len(keys) == 1:
            return {keys[0]: str(exc)}
        log.debug("batch scoring failed (%s); scoring the files one by one", exc)
        out: dict[int, float | str] = {}
        for k in keys:
            out.update(_score_isolating_failures(bundle, {k: wavs[k]}, machine_id))
        return out
