"""Log-mel throughput of models.features vs librosa.feature.melspectrogram on the same clips, in one run.

Two figures the foundation issue asks for:
- single 10 s clips on ONE core: torch, OpenBLAS and OpenMP pools all limited to one thread (threadpoolctl), ours
  and librosa alternating clip by clip so that machine noise hits both alike. Each round gives a ratio of median
  times; the figure is the median over rounds, with the lowest and highest round beside it, because on a shared VM
  one round can land in a noisy stretch (single runs of 200 calls each varied from 3.1x to 3.5x);
- a batch of 256 streams fed 1 s chunks through one LogMelBatchStream (the monitor's hot path) on all cores:
  aggregate real-time factor, plus librosa on the same 256 clips for the ratio.

Usage: python -m benchmarks.bench_features [--clips 20] [--rounds 9] [--streams 256] [--seconds 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _clips(n: int, seconds: float, sr: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return [
        (0.2 * np.sin(2 * np.pi * (50 + 5 * i) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
        for i in range(n)
    ]


def _median_per_call(fns: dict[str, "callable"], clips: list[np.ndarray], repeats: int) -> dict[str, float]:
    """Median seconds per clip of each function, calls interleaved (a, b, a, b, ...)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for x in clips:
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=10, help="passes over the clips per round")
    ap.add_argument("--rounds", type=int, default=9, help="single-clip rounds; the median ratio is reported")
    args = ap.parse_args(argv)

    import librosa
    import torch
    from threadpoolctl import threadpool_limits

    from benchmarks.common import write_result
    from models.features import LogMelConfig
    from models.runtime import keep_freed_memory

    keep_freed_memory()  # as the CLIs do

    sr = 16000
    cfg = LogMelConfig(sample_rate=sr, n_fft=1024, hop_length=512, n_mels=128)
    mel_kwargs = dict(sr=sr, n_fft=1024, hop_length=512, n_mels=128, power=2.0, center=False)

    def librosa_db(x: np.ndarray) -> np.ndarray:
        return 10.0 * np.log10(librosa.feature.melspectrogram(y=x, **mel_kwargs) + np.finfo(float).eps)

    clips = _clips(args.clips, args.seconds, sr)
    audio_s = args.clips * args.seconds
    all_threads = torch.get_num_threads()

    # --- single clips, one core ---
    torch.set_num_threads(1)
    with threadpool_limits(1):
        for x in clips[:2]:  # warm up caches (mel matrix, FFT plans)
            cfg.extract(x)
            librosa_db(x)
        rounds = [
            _median_per_call({"ours": cfg.extract, "librosa": librosa_db}, clips, args.repeats)
            for _ in range(args.rounds)
        ]
    ratios = [r["librosa"] / r["ours"] for r in rounds]
    mid = rounds[int(np.argsort(ratios)[len(ratios) // 2])]  # the median round (an odd count has one)
    ours_single, librosa_single = mid["ours"] * len(clips), mid["librosa"] * len(clips)

    # --- 256 streams, 1 s chunks, all cores ---
    torch.set_num_threads(all_threads)
    streams = _clips(args.streams, args.seconds, sr, seed=1)
    chunk = sr

    def run_batch() -> None:
        bs = cfg.batch_stream(len(streams))
        for start in range(0, streams[0].size, chunk):
            bs.accept([s[start : start + chunk] for s in streams])

    run_batch()
    ours_batch = _best_of(run_batch, args.repeats)
    librosa_batch = _best_of(lambda: [librosa_db(x) for x in streams], 1)
    batch_audio_s = args.streams * args.seconds

    result = {
        "config": cfg.to_dict(),
        "single_clip_one_core": {
            "clips": args.clips,
            "clip_seconds": args.seconds,
            "ours_seconds": ours_single,
            "rounds": args.rounds,
            "calls_per_round": args.clips * args.repeats,
            "statistic": "round with the median ratio; per round: median per clip x clips, calls interleaved",
            "librosa_seconds": librosa_single,
            "ours_realtime_factor": audio_s / ours_single,
            "librosa_realtime_factor": audio_s / librosa_single,
            "speedup_vs_librosa": librosa_single / ours_single,
            "speedup_min_round": min(ratios),
            "speedup_max_round": max(ratios),
            "speedup_per_round": ratios,
        },
        "batch_streams_all_cores": {
            "streams": args.streams,
            "chunk_seconds": chunk / sr,
            "torch_threads": all_threads,
            "ours_seconds": ours_batch,
            "ours_aggregate_realtime_factor": batch_audio_s / ours_batch,
            "librosa_seconds_sequential": librosa_batch,
            "speedup_vs_librosa": librosa_batch / ours_batch,
        },
    }
    path = write_result("features_cpu", result)
    s, b = result["single_clip_one_core"], result["batch_streams_all_cores"]
    print(
        f"single clip, 1 core: {s['speedup_vs_librosa']:.2f}x librosa (rounds {s['speedup_min_round']:.2f}-"
        f"{s['speedup_max_round']:.2f}; {s['ours_realtime_factor']:.0f}x real time)"
    )
    print(f"{b['streams']} streams: {b['ours_aggregate_realtime_factor']:.0f}x real time aggregate "
          f"({b['speedup_vs_librosa']:.2f}x librosa)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
