"""Deep models on an accelerator: training time per epoch, peak memory, and batched stream scoring, in one run.

Made for a lent GPU session (issues #11 and #12), whose device time is short: one command measures every deep
model of the design at its shipped size, so that the figures need no second call. It runs on the CPU as well
(`--tiny` is what the test runs), so it cannot rot between the sessions that have a GPU.

Protocol (speed and memory, not accuracy; fixed before its first GPU result):
- Data: synthetic, seed 0, 10 s clips at 16 kHz: machine type fan, 2 ids x `--clips` normal training clips for
  the detectors (2 ids: STgram-MFN classifies them), and `asd-offline synth --pairs` fan pairs (1 id, `--clips`
  recordings, each at 6, 0 and -6 dB) for the noise models.
- Training: `asd-offline train` in this process, each model with its shipped `configs/<model>.yaml` (`--tiny`:
  its `quick_params` / `quick_feature` instead), `--epochs K` epochs on `--device` (AMP on CUDA, as shipped).
  Recorded: the whole command's wall time, the bundle's `fit_seconds` and `epochs_run` (seconds per epoch = their
  ratio), the shipped epochs and the fit extrapolated to them (fit seconds / epochs run x shipped epochs; marked
  as an extrapolation), and the accelerator's peak allocated memory over the command (reset before each model).
  Deep SVDD's auto-encoder pre-training runs `K` epochs too, inside its fit seconds (its seconds per epoch are
  one pre-training and one SVDD epoch, and the extrapolation takes 50 of both: an upper bound); `ssl_knn`'s figures are its
  self-supervised pre-training's (`training.pretraining` of the bundle), the nearest-neighbour bank is not timed.
- Scoring: the bundle's stream scorer (what the monitor runs) on `--device`, for each stream count in `--streams`:
  every stream is fed 1 s chunks of the same synthetic machine sound; once the windows are full, `--ticks` hops
  are timed, each one batched call that scores every stream's window. Recorded: seconds per hop (mean and max)
  and whether it keeps up with real time (mean below the hop). Larger counts are skipped once one misses real time.
  Denoisers have no scores: training only.
- The JSON is rewritten after every model, so a run cut short by the device's time limit keeps what it measured;
  a model that fails is recorded under `failed` (its error) and the run goes on to the next one, then exits non-zero.

On the lent GPU machine (no internet; soundfile, its cffi, and librosa with the needs below are not in its image,
as its package list of 2026-11-17 reads), from the repository root:
  here, once: python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 -d .whl soundfile==0.14.0 cffi==2.0.0 pycparser==2.23 librosa==0.11.0
      audioread==3.1.0 soxr==1.1.0 pooch==1.9.0 decorator==5.2.1 platformdirs==4.14.9   (.whl git-ignored)
  there (run, carry [".whl"]): python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir
      --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 -m benchmarks.bench_gpu
      --device cuda --out-dir $OUT

Usage: python -m benchmarks.bench_gpu [--models M,...] [--device cuda] [--epochs 2] [--clips 20]
       [--streams 1,10,100,1000] [--tiny] [--name gpu_<device>] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.common import model_config, write_result

log = logging.getLogger("bench_gpu")

DETECTORS = ("dcase_ae", "deep_svdd", "stgram_mfn", "aegan_ad", "anomaly_transformer", "ssl_knn")
NOISE_MODELS = ("lstm_denoiser", "lstm_classifier")
MACHINE, HOP_SECONDS = "fan", 1.0


def _synth(work: Path, clips: int) -> tuple[Path, Path]:
    from offline.cli import main as offline_main

    data, pairs = work / "data", work / "pairs"
    common = ["--machines", MACHINE, "--train-clips", str(clips), "--seed", "0"]
    if offline_main(["synth", str(data), "--ids", "2", "--test-clips", "0", *common]) != 0:
        raise SystemExit("asd-offline synth failed")
    if offline_main(["synth", str(pairs), "--pairs", "--ids", "1", "--test-clips", "1", *common]) != 0:
        raise SystemExit("asd-offline synth --pairs failed")
    return data, pairs


def _config(model: str, tiny: bool, epochs: int) -> tuple[dict[str, Any], int]:
    """The shipped config (`--tiny`: the detector's quick settings over it) with `epochs` for every epoch count, and
    the shipped epoch count."""
    from models.detectors import get_detector

    config = model_config(model)[1]
    params = dict(config.get("params") or {})
    shipped = int(params.get("epochs", 0))
    if tiny:
        cls = get_detector(model)
        params.update({k: v for k, v in cls.quick_params.items() if k not in ("progress", "num_threads")})
        config["feature"] = {**(config.get("feature") or {}), **cls.quick_feature}
        if "frames" in params and "window_seconds" in config:  # one crop of the tiny network per window
            config["window_seconds"] = max(2.0, float(HOP_SECONDS))
    params["epochs"] = epochs
    if "pretrain_epochs" in params:
        params["pretrain_epochs"] = min(epochs, int(params["pretrain_epochs"]))
    config["params"] = params
    return config, shipped


def train(model: str, data: Path, work: Path, device: str, epochs: int, tiny: bool) -> tuple[Path, dict[str, Any]]:
    """Train `model` with `asd-offline train`; its bundle and the training figures."""
    import torch

    from offline.cli import main as offline_main

    config, shipped = _config(model, tiny, epochs)
    cfg_path, out = work / f"{model}.yaml", work / model
    cfg_path.write_text(yaml.safe_dump(config))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    argv = ["train", "--data", str(data), "--model", model, "--config", str(cfg_path), "--out", str(out),
            "--device", device, "--seed", "0", "--no-progress"]
    if model not in NOISE_MODELS:
        argv += ["--machine", MACHINE]
    t0 = time.perf_counter()
    if offline_main(argv) != 0:
        raise RuntimeError(f"asd-offline train --model {model} failed")
    wall = time.perf_counter() - t0
    meta = json.loads((out / "bundle.json").read_text())
    s = meta["training"]
    timed = s.get("pretraining") or s  # a pre-training detector's epochs are its pre-training's (ssl_knn)
    fit_seconds = timed.get("seconds", s["fit_seconds"])
    per_epoch = fit_seconds / timed["epochs_run"] if timed.get("epochs_run") else None
    return out, {
        "params": config["params"], "feature": config.get("feature"),
        "train_wall_seconds": round(wall, 3), "fit_seconds": fit_seconds, "epochs_run": timed.get("epochs_run"),
        "pretraining": "pretraining" in s,
        "seconds_per_epoch": None if per_epoch is None else round(per_epoch, 4),
        "shipped_epochs": shipped,
        "fit_seconds_at_shipped_epochs_extrapolated": None if per_epoch is None else round(per_epoch * shipped, 1),
        "training_device": s.get("device"),
        "peak_accelerator_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
    }


def score_streams(bundle_path: Path, device: str, streams: list[int], ticks: int) -> list[dict[str, Any]]:
    """Seconds per hop of the bundle's stream scorer with each stream count (stops after one misses real time)."""
    from models.bundle import load_bundle
    from models.synth.voices import MachineVoice

    bundle = load_bundle(bundle_path, device=device)
    if bundle.kind == "denoiser":
        return []
    sr = bundle.sample_rate
    window = float(bundle.window_seconds or 10.0)
    hop = float(bundle.hop_seconds or HOP_SECONDS)
    chunk = MachineVoice(MACHINE, 0, sr, seed=0).generate(int(round(hop * sr))).astype(np.float32)
    ids = bundle.ids if bundle.needs_id else [None]
    rows = []
    for n in streams:
        scorer = bundle.stream_scorer(0, window, hop, device=device, machine_ids=[ids[i % len(ids)] for i in range(n)])
        for _ in range(int(np.ceil(window / hop))):  # fill every stream's first window
            scorer.accept([chunk] * n)
        times = []
        for _ in range(ticks):
            t0 = time.perf_counter()
            out = scorer.accept([chunk] * n)  # scores come back as floats: the device has finished
            times.append(time.perf_counter() - t0)
            if sum(len(o) for o in out) != n:
                raise RuntimeError(f"{bundle_path.name}: {n} streams gave {sum(len(o) for o in out)} scores a hop")
        mean = float(np.mean(times))
        rows.append({"streams": n, "hop_seconds": hop, "window_seconds": window, "seconds_per_hop_mean": round(mean, 5),
                     "seconds_per_hop_max": round(max(times), 5), "real_time": mean < hop})
        log.info("%s: %d streams, %.4f s per hop", bundle_path.name, n, mean)
        if mean >= hop:
            break
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DETECTORS + NOISE_MODELS), help="comma-separated models")
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--epochs", type=int, default=2, help="epochs trained per model (default 2)")
    ap.add_argument("--clips", type=int, default=20, help="training clips per id (default 20)")
    ap.add_argument("--streams", default="1,10,100,1000", help="stream counts scored (default 1,10,100,1000)")
    ap.add_argument("--ticks", type=int, default=5, help="timed hops per stream count (default 5)")
    ap.add_argument("--tiny", action="store_true", help="the models' quick settings (the CPU test)")
    ap.add_argument("--name", help="result name (default gpu_<device name>)")
    ap.add_argument("--out-dir", type=Path, help="where the JSON goes (default benchmarks/results)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device cpu)")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in DETECTORS + NOISE_MODELS]
    if unknown:
        raise SystemExit(f"not measured by this benchmark: {unknown}; choose from {DETECTORS + NOISE_MODELS}")
    streams = [int(s) for s in args.streams.split(",")]
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    name = args.name or "gpu_" + "".join(c if c.isalnum() else "_" for c in device.lower())
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    t_all = time.perf_counter()

    def write() -> Path:  # after every model: a run cut short by the device's time limit keeps what it measured
        return write_result(name, {
            "protocol": __doc__, "device": device, "epochs": args.epochs, "clips_per_id": args.clips,
            "tiny": args.tiny, "models": results, "failed": failed,
            "total_seconds": round(time.perf_counter() - t_all, 1)}, args.out_dir)

    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        work = Path(tmp)
        data, pairs = _synth(work, args.clips)
        for model in models:
            log.info("%s: training %d epochs on %s", model, args.epochs, args.device)
            try:
                bundle, figures = train(model, pairs if model in NOISE_MODELS else data, work, args.device,
                                        args.epochs, args.tiny)
                figures["scoring"] = score_streams(bundle, args.device, streams, args.ticks)
                results[model] = figures
            except Exception as exc:  # one model's failure must not cost the others their (scarce) device time
                log.exception("%s failed", model)
                failed[model] = f"{type(exc).__name__}: {exc}"
            path = write()
    log.info("wrote %s", path)
    if failed:
        raise SystemExit(f"failed: {sorted(failed)} (the others are in {path})")


if __name__ == "__main__":
    main()
