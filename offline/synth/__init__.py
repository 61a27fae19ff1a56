"""`asd-offline synth`: a synthetic machine-sound dataset in DCASE 2020 Task 2 layout, with calibrated difficulty.

Why synthetic: the real data sets are not reachable from CI, and tests and benchmarks need data whose anomalies
are known. The generator is meant to be hard in the ways real data is hard, not merely to exist.

Layout: `OUT/<machine>/train/normal_id_XX_NNNNNNNN.wav` and `OUT/<machine>/test/{normal,anomaly}_id_XX_NNNNNNNN.wav`,
16-bit PCM mono, ids 00, 02, 04, ... (the DCASE 2020 development-set numbering), file numbers from 0 per
(split, label, id). Clip counts are per id; test clips are half anomalous. `OUT/synth.json` records the settings,
the fault strength table and the fault kind of every anomalous clip.

Sound model (`models.synth.voices`): per type and id a *character* (shaft speed and harmonic amplitudes, speed jitter, flow-
noise colour and pulsation, stroke period/duration/click resonances, gear ratio and mesh, belt ticks, the
factory background), per clip a *realisation* (operating point +-1-2 % speed, +-1 dB levels, new noise).
- fan, pump: shaft harmonics with blade/vane-pass harmonics, slow frequency-modulated speed jitter (continuous
  phase), band-limited flow noise, pulsation (flow noise amplitude-modulated at the vane/blade rate);
- ToyCar, ToyConveyor: a small DC motor's whine with commutator harmonics, gear mesh partials with sidebands,
  tyre/roller noise; ToyConveyor adds belt-joint ticks;
- valve: open/close cycles with timing jitter: clicks ringing two resonances and a body thud, flow noise while open;
- slider: strokes out and back: ramped friction noise, a motor whine whose pitch follows the speed, end-stop clicks;
- background: another machine's hum + mains hum, coloured broadband noise with a slow level wander, occasional
  distant impacts; mixed at `snr_db` (signal = the normal machine, noise = the background).
Faults per type are in `ANOMALIES`; their strengths in `STRENGTH` (the calibration table, defined in `voices`).

Calibration:
- Loudness carries no information: every clip is normalised to a target RMS drawn uniformly in -26 +- 3 dBFS,
  and test normal clip k and test anomaly clip k of an id share the target, so the two classes have the same
  level distribution by construction. The clip RMS as an anomaly score gives AUC ~0.5 on every type (tested).
- Faults are detectable but not trivially: `benchmarks/synth_difficulty.py` measures, per type, the AUC (mean of
  per-id AUCs) of the DCASE AE baseline (trained per type for only 10 epochs) and of two cheap per-id proxies on
  128-bin log-mel frames (PCA reconstruction error, GMM negative log-likelihood), on 3 ids x (30 train + 40 test)
  10 s clips at 0 dB SNR, seed 0. The `STRENGTH` table was tuned so that the AE lands between ~0.65 and ~0.9:

      type          RMS    PCA    GMM    DCASE AE
      fan          0.50   0.54   0.72   0.74
      pump         0.50   0.72   0.85   0.78
      slider       0.50   0.70   0.67   0.90
      valve        0.50   0.60   0.77   0.85
      ToyCar       0.50   0.55   0.73   0.80
      ToyConveyor  0.50   0.47   0.54   0.65

  With the baseline's full 100 epochs (the committed JSON): fan 0.78, pump 0.79, slider 0.97, valve 0.89,
  ToyCar 0.80, ToyConveyor 0.73.
  Per fault kind the spread is wider (bearing on ToyConveyor ~0.56, rubbing on slider ~0.98); the full table is
  in benchmarks/results/synth_difficulty.json. Re-run the benchmark after changing the sound model or `STRENGTH`.
- Speed: about 25 ms of CPU per 10 s clip at 16 kHz (numpy/scipy, block-vectorised, one core).

Determinism: a sample depends only on (seed, type, id, clip) and the settings; `MachineVoice.generate` gives the
same samples however a stream is cut into blocks; the same seed gives byte-identical files for any `--workers`
(on one platform: the float32 sine of another CPU's SIMD code may differ in the last bit).
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path
from typing import Any

from models.synth.catalog import ALL_MACHINES, ANOMALIES, MACHINES

# scipy.signal takes ~0.7 s to import; `asd-offline` builds every subcommand's parser, so the generator itself is
# imported on first use.
_LAZY = {
    "LEVEL": "models.synth.voices",
    "STRENGTH": "models.synth.voices",
    "MachineVoice": "models.synth.voices",
    "machine_ids": "offline.synth.dataset",
    "plan": "offline.synth.dataset",
    "resolve_machines": "offline.synth.dataset",
    "synthesize": "offline.synth.dataset",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ALL_MACHINES",
    "ANOMALIES",
    "LEVEL",
    "MACHINES",
    "STRENGTH",
    "MachineVoice",
    "configure_parser",
    "machine_ids",
    "plan",
    "resolve_machines",
    "run",
    "synthesize",
]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, metavar="OUT", help="dataset root to write (DCASE 2020 layout)")
    parser.add_argument("--machines", default=",".join(ALL_MACHINES),
                        help=f"comma-separated machine types (default: all: {','.join(ALL_MACHINES)})")
    parser.add_argument("--ids", type=int, default=2, help="machine ids per type, numbered 00, 02, 04, ... (default 2)")
    parser.add_argument("--train-clips", type=int, default=100, help="normal training clips per id (default 100)")
    parser.add_argument("--test-clips", type=int, default=40,
                        help="test clips per id, half of them anomalous (default 40)")
    parser.add_argument("--snr", type=float, default=0.0, help="machine-to-background ratio in dB (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes identical files")
    parser.add_argument("--duration", type=float, default=10.0, help="clip length in seconds (default 10)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="sample rate in Hz (default 16000)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering clips (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace wav files already in OUT/<machine>")
    parser.add_argument("--pairs", action="store_true",
                        help="write clean/noisy pairs for the noise models instead, in the seed's layout "
                             "OUT/{train,val}/{clean,noisy}/<machine>_id_XX/ (--train-clips and --test-clips "
                             "recordings per id, each at every --pair-snrs)")
    parser.add_argument("--pair-snrs", default="6,0,-6", metavar="DB,DB,...",
                        help="SNRs of the noisy side of each pair, in dB (default 6,0,-6, MIMII's)")


def run(args: argparse.Namespace) -> int:
    from offline.synth.dataset import plan, resolve_machines, synthesize

    machines = [m for m in args.machines.split(",") if m.strip()]
    t0 = time.perf_counter()
    if args.pairs:
        from offline.synth.dataset import synthesize_pairs

        try:
            snrs = [float(s) for s in args.pair_snrs.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--pair-snrs: expected comma-separated dB values, got {args.pair_snrs!r}") from None
        out = synthesize_pairs(args.out, machines, ids=args.ids, train_clips=args.train_clips,
                               val_clips=args.test_clips, snrs=snrs, seed=args.seed, duration=args.duration,
                               sample_rate=args.sample_rate, overwrite=args.overwrite)
        n = (args.train_clips + args.test_clips) * args.ids * len(machines) * len(snrs)
        print(f"wrote {n} clean/noisy pairs to {out} in {time.perf_counter() - t0:.1f} s")
        return 0
    out = synthesize(args.out, machines, ids=args.ids, train_clips=args.train_clips, test_clips=args.test_clips,
                     snr_db=args.snr, seed=args.seed, duration=args.duration, sample_rate=args.sample_rate,
                     workers=args.workers, overwrite=args.overwrite)
    n = len(plan(resolve_machines(machines), args.ids, args.train_clips, args.test_clips))
    print(f"wrote {n} clips ({n * args.duration:.0f} s of audio) to {out} in {time.perf_counter() - t0:.1f} s")
    return 0
