"""Speed of the classical systems (issue #10) on the CPU: fit, score, streaming cost per hop, monitor capacity.

Fit and score times, the streaming cost per hop, and how many streams each system keeps up with in the monitor.

Three parts, on one synthetic data set (`asd-offline synth`: fan, one id, N normal training clips and N test clips of
10 s at 16 kHz, 0 dB SNR, seed 0), every system trained with its shipped `configs/<model>.yaml`:

1. fit and score: `train_bundle(...)` wall time on the N training clips, split into feature seconds and fit
   seconds (stages + detector) as the bundle's `training` block records them (an ensemble records its members' fit
   seconds; its features are in `other_seconds`); then `load_bundle(...).score_wavs(...)` over the N test clips
   (audio loaded before the clock starts; score_wavs batches `CLIP_GROUP` clips per call): wall seconds, clips/s.
   The holdout share is the config's, raised where N needs it so that at least 3 clips are held out (the gamma
   threshold needs 3 scores, an ensemble's normalisation 2), or `--holdout`.
2. streaming cost per 1 s hop, S streams of the test clips' audio fed in 1 s chunks, with the monitor's torch
   threads (cores - 1) unless `--stream-threads`:
   - per feature kind (every registered audio kind, default settings, plus each system's own settings), computed
     as the stream scorer computes it: framed kinds through `cfg.batch_stream(S)`; window-level kinds with a frame
     front end through the front end's batch stream plus one `reduce` of S windows per hop, those without by one
     `compute` of S 10 s windows per hop (`whole_window_*`: that cost, for every window-level kind);
   - per system: `bundle.stream_scorer(S, 10.0, 1.0).accept(...)` once every stream's first window is full, which
     is what the monitor pays per hop (features, stages, detector, window bookkeeping).
   Reported as ms per stream per hop; `streams_per_thread` = 1000 / that, the most one thread could keep up with.
3. the monitor (`benchmarks.bench_monitor --bundle`, the bundle from part 1, a fresh daemon per load level with MQTT
   and Prometheus, 10 s window, 1 s hop): the largest real-time stream count per system (the issue's target: 500).

    python -m benchmarks.bench_classical        # full run (~1 h on 2 cores) -> results/classical_speed_cpu.json
    python -m benchmarks.bench_classical --clips 12 --models iforest,modspec_graph --streams 4 --no-monitor \\
        --out /tmp/bench   # a quick check (~1 min)

Run it on an otherwise idle machine (`uptime`): other load shows up in every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from benchmarks.bench_monitor import HOP_SECONDS, ROOT, WINDOW_SECONDS, enough_holdout
from benchmarks.common import model_config, write_result

SAMPLE_RATE = 16000
CLIP_SECONDS = 10
MACHINE = "fan"
DEFAULT_MODELS = "iforest,ocsvm,lof,modspec_graph,ivector_gmm,ensemble"
TARGET_STREAMS = 500


# -- data and configs --------------------------------------------------------------------------------------------


def synthesize(root: Path, n_clips: int, workers: int) -> None:
    """N normal training and N test clips (half anomalous) of one fan id, through the command a user runs."""
    from offline.cli import main as offline_main

    argv = ["synth", str(root), "--machines", MACHINE, "--ids", "1", "--train-clips", str(n_clips),
            "--test-clips", str(n_clips), "--snr", "0", "--seed", "0", "--duration", str(CLIP_SECONDS),
            "--sample-rate", str(SAMPLE_RATE), "--workers", str(workers)]
    rc = offline_main(argv)
    if rc != 0:
        raise SystemExit(f"asd-offline {' '.join(argv)} exited {rc}")


def system_config(entry: str, n_clips: int, holdout: float | None) -> tuple[str, dict[str, Any]]:
    """(label, config) of a `--models` entry: the shipped config (`model_config`, an ensemble's member configs
    inlined) with a holdout that leaves enough held-out clips."""
    label, config = model_config(entry)
    return label, {**config, "holdout": holdout if holdout is not None else enough_holdout(config, n_clips)}


def load_audio(clips: Sequence[Any]) -> list[np.ndarray]:
    from models.audio import load_wav

    return [load_wav(c.path, sample_rate=SAMPLE_RATE, resample=True)[0] for c in clips]


# -- part 1: fit and score ---------------------------------------------------------------------------------------


def fit_system(label: str, config: dict[str, Any], train: Sequence[Any], out: Path) -> dict[str, Any]:
    """Train through `train_bundle`; wall time, and the feature / fit split the bundle's `training` block records."""
    from models.training.recipe import train_bundle

    t0, cpu0 = time.perf_counter(), time.process_time()
    train_bundle(train, config["model"], MACHINE, out, config, device="cpu", progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    meta = json.loads((out / "bundle.json").read_text())
    training = meta["training"]
    fit, fit_cpu = float(training["fit_seconds"]), float(training["fit_cpu_seconds"])
    members: dict[str, Any] = {}
    for name in meta.get("members") or []:  # an ensemble: its members' fits, then the combiner's (fit_seconds above)
        member = json.loads((out / "members" / name / "bundle.json").read_text())
        members[name] = {"model": member["model"]["name"], "fit_seconds": member["training"]["fit_seconds"],
                         "fit_cpu_seconds": member["training"]["fit_cpu_seconds"]}
        fit += members[name]["fit_seconds"]
        fit_cpu += members[name]["fit_cpu_seconds"]
    feature = training.get("feature_seconds")  # None for an ensemble (its members' features are not timed apart)
    result = {
        "wall_seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "feature_seconds": feature,
        "fit_seconds": round(fit, 3),
        "fit_cpu_seconds": round(fit_cpu, 3),
        # the rest: threshold scoring of training and held-out clips, writing the bundle (and an ensemble's features
        # and its members' held-out scoring)
        "other_seconds": round(wall - (feature or 0.0) - fit, 3),
        "n_fit_clips": training.get("n_fit_clips") if not members else training.get("n_member_fit_clips"),
        "n_holdout_clips": training.get("n_holdout_clips") if not members else training.get("n_normalising_clips"),
        "holdout": config["holdout"],
        "n_vectors": training.get("n_vectors"),
    }
    if members:
        result["members"] = members
    print(f"  {label}: fit {wall:.1f} s (features {feature if feature is not None else '-'} s, fit {fit:.1f} s)",
          flush=True)
    return result


def score_system(label: str, bundle_dir: Path, wavs: Sequence[np.ndarray], ids: Sequence[str]) -> dict[str, Any]:
    """`score_wavs` over the test clips (already in memory): wall and CPU seconds, clips/s, real-time factor."""
    from models.bundle import load_bundle
    from models.features.base import CLIP_GROUP

    t0 = time.perf_counter()
    bundle = load_bundle(bundle_dir, device="cpu")
    load = time.perf_counter() - t0
    t1, cpu1 = time.perf_counter(), time.process_time()
    scores = bundle.score_wavs(wavs, ids if bundle.needs_id else None)
    wall, cpu = time.perf_counter() - t1, time.process_time() - cpu1
    if not np.all(np.isfinite(scores)):
        raise RuntimeError(f"{label}: non-finite scores")
    audio = sum(w.shape[0] for w in wavs) / SAMPLE_RATE
    print(f"  {label}: score {len(wavs)} clips in {wall:.2f} s ({len(wavs) / wall:.0f} clips/s)", flush=True)
    return {"clips": len(wavs), "batch_clips": CLIP_GROUP, "load_seconds": round(load, 3),
            "wall_seconds": round(wall, 3), "cpu_seconds": round(cpu, 3),
            "clips_per_second": round(len(wavs) / wall, 2), "realtime_factor": round(audio / wall, 1)}


# -- part 2: streaming cost per hop ------------------------------------------------------------------------------


class StreamAudio:
    """1 s chunks for S streams: stream i plays test clip i (mod the clips), looping."""

    def __init__(self, wavs: Sequence[np.ndarray], n_streams: int) -> None:
        self.wavs, self.n = wavs, n_streams
        self.hop = int(HOP_SECONDS * SAMPLE_RATE)

    def chunks(self, hop_index: int) -> list[np.ndarray]:
        out = []
        for i in range(self.n):
            x = self.wavs[i % len(self.wavs)]
            start = (hop_index * self.hop) % (x.shape[0] - self.hop + 1)
            out.append(x[start : start + self.hop])
        return out

    def window(self, i: int) -> np.ndarray:
        """Stream i's last 10 s window (a whole test clip)."""
        return self.wavs[i % len(self.wavs)][: int(WINDOW_SECONDS * SAMPLE_RATE)]


def _summary(hop_seconds: list[float], n_streams: int) -> dict[str, Any]:
    ms = np.asarray(hop_seconds) * 1e3
    per_stream = float(np.median(ms)) / n_streams
    return {"hops_measured": len(ms), "hop_ms_median": round(float(np.median(ms)), 3),
            "hop_ms_max": round(float(ms.max()), 3), "ms_per_stream_per_hop": round(per_stream, 4),
            "streams_per_thread": int(1000.0 / per_stream) if per_stream > 0 else None}


def feature_cost(cfg: Any, audio: StreamAudio, hops: int, warmup: int) -> dict[str, Any]:
    """Per-hop cost of one feature config for S streams, computed the way the stream scorer computes it:
    - a framed kind: its batch stream fed 1 s chunks;
    - a window-level kind with a frame front end (`frame_front()`): the front end's batch stream fed 1 s chunks, the
      last W frames kept per stream, and one `reduce` of every stream's window per hop;
    - a window-level kind without: one `compute` of every stream's 10 s window per hop (the samples kept).
    Window-level kinds also get `whole_window_*`: `compute` of every stream's 10 s window from its samples, what each
    hop would cost without a frame front end."""
    import torch

    if not cfg.window_level:
        return {"per_hop": f"batch_stream({audio.n}).accept() of 1 s chunks", **_framed_cost(cfg, audio, hops, warmup)}
    windows = [audio.window(i) for i in range(audio.n)]
    times: list[float] = []
    for h in range(warmup + hops):
        t0 = time.perf_counter()
        cfg.compute(windows, torch.device("cpu"))
        if h >= warmup:
            times.append(time.perf_counter() - t0)
    whole = _summary(times, audio.n)
    whole_keys = {"whole_window_hop_ms_median": whole["hop_ms_median"],
                  "whole_window_ms_per_stream_per_hop": whole["ms_per_stream_per_hop"]}
    front = cfg.frame_front()
    if front is None:
        return {"per_hop": f"compute() of {audio.n} {WINDOW_SECONDS:g} s windows", **whole, **whole_keys}
    return {"per_hop": f"frame front end {front.kind}: batch_stream({audio.n}).accept() of 1 s chunks, then "
                       f"reduce() of {audio.n} windows",
            **_framed_cost(front, audio, hops, warmup, reduce=cfg.reduce), **whole_keys}


def _framed_cost(cfg: Any, audio: StreamAudio, hops: int, warmup: int,
                 reduce: Callable[[list[Any]], Any] | None = None) -> dict[str, Any]:
    """A framed config's batch stream fed 1 s chunks; with `reduce`, the last W frames of each stream (a 10 s
    window) are kept and reduced every hop once the windows are full, as the stream scorer's `frames` mode does."""
    import torch

    stream = cfg.batch_stream(audio.n, "cpu")
    w = cfg.n_vectors(int(WINDOW_SECONDS * SAMPLE_RATE))
    rings: list[Any] = [None] * audio.n
    fill = 0 if reduce is None else int(np.ceil(WINDOW_SECONDS / HOP_SECONDS))
    accept_s: list[float] = []
    reduce_s: list[float] = []
    vectors = 0
    for h in range(fill + warmup + hops):
        chunks = audio.chunks(h)
        t0 = time.perf_counter()
        out = stream.accept(chunks)
        t1 = time.perf_counter()
        if reduce is not None:
            rings = [v[-w:] if r is None else torch.cat([r, v])[-w:] for r, v in zip(rings, out)]
            if all(r.shape[0] == w for r in rings):
                reduce(rings)
        t2 = time.perf_counter()
        if h >= fill + warmup:
            accept_s.append(t1 - t0)
            reduce_s.append(t2 - t1)
            vectors += sum(int(v.shape[0]) for v in out)
    total = _summary([a + r for a, r in zip(accept_s, reduce_s)], audio.n)
    extra = {} if reduce is None else {
        "frames_per_window": w,
        "accept_ms_per_stream_per_hop": round(float(np.median(accept_s)) * 1e3 / audio.n, 4),
        "reduce_ms_per_stream_per_hop": round(float(np.median(reduce_s)) * 1e3 / audio.n, 4)}
    return {"vectors_per_stream_per_hop": round(vectors / (hops * audio.n), 2), **extra, **total}


def system_cost(bundle_dir: Path, audio: StreamAudio, hops: int) -> dict[str, Any]:
    """Per-hop cost of a bundle's stream scorer (10 s window, 1 s hop) once every stream's first window is full."""
    from models.bundle import load_bundle

    bundle = load_bundle(bundle_dir, device="cpu")
    ids = [bundle.ids[0]] * audio.n if bundle.needs_id else None
    scorer = bundle.stream_scorer(audio.n, WINDOW_SECONDS, HOP_SECONDS, device="cpu", machine_ids=ids)
    h, fill_hops = 0, int(WINDOW_SECONDS / HOP_SECONDS) + 5
    started = [False] * audio.n
    while not all(started):  # until each stream has scored its first window
        if h >= fill_hops:
            raise RuntimeError(f"{bundle_dir}: no window after {h} hops of {HOP_SECONDS} s")
        for i, got in enumerate(scorer.accept(audio.chunks(h))):
            started[i] = started[i] or bool(got)
        h += 1
    scorer.accept(audio.chunks(h))  # one warm hop with full windows
    h += 1
    times, windows = [], 0
    for k in range(hops):
        chunks = audio.chunks(h + k)
        t0 = time.perf_counter()
        got = scorer.accept(chunks)
        times.append(time.perf_counter() - t0)
        windows += sum(len(g) for g in got)
    # an ensemble's scorer holds one stream scorer per group of members with equal feature configs
    modes = [s.mode for s in getattr(scorer, "scorers", [scorer])]
    return {"mode": ",".join(modes), "first_window_after_hops": h - 1,
            "windows_per_stream_per_hop": round(windows / (hops * audio.n), 2), **_summary(times, audio.n)}


def stream_part(bundles: dict[str, Path], wavs: Sequence[np.ndarray], args: argparse.Namespace) -> dict[str, Any]:
    """Feature-only costs (every registered audio kind's defaults, then each system's own settings) and per-system
    scorer costs, with `args.stream_threads` torch threads."""
    import torch

    from models.bundle import load_bundle
    from models.features import FEATURES

    before = torch.get_num_threads()
    torch.set_num_threads(args.stream_threads)
    audio = StreamAudio(wavs, args.streams)
    try:
        # feature config (JSON) -> (row label, config, systems using it); a system's own settings get their own row
        configs: dict[str, tuple[str, Any, list[str]]] = {}
        for kind, cls in sorted(FEATURES.items()):
            if cls.input_kind == "audio" and cls.__module__.startswith("models.features."):  # no test plug-ins
                cfg = cls()
                configs.setdefault(json.dumps(cfg.to_dict(), sort_keys=True), (kind, cfg, []))
        for label, path in bundles.items():
            b = load_bundle(path, device="cpu")
            for part in b.ordered_members() if b.members else [b]:
                key = json.dumps(part.feature.to_dict(), sort_keys=True)
                configs.setdefault(key, (f"{part.feature.kind} ({label})", part.feature, []))[2].append(label)
        features: dict[str, Any] = {}
        for row, cfg, used_by in configs.values():
            features[row] = {"config": cfg.to_dict(), "window_level": bool(cfg.window_level), "used_by": used_by,
                             **feature_cost(cfg, audio, args.hops, warmup=2)}
            print(f"  feature {row}: {features[row]['ms_per_stream_per_hop']:.3f} ms per stream per hop", flush=True)
        systems: dict[str, Any] = {}
        for label, path in bundles.items():
            systems[label] = system_cost(path, audio, args.hops)
            print(f"  system {label}: {systems[label]['ms_per_stream_per_hop']:.3f} ms per stream per hop "
                  f"({systems[label]['mode']} mode)", flush=True)
    finally:
        torch.set_num_threads(before)
    return {"streams": args.streams, "torch_threads": args.stream_threads, "window_seconds": WINDOW_SECONDS,
            "hop_seconds": HOP_SECONDS, "features": features, "systems": systems}


# -- part 3: the monitor -----------------------------------------------------------------------------------------


def monitor_system(label: str, bundle_dir: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`benchmarks.bench_monitor` on the bundle, in its own process (a fresh daemon per level, as it always runs)."""
    name = "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in label)
    cmd = [sys.executable, "-m", "benchmarks.bench_monitor", "--bundle", str(bundle_dir), "--levels",
           args.streams_levels, "--warmup", str(args.monitor_warmup), "--seconds", str(args.monitor_seconds),
           "--max-streams", str(args.max_streams), "--out", str(work), "--name", name]
    if args.no_search:
        cmd.append("--no-search")
    print(f"  {label}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    doc = json.loads((work / f"{name}.json").read_text())
    levels = doc["levels"]
    best = doc["max_real_time_streams"]
    if best is None:  # no search: the largest real-time level measured
        best = max((lv["streams"] for lv in levels if lv.get("real_time")), default=0)
    # without the search, a system is known to miss the target only when a level at or below it fell behind
    missed = not args.no_search or any(lv["streams"] <= TARGET_STREAMS and not lv["real_time"] for lv in levels)
    meets = True if best >= TARGET_STREAMS else False if missed else None
    return {"max_real_time_streams": best, "searched": not args.no_search, "meets_target": meets,
            "memory_per_stream_mib": doc["memory_per_stream_mib"],
            "seconds": round(time.perf_counter() - t0, 1), "settings": doc["settings"],
            "levels": [{k: lv[k] for k in ("streams", "real_time", "lag_p50_s", "lag_p99_s", "tick_latency_p50_s",
                                           "tick_latency_p99_s", "windows_scored", "windows_expected",
                                           "dropped_blocks", "peak_rss_mib")} for lv in levels]}


# -- the run -----------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path, load_at_start: tuple[float, float, float]) -> dict[str, Any]:
    from offline.datasets.index import load_clips

    systems = [system_config(entry, args.clips, args.holdout) for entry in args.models.split(",") if entry]
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    synthesize(work / "data", args.clips, args.workers)
    clips = load_clips(work / "data", machine=MACHINE)
    train = [c for c in clips if c.split == "train"]
    test = [c for c in clips if c.split == "test"]
    timing["synth_seconds"] = round(time.perf_counter() - t0, 1)

    print(f"part 1: fit on {len(train)} clips, score {len(test)} clips", flush=True)
    t1 = time.perf_counter()
    wavs = load_audio(test)
    test_ids = [c.id for c in test]
    bundles: dict[str, Path] = {}
    fit: dict[str, Any] = {}
    score: dict[str, Any] = {}
    for label, config in systems:
        bundles[label] = work / "bundles" / label
        fit[label] = fit_system(label, config, train, bundles[label])
        score[label] = score_system(label, bundles[label], wavs, test_ids)
    timing["fit_score_seconds"] = round(time.perf_counter() - t1, 1)

    print(f"part 2: streaming cost per hop, {args.streams} streams, {args.stream_threads} torch thread(s)", flush=True)
    t2 = time.perf_counter()
    streaming = stream_part(bundles, wavs, args)
    timing["streaming_seconds"] = round(time.perf_counter() - t2, 1)
    del wavs

    monitor: dict[str, Any] | None = None
    if not args.no_monitor:
        print(f"part 3: the monitor, levels {args.streams_levels}{'' if args.no_search else ' + search'}", flush=True)
        t3 = time.perf_counter()
        (work / "monitor").mkdir()
        monitor = {label: monitor_system(label, path, work / "monitor", args) for label, path in bundles.items()}
        timing["monitor_seconds"] = round(time.perf_counter() - t3, 1)
    timing["total_seconds"] = round(time.perf_counter() - t0, 1)
    return {
        "settings": {"clips": args.clips, "clip_seconds": CLIP_SECONDS, "sample_rate": SAMPLE_RATE,
                     "machine": MACHINE, "ids": 1, "snr_db": 0, "seed": 0, "device": "cpu",
                     "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg()},
        "configs": {label: config for label, config in systems},
        "fit": fit,
        "score": score,
        "streaming": streaming,
        "monitor": monitor,
        "targets": {"max_real_time_streams": f">= {TARGET_STREAMS} for every classical system"},
        "timing": timing,
    }


def print_table(result: dict[str, Any]) -> None:
    fit, score, streaming, monitor = result["fit"], result["score"], result["streaming"], result["monitor"]
    print(f"\n{'system':16s} {'fit s':>8s} {'(feat':>7s} {'+ fit)':>7s} {'score clips/s':>14s} "
          f"{'ms/stream/hop':>14s} {'streams/thread':>15s} {'monitor RT streams':>19s}")
    for label in fit:
        f, s, st = fit[label], score[label], streaming["systems"][label]
        feat = "-" if f["feature_seconds"] is None else f"{f['feature_seconds']:.1f}"
        rt = "-" if monitor is None else str(monitor[label]["max_real_time_streams"])
        print(f"{label:16s} {f['wall_seconds']:8.1f} {feat:>7s} {f['fit_seconds']:7.1f} {s['clips_per_second']:14.1f} "
              f"{st['ms_per_stream_per_hop']:14.3f} {st['streams_per_thread'] or '-':>15} {rt:>19s}")
    print(f"\n{'feature':32s} {'ms/stream/hop':>14s}  {'used by':24s} per hop")
    for row, f in streaming["features"].items():
        print(f"{row:32s} {f['ms_per_stream_per_hop']:14.3f}  {','.join(f['used_by']) or '-':24s} {f['per_hop']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=DEFAULT_MODELS,
                   help="comma-separated MODEL (its shipped config) or MODEL:ae_clean / MODEL:ddae / MODEL:none")
    p.add_argument("--clips", type=int, default=1000, help="training clips, and as many test clips (10 s each)")
    p.add_argument("--holdout", type=float, help="holdout share for every system (default: each config's, raised "
                                                   "to keep at least 3 held-out clips)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes rendering the clips")
    p.add_argument("--streams", type=int, default=100, help="streams in the streaming-cost part")
    p.add_argument("--hops", type=int, default=10, help="measured 1 s hops per streaming-cost figure")
    p.add_argument("--stream-threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="torch threads in the streaming-cost part (default: the monitor's, cores - 1)")
    p.add_argument("--no-monitor", action="store_true", help="skip the monitor part")
    p.add_argument("--streams-levels", default="100,500", help="monitor stream counts always measured")
    p.add_argument("--no-search", action="store_true", help="monitor: only the given levels, no search")
    p.add_argument("--max-streams", type=int, default=1600, help="monitor: the search's upper bound")
    p.add_argument("--monitor-warmup", type=float, default=5.0, help="monitor: seconds before measuring")
    p.add_argument("--monitor-seconds", type=float, default=20.0, help="monitor: measured seconds per level")
    p.add_argument("--name", default="classical_speed_cpu", help="result name")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from models.runtime import keep_freed_memory

    keep_freed_memory()  # as the CLIs do
    load_at_start = os.getloadavg()
    print(f"load average {load_at_start} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_classical_") as tmp:
        result = run(args, Path(tmp), load_at_start)
    path = write_result(args.name, result, args.out)
    print_table(result)
    print(f"\ntiming {result['timing']}\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
