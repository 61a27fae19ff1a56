"""How many 16 kHz streams the monitor keeps in real time on this machine, with the DCASE AE bundle (10 s windows,
1 s hop), MQTT (a real mosquitto) and Prometheus on.

Each load level runs the real daemon in a fresh subprocess (so its memory is its own): N looping wav replays paced
at real time, for a warm-up and then a measured period. A level is *real time* when the p99 lag (wall clock when
a window was scored minus when its last audio was due) stays below one hop and at least 95 % of the expected
windows were scored. Reported per level: lag and per-tick compute latency p50/p99, windows scored, peak RSS;
then the largest real-time N found by doubling and bisection, and the memory per stream.

    python -m benchmarks.bench_monitor                       # full run -> benchmarks/results/monitor_cpu.json
    python -m benchmarks.bench_monitor --levels 10 --seconds 10 --no-search   # a quick check
    python -m benchmarks.bench_monitor --model iforest       # configs/iforest.yaml -> results/monitor_cpu_iforest.json
    python -m benchmarks.bench_monitor --bundle DIR --name NAME   # an existing bundle, as it is
    python -m benchmarks.bench_monitor --levels 100,400 --no-search --replay-seconds 1 --name monitor_cpu_replay_1s
    python -m benchmarks.bench_monitor --levels 100,400 --no-search --replay-seconds 3600 --name monitor_cpu_replay_1h
                                                             # memory per stream for short (looped) and long files
    python -m benchmarks.bench_monitor --noise-config configs/lstm_classifier.yaml   # with the noise classifier
    python -m benchmarks.bench_monitor --noise-bundle DIR    # ... an existing classifier bundle (16 kHz), as it is

`--model M` (with `--config PATH`, default configs/M.yaml) trains the measured bundle with that config on
`--train-clips` synthetic normal fan clips (`asd-offline synth`, seed 0) instead of the quick DCASE AE; training-set
size matters for the speed of some detectors (lof and ocsvm score against stored training vectors).

`--noise-config PATH` adds the noise classifier to every level: an `lstm_classifier` (or another `classifier`) trained
with that config on synthetic fan pairs (`asd-offline synth --pairs`, `--noise-pairs` recordings, seed 0; its speed,
not its accuracy, is measured), or `--noise-bundle DIR` as it is. The daemon then scores every stream with the
detector and the classifier, which is the "streams it keeps up with the noise classifier on" figure; the result is
named `..._noise` and records the classifier's settings under `noise` (and each level the windows that carried a
noise score). The tick latency stays the detector's (prepare + scoring call); the classifier's call shows in the lag.

Run it on an otherwise idle machine (`uptime`): other load shows up as lag.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.common import CONFIGS, write_result

HOP_SECONDS = 1.0
WINDOW_SECONDS = 10.0
SAMPLE_RATE = 16000
MACHINES = ("fan", "pump", "valve")


def enough_holdout(config: dict[str, Any], n_clips: int) -> float:
    """The config's holdout share (default 0.1), raised so that `n_clips` training clips keep at least
    `MIN_GAMMA_SCORES` held out: the threshold needs that many scores (an ensemble's normalisation at least 2)."""
    from models.threshold import MIN_GAMMA_SCORES

    return max(float(config.get("holdout", 0.1)), MIN_GAMMA_SCORES / n_clips)


def load_model_config(model: str | None, config_path: Path | None) -> tuple[str, dict[str, Any]]:
    """(model name, config) from `--model` / `--config`: the given file, else configs/MODEL.yaml, else the model's
    defaults; an ensemble's member configs are read relative to its file, as `asd-offline train` reads them."""
    from offline.train import load_config

    path = config_path or CONFIGS / f"{model}.yaml"
    config = load_config(path) if config_path or path.exists() else {"model": model}
    name = model or config.get("model")
    if not name:
        raise SystemExit(f"{path}: the config names no model; give --model")
    return str(name), config


def train_model_bundle(work: Path, model: str, config: dict[str, Any], n_clips: int) -> Path:
    """A bundle of `model` trained with `config` (its holdout raised where `n_clips` needs it) on `n_clips` synthetic
    normal fan clips, through the recipe `asd-offline train` uses."""
    from models.training.recipe import train_bundle
    from offline.cli import main as offline_main
    from offline.datasets.index import load_clips

    from models.detectors import get_detector

    data = work / "train_data"
    ids = "2" if get_detector(model).needs_ids else "1"  # a classifier of machine ids needs two of them
    rc = offline_main(["synth", str(data), "--machines", "fan", "--ids", ids, "--train-clips", str(n_clips),
                       "--test-clips", "0", "--seed", "0"])
    if rc != 0:
        raise RuntimeError(f"asd-offline synth exited {rc}")
    config = {**config, "holdout": enough_holdout(config, n_clips)}
    return train_bundle(load_clips(data, machine="fan"), model, "fan", work / "bundle", config, device="cpu",
                        progress=False)


GENERATED_SECONDS = 60  # longer replay files repeat this much generated audio (the content does not matter there)


def prepare(work: Path, seconds: float, model: str | None = None, config: dict[str, Any] | None = None,
            train_clips: int = 100, bundle: Path | None = None) -> tuple[Path, list[Path]]:
    """A DCASE AE bundle (quick training: its speed, not its accuracy, is measured), or `model` trained with
    `config` (`train_model_bundle`), or the given `bundle` as it is; and three wavs of `seconds` (written a minute
    at a time, so an hour-long file needs no hour in memory)."""
    import soundfile as sf

    from models.bundle import save_bundle
    from models.detectors import get_detector
    from models.features import feature_from_dict
    from models.synth.voices import MachineVoice

    det_cls = get_detector("dcase_ae")
    feature = feature_from_dict(det_cls.default_feature)
    wavs, clips = [], []
    for m in MACHINES:
        voice = MachineVoice(m, 0, SAMPLE_RATE, seed=0)
        total = int(seconds * SAMPLE_RATE)
        x = voice.generate(min(total, GENERATED_SECONDS * SAMPLE_RATE))
        path = work / f"{m}.wav"
        with sf.SoundFile(path, "w", SAMPLE_RATE, 1, subtype="PCM_16") as f:
            for start in range(0, total, x.size):
                f.write(x[: total - start])
        wavs.append(path)
        clips.append(np.resize(x, 10 * SAMPLE_RATE))
    if bundle is not None:
        return bundle, wavs
    if model is not None:
        return train_model_bundle(work, model, config or {"model": model}, train_clips), wavs
    det = det_cls(**{**det_cls.quick_params, "device": "cpu"}).fit(feature.extract_batch(clips))
    bundle = save_bundle(work / "bundle", det, feature, 1e9, {"method": "fixed"}, "mixed", ["00"],
                         {"clips": len(clips)}, window_seconds=WINDOW_SECONDS, hop_seconds=HOP_SECONDS)
    return bundle, wavs


def train_noise_classifier(work: Path, config: Path, n_pairs: int) -> Path:
    """A noise classifier trained by `asd-offline train` with `config` on `n_pairs` synthetic 10 s fan recordings
    (each clean and mixed at the config's SNRs), at the benchmark's sample rate."""
    from offline.cli import main as offline_main

    pairs = work / "noise_pairs"
    rc = offline_main(["synth", str(pairs), "--pairs", "--machines", "fan", "--ids", "1", "--train-clips", str(n_pairs),
                       "--test-clips", "1", "--seed", "0", "--sample-rate", str(SAMPLE_RATE)])
    if rc != 0:
        raise RuntimeError(f"asd-offline synth --pairs exited {rc}")
    out = work / "noise_bundle"
    rc = offline_main(["train", "--data", str(pairs), "--model", _config_model(config), "--config", str(config),
                       "--out", str(out), "--device", "cpu"])
    if rc != 0:
        raise RuntimeError(f"asd-offline train of the noise classifier exited {rc}")
    return out


def _config_model(config: Path) -> str:
    from offline.train import load_config

    model = load_config(config).get("model")
    if not model:
        raise SystemExit(f"{config}: the config names no model")
    return str(model)


def noise_summary(bundle: Path, config: Path | None) -> dict[str, Any]:
    """What the measured noise classifier is: model, feature, window and hop, training size."""
    meta = json.loads((bundle / "bundle.json").read_text())
    if meta.get("kind") != "classifier":
        raise SystemExit(f"{bundle}: a {meta.get('kind')} bundle, not a noise classifier")
    if int(meta.get("sample_rate", 0)) != SAMPLE_RATE:
        raise SystemExit(f"{bundle}: {meta.get('sample_rate')} Hz; the benchmark's streams are {SAMPLE_RATE} Hz")
    return {"path": None if config is not None else str(bundle), "config": str(config) if config else None,
            "model": meta["model"]["name"], "params": meta["model"].get("params"),
            "feature": meta["feature"], "window_seconds": meta.get("window_seconds"),
            "hop_seconds": meta.get("hop_seconds"), "n_pairs": meta.get("training", {}).get("n_pairs")}


def bundle_summary(bundle: Path, args: argparse.Namespace) -> dict[str, Any]:
    """What was measured, for a bundle other than the default: its model, feature, stages and training set."""
    meta = json.loads((bundle / "bundle.json").read_text())
    training = meta.get("training", {})
    shipped = CONFIGS / f"{meta['model']['name']}.yaml"
    if args.bundle is not None:
        config = None  # trained elsewhere: its bundle.json says how
    elif args.config is not None:
        config = str(args.config)
    else:
        config = str(shipped.relative_to(ROOT)) if shipped.exists() else "the model's defaults"
    return {"path": str(args.bundle) if args.bundle else None, "config": config,
            "model": meta["model"]["name"], "feature": meta["feature"].get("kind"),
            "stages": [s["name"] for s in meta.get("stages") or []], "members": list(meta.get("members") or []),
            "n_fit_clips": training.get("n_fit_clips"), "n_vectors": training.get("n_vectors"),
            "window_seconds": meta.get("window_seconds"), "hop_seconds": meta.get("hop_seconds")}


def start_mosquitto(work: Path) -> tuple[subprocess.Popen[bytes] | None, str | None]:
    binary = shutil.which("mosquitto")
    if binary is None:
        return None, None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"mqtt://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("mosquitto did not start")


class Recorder:
    """A sink that keeps what the benchmark measures (lag, tick latency, drops), after the warm-up."""

    name = "bench"

    def __init__(self, warmup_until: float) -> None:
        self.warmup_until = warmup_until
        self.lags: list[float] = []
        self.ticks: list[float] = []
        self.windows = 0
        self.with_noise = 0  # windows that carried a noise score
        self.dropped = 0

    async def start(self) -> None:
        return None

    def publish(self, event: Any) -> None:
        from monitor.events import CounterEvent, ScoreUpdate

        if isinstance(event, ScoreUpdate) and time.time() >= self.warmup_until:
            self.windows += 1
            self.with_noise += event.noise is not None
            self.lags.append(event.lag_seconds)
            self.ticks.append(event.inference_seconds)
        elif isinstance(event, CounterEvent) and event.name == "dropped_blocks":
            self.dropped += event.amount

    async def close(self) -> None:
        return None


def peak_rss_mib() -> float:
    """This process's peak resident memory since it started. VmHWM, not getrusage's ru_maxrss: ru_maxrss survives
    fork and exec, so a level's process reported the training peak of the benchmark process that started it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_level(n: int, bundle: Path, wavs: list[Path], mqtt: str | None, warmup: float, seconds: float,
              loop: bool = False, noise: Path | None = None) -> dict:
    """Run the daemon with `n` streams in this process (and the noise classifier `noise`, if given); returns the
    measurements of the measured period."""
    from monitor.config import parse_config
    from monitor.daemon import Daemon

    sinks: dict[str, Any] = {"tui": {"enabled": False}, "prometheus": {"enabled": True, "port": 0}}
    if mqtt:
        sinks["mqtt"] = {"url": mqtt, "outbox_size": 100000}
    ids = json.loads((bundle / "bundle.json").read_text()).get("machine", {}).get("ids") or [None]
    cfg = parse_config({
        "node": "bench",
        "bundle": str(bundle),
        # every source says the bundle's first machine id (models that score per id need one)
        "sources": [{"name": f"s{i}", "replay": [str(wavs[i % len(wavs)])], "machine_id": ids[0]} for i in range(n)],
        "pipeline": {"device": "cpu", "block_seconds": 0.25, "queue_blocks": 64},
        "replay": {"speed": 1.0, "duration_seconds": WINDOW_SECONDS + warmup + seconds, "loop": loop},
        "noise": {"bundle": str(noise) if noise else None},
        "sinks": sinks,
    })
    t0 = time.time()
    recorder = Recorder(t0 + warmup + WINDOW_SECONDS)  # the first windows need a full window of audio
    daemon = Daemon(cfg, sinks=[recorder], tui=False)
    asyncio.run(daemon.run())
    measured = seconds
    lags, ticks = np.array(recorder.lags or [np.nan]), np.array(recorder.ticks or [np.nan])
    expected = n * (int(measured / HOP_SECONDS) + 1)  # a window at each end of the measured period
    noise_windows = {"windows_with_noise_score": recorder.with_noise} if noise else {}
    return {
        **noise_windows,
        "streams": n,
        "measured_seconds": round(measured, 1),
        "windows_scored": recorder.windows,
        "windows_expected": int(expected),
        "lag_p50_s": float(np.percentile(lags, 50)),
        "lag_p99_s": float(np.percentile(lags, 99)),
        "tick_latency_p50_s": float(np.percentile(ticks, 50)),
        "tick_latency_p99_s": float(np.percentile(ticks, 99)),
        "dropped_blocks": recorder.dropped,
        "peak_rss_mib": peak_rss_mib(),
    }


def run_level(n: int, args: argparse.Namespace, bundle: Path, wavs: list[Path], mqtt: str | None,
              noise: Path | None = None) -> dict:
    """One level in a fresh interpreter, so peak RSS belongs to that level alone."""
    cmd = [sys.executable, "-m", "benchmarks.bench_monitor", "--one-level", str(n), "--bundle", str(bundle), "--wavs", *map(str, wavs),
           "--warmup", str(args.warmup), "--seconds", str(args.seconds)] + (["--mqtt", mqtt] if mqtt else []) + (
               ["--loop"] if replay_seconds(args) < WINDOW_SECONDS + args.warmup + args.seconds else []) + (
               ["--noise-bundle", str(noise)] if noise else [])
    timeout = WINDOW_SECONDS + args.warmup + args.seconds + 600
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"level {n} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["real_time"] = bool(result["lag_p99_s"] < HOP_SECONDS
                               and result["windows_scored"] >= 0.95 * result["windows_expected"])
    print(f"  {n:5d} streams: lag p50 {result['lag_p50_s']*1e3:7.1f} ms, p99 {result['lag_p99_s']*1e3:7.1f} ms, "
          f"tick p99 {result['tick_latency_p99_s']*1e3:6.1f} ms, windows {result['windows_scored']}/"
          f"{result['windows_expected']}, RSS {result['peak_rss_mib']:.0f} MiB -> "
          f"{'real time' if result['real_time'] else 'FALLS BEHIND'}", flush=True)
    return result


def replay_seconds(args: argparse.Namespace) -> float:
    """Length of the replayed files: `--replay-seconds`, else enough for a whole level without looping."""
    return args.replay_seconds or WINDOW_SECONDS + args.warmup + args.seconds + 5


def search_max(args: argparse.Namespace, run: Any, results: dict[int, dict]) -> int:
    """Double from the largest real-time level until one falls behind, then bisect to ~10 %."""
    ok = max([n for n, r in results.items() if r["real_time"]], default=0)
    bad = min([n for n, r in results.items() if not r["real_time"]], default=None)
    while bad is None and ok < args.max_streams:
        n = min(max(2 * ok, 100), args.max_streams)
        results[n] = run(n)
        ok, bad = (n, None) if results[n]["real_time"] else (ok, n)
        if n == args.max_streams:
            break
    while bad is not None and bad - ok > max(10, ok // 10):
        n = (ok + bad) // 2
        results[n] = run(n)
        ok, bad = (n, bad) if results[n]["real_time"] else (ok, n)
    return ok


def memory_per_stream(levels: list[dict]) -> float | None:
    """Peak RSS growth per stream from the smallest to the largest real-time level (a level that falls behind
    also holds its backlog, which is not what a stream costs)."""
    ok = [r for r in levels if r.get("real_time")]
    if len(ok) < 2:
        return None
    lo, hi = ok[0], ok[-1]
    return (hi["peak_rss_mib"] - lo["peak_rss_mib"]) / (hi["streams"] - lo["streams"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", default="10,100", help="stream counts always measured (comma-separated)")
    p.add_argument("--no-search", action="store_true", help="skip the search for the largest real-time count")
    p.add_argument("--max-streams", type=int, default=3200)
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring (after the first window)")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per level")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--model", help="measure this model, trained with --config (default: the quick DCASE AE)")
    p.add_argument("--config", type=Path, help="the model's training config (default configs/MODEL.yaml)")
    p.add_argument("--train-clips", type=int, default=100, help="synthetic normal clips --model is trained on")
    p.add_argument("--bundle", type=Path, help="measure this existing bundle instead of training one")
    p.add_argument("--name", help="result name (default monitor_cpu, monitor_cpu_MODEL with --model/--bundle)")
    p.add_argument("--noise-config", type=Path, metavar="YAML",
                   help="also run the noise classifier, trained with this config on synthetic pairs "
                        "(e.g. configs/lstm_classifier.yaml)")
    p.add_argument("--noise-bundle", type=Path, metavar="DIR",
                   help="also run this noise classifier bundle (16 kHz), as it is")
    p.add_argument("--noise-pairs", type=int, default=20,
                   help="synthetic recordings --noise-config trains on (each clean and at every SNR)")
    p.add_argument("--replay-seconds", type=float, default=None,
                   help="length of the replayed files (shorter than a level: looped); default: a level's length")
    p.add_argument("--one-level", type=int, help=argparse.SUPPRESS)
    p.add_argument("--loop", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--wavs", nargs="*", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--mqtt", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.one_level is not None:  # the child: one level, JSON on the last line of stdout
        print(json.dumps(one_level(args.one_level, args.bundle, args.wavs, args.mqtt, args.warmup, args.seconds,
                                   args.loop, args.noise_bundle)))
        return 0
    if args.noise_config is not None and args.noise_bundle is not None:
        p.error("give --noise-config or --noise-bundle, not both")

    model: str | None = None
    config: dict[str, Any] | None = None
    if args.bundle is not None:
        args.bundle = args.bundle.resolve()  # the level children run in the repository root
        label = json.loads((args.bundle / "bundle.json").read_text())["model"]["name"]
    elif args.model is not None or args.config is not None:
        model, config = load_model_config(args.model, args.config)
        label = model
    else:
        label = "dcase_ae"
    load_at_start = os.getloadavg()
    print(f"load average {load_at_start} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        work = Path(tmp)
        bundle, wavs = prepare(work, replay_seconds(args), model, config,
                               args.train_clips, args.bundle)
        measured = None if model is None and args.bundle is None else bundle_summary(bundle, args)
        noise = args.noise_bundle.resolve() if args.noise_bundle is not None else None
        if args.noise_config is not None:
            noise = train_noise_classifier(work, args.noise_config, args.noise_pairs)
        noise_measured = None if noise is None else noise_summary(noise, args.noise_config)
        broker, mqtt = start_mosquitto(work)
        try:
            results: dict[int, dict] = {}

            def run(n: int) -> dict:
                return run_level(n, args, bundle, wavs, mqtt, noise)

            for n in [int(x) for x in args.levels.split(",") if x]:
                results[n] = run(n)
            best = None if args.no_search else search_max(args, run, results)
        finally:
            if broker is not None:
                broker.terminate()
                broker.wait(timeout=10)
    levels = [results[n] for n in sorted(results)]
    per_stream = memory_per_stream(levels)
    result = {
        "settings": {"sample_rate": SAMPLE_RATE, "window_seconds": WINDOW_SECONDS, "hop_seconds": HOP_SECONDS,
                     "model": label, "block_seconds": 0.25, "warmup_seconds": args.warmup,
                     "measured_seconds": args.seconds, "mqtt": bool(mqtt), "prometheus": True,
                     "replay_file_seconds": replay_seconds(args),
                     "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg()},
        "max_real_time_streams": best,
        "memory_per_stream_mib": per_stream,
        "levels": levels,
        "targets": {"max_real_time_streams": ">= 500", "lag_p99_at_100_streams_s": "< 0.1",
                    "memory_per_stream_mib": "< 2"},
    }
    if measured is not None:  # the default (quick DCASE AE) result keeps its original keys
        result["bundle"] = measured
    if noise_measured is not None:
        result["noise"] = noise_measured
    name = args.name or ("monitor_cpu" if measured is None else f"monitor_cpu_{label}") + (
        "_noise" if noise_measured is not None else "")
    path = write_result(name, result, args.out)
    print(f"max real-time streams: {best}; memory per stream: {per_stream} MiB -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
