"""DCASE AE training time and peak memory on CPU, and bundle scoring throughput.

One synthetic machine type (`offline.synth`), N normal 10 s training clips, the full `train_bundle` path (read
wavs, log-mel, fit, threshold, write bundle). Training and scoring each run in a child process so that peak
memory is the child's own `ru_maxrss` (torch allocates outside Python's heap, so tracemalloc would miss it).

`--run-epochs K` (< `--epochs`) trains only K epochs and extrapolates the full run as
feature time + epochs x mean epoch time; the JSON then says `"extrapolated": true` and how it was computed.

Usage: python -m benchmarks.bench_ae_train [--clips 1000] [--epochs 100] [--run-epochs K] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MACHINE = "fan"


def _child(argv: list[str]) -> tuple[dict[str, Any], float]:
    """Run this script as a child; return its JSON result and its peak resident memory in MiB."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = Path(f.name)
    cmd = [sys.executable, "-m", "benchmarks.bench_ae_train", *argv, "--result", str(result_path)]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child {' '.join(argv[:2])} failed with exit code {proc.returncode}")
    result = json.loads(result_path.read_text())
    result_path.unlink()
    return result, usage.ru_maxrss / 1024  # Linux reports KiB


def _train(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from offline.datasets.index import load_clips
    from models.training.recipe import train_bundle

    torch.set_num_threads(args.threads)
    clips = load_clips(args.data, machine=MACHINE)
    t0 = time.perf_counter()
    config = {"params": {"epochs": args.run_epochs, "num_threads": args.threads}, "holdout": 0.0}
    out = train_bundle(clips, "dcase_ae", MACHINE, args.bundle, config, device="cpu", progress=False)
    wall = time.perf_counter() - t0
    summary = json.loads((out / "bundle.json").read_text())["training"]
    return {"wall_seconds": wall, "summary": summary}


def _score(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from models.audio import load_wav
    from models.bundle import load_bundle
    from offline.datasets.index import load_clips

    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle, device="cpu")
    clips = [c for c in load_clips(args.data, machine=MACHINE) if c.split == "train"][: args.score_clips]
    wavs = [load_wav(c.path, sample_rate=bundle.sample_rate)[0] for c in clips]
    batch = 64
    bundle.score_wavs(wavs[:1])  # warm-up: mel filterbank construction and first-call allocations are not throughput
    t0 = time.perf_counter()
    for i in range(0, len(wavs), batch):
        bundle.score_wavs(wavs[i : i + batch])
    total = time.perf_counter() - t0
    feats = bundle.feature.extract_batch(wavs)
    t0 = time.perf_counter()
    for i in range(0, len(feats), batch):
        bundle.score_features(feats[i : i + batch])
    model_only = time.perf_counter() - t0
    return {"clips": len(wavs), "batch": batch, "clips_per_second": len(wavs) / total,
            "model_only_clips_per_second": len(wavs) / model_only}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=1000, help="normal training clips (default 1000)")
    ap.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10)")
    ap.add_argument("--epochs", type=int, default=100, help="the epochs the figure is for (default 100)")
    ap.add_argument("--run-epochs", type=int, help="epochs actually trained; fewer than --epochs extrapolates")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    ap.add_argument("--score-clips", type=int, default=200, help="clips for the scoring throughput (default 200)")
    ap.add_argument("--data", type=Path, help="existing synthetic data set (default: synthesize into a temp dir)")
    ap.add_argument("--child", choices=["train", "score"], help=argparse.SUPPRESS)
    ap.add_argument("--bundle", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.run_epochs = args.run_epochs or args.epochs

    if args.child:
        result = _train(args) if args.child == "train" else _score(args)
        args.result.write_text(json.dumps(result))
        return

    from benchmarks.common import write_result

    with tempfile.TemporaryDirectory(prefix="bench_ae_") as tmp:
        data = args.data
        synth_seconds = None
        if data is None:
            from offline.synth import synthesize

            t0 = time.perf_counter()
            data = synthesize(Path(tmp) / "data", machines=[MACHINE], ids=1, train_clips=args.clips, test_clips=0,
                              duration=args.seconds)
            synth_seconds = time.perf_counter() - t0
        bundle = Path(tmp) / "bundle"
        common = ["--data", str(data), "--bundle", str(bundle), "--threads", str(args.threads),
                  "--run-epochs", str(args.run_epochs), "--score-clips", str(args.score_clips)]
        load_before = os.getloadavg()
        train, train_rss = _child(["--child", "train", *common])
        score, score_rss = _child(["--child", "score", *common])
        load_after = os.getloadavg()

    s = train["summary"]
    epoch_seconds = s["fit_seconds"] / s["epochs_run"]
    epoch_cpu = s["fit_cpu_seconds"] / s["epochs_run"]
    extrapolated = args.run_epochs < args.epochs
    full = train["wall_seconds"] + (args.epochs - args.run_epochs) * epoch_seconds
    full_cpu = s["fit_cpu_seconds"] + (args.epochs - args.run_epochs) * epoch_cpu
    result = {
        "model": "dcase_ae",
        "machine_type": MACHINE,
        "clips": s["n_fit_clips"],
        "clip_seconds": args.seconds,
        "vectors": s["n_vectors"],
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "synth_seconds": synth_seconds,
        "train": {
            "epochs_run": s["epochs_run"],
            "wall_seconds": train["wall_seconds"],
            "feature_seconds": s["feature_seconds"],
            "fit_seconds": s["fit_seconds"],
            "seconds_per_epoch": epoch_seconds,
            "fit_cpu_seconds": s["fit_cpu_seconds"],
            "cpu_seconds_per_epoch": epoch_cpu,
            "final_loss": s["final_loss"],
            "final_val_loss": s["final_val_loss"],
            "peak_rss_mib": round(train_rss, 1),
        },
        f"estimated_{args.epochs}_epoch_wall_seconds" if extrapolated else f"{args.epochs}_epoch_wall_seconds": full,
        "extrapolated": extrapolated,
        "extrapolation": (f"measured wall time for {args.run_epochs} epochs + {args.epochs - args.run_epochs} x "
                          "measured mean epoch time" if extrapolated else None),
        # CPU seconds of the fit (all threads): on a busy machine wall time overstates the cost, CPU time does not
        f"{args.epochs}_epoch_fit_cpu_seconds": full_cpu,
        "target_seconds": 600,
        "meets_target": full < 600,
        "score": {**score, "peak_rss_mib": round(score_rss, 1)},
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
    path = write_result("ae_train_cpu", result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
