"""How hard is the synthetic data set? AUC per machine type for three scorers that know nothing about the faults.

- `rms`: the clip RMS level as the anomaly score; must stay near 0.5 (loudness must not give faults away);
- `pca`: a per-id PCA (90 % variance) on standardised 128-bin log-mel frames, score = mean frame reconstruction
  error; a cheap stand-in for the DCASE autoencoder;
- `gmm`: a per-id 8-component diagonal Gaussian mixture on the same frames, score = mean negative log-likelihood;
- `dcase_ae`: the DCASE 2020 baseline autoencoder (per type, all ids, as the baseline trains), when registered,
  trained for only `--ae-epochs` epochs (the baseline uses 100) to keep the benchmark short.

Clips are rendered in memory with the dataset writer's own `render_clip` (int16 included), so the numbers are the
numbers of `asd-offline synth` output. Per type the AUC is the mean of per-id AUCs (the DCASE convention); per
fault kind, the AUC of that kind's clips against all normal test clips of the id. Also records generation speed.

    python -m benchmarks.synth_difficulty            # writes benchmarks/results/synth_difficulty.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


from benchmarks.common import write_result
from offline.synth import ANOMALIES, STRENGTH
from offline.synth.dataset import ClipJob, RenderSettings, plan, render_clip, resolve_machines

log = logging.getLogger("synth_difficulty")


def _auc(labels: list[int], scores: list[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def pca_scorer(train: list[np.ndarray], test: list[np.ndarray], variance: float = 0.9) -> np.ndarray:
    """Mean squared reconstruction error per clip of a PCA keeping `variance` of the standardised frames."""
    X = np.concatenate(train)
    mean, std = X.mean(0), X.std(0) + 1e-6
    _, s, vt = np.linalg.svd((X - mean) / std, full_matrices=False)
    k = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), variance)) + 1
    basis = vt[:k]
    scores = []
    for clip in test:
        z = (clip - mean) / std
        residual = z - (z @ basis.T) @ basis
        scores.append(float(np.mean(residual**2)))
    return np.array(scores)


def gmm_scorer(train: list[np.ndarray], test: list[np.ndarray], seed: int) -> np.ndarray:
    """Mean negative log-likelihood per clip under a diagonal Gaussian mixture of the standardised frames."""
    from sklearn.mixture import GaussianMixture

    X = np.concatenate(train)
    mean, std = X.mean(0), X.std(0) + 1e-6
    gmm = GaussianMixture(8, covariance_type="diag", random_state=seed, reg_covar=1e-3).fit((X - mean) / std)
    return np.array([-float(np.mean(gmm.score_samples((c - mean) / std))) for c in test])


def render_all(jobs: list[ClipJob], settings: RenderSettings) -> tuple[list[np.ndarray], float]:
    """Render clips in memory; returns float waveforms and the CPU seconds spent per clip."""
    t0 = time.process_time()
    wavs = [render_clip(job, settings).astype(np.float32) / 32768.0 for job in jobs]
    return wavs, (time.process_time() - t0) / max(len(jobs), 1)


def evaluate_type(machine: str, args: argparse.Namespace) -> dict[str, Any]:
    from models.features import LogMelConfig

    settings = RenderSettings(args.seed, args.snr, args.duration, args.sample_rate, {})
    jobs = plan([machine], args.ids, args.train_clips, args.test_clips)
    wavs, cpu_per_clip = render_all(jobs, settings)
    frames_cfg = LogMelConfig(n_mels=128, n_fft=1024, hop_length=512)
    feats = [f.numpy().astype(np.float64) for f in frames_cfg.extract_batch(wavs)]
    by_id: dict[int, dict[str, list[int]]] = defaultdict(lambda: {"train": [], "test": []})
    for i, job in enumerate(jobs):
        by_id[job.machine_id][job.split].append(i)

    per_id: dict[str, dict[str, float]] = {}
    kind_scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    ae_scores = _dcase_ae_scores(jobs, wavs, by_id, args) if args.ae_epochs > 0 else None
    for mid, split in sorted(by_id.items()):
        test = split["test"]
        labels = [int(jobs[i].label == "anomaly") for i in test]
        scores = {
            "rms": np.array([float(np.sqrt(np.mean(wavs[i] ** 2))) for i in test]),
            "pca": pca_scorer([feats[i] for i in split["train"]], [feats[i] for i in test]),
            "gmm": gmm_scorer([feats[i] for i in split["train"]], [feats[i] for i in test], args.seed),
        }
        if ae_scores is not None:
            scores["dcase_ae"] = np.array([ae_scores[i] for i in test])
        per_id[f"id_{mid:02d}"] = {name: _auc(labels, list(s)) for name, s in scores.items()}
        normal = [k for k, i in enumerate(test) if jobs[i].label == "normal"]
        for kind in ANOMALIES[machine]:
            mine = [k for k, i in enumerate(test) if jobs[i].anomaly == kind]
            if mine:
                for name, s in scores.items():
                    y = [0] * len(normal) + [1] * len(mine)
                    kind_scores[kind][name].append(_auc(y, [s[k] for k in normal] + [s[k] for k in mine]))
    names = list(next(iter(per_id.values())))
    return {
        "auc": {name: float(np.mean([v[name] for v in per_id.values()])) for name in names},
        "ids": per_id,
        "kinds": {kind: {n: float(np.mean(v)) for n, v in d.items()} for kind, d in kind_scores.items()},
        "strength": STRENGTH[machine],
        "cpu_seconds_per_clip": cpu_per_clip,
    }


def _dcase_ae_scores(jobs: list[ClipJob], wavs: list[np.ndarray], by_id: dict, args: argparse.Namespace
                     ) -> dict[int, float] | None:
    """Scores of the registered DCASE AE trained on all ids' training clips of the type, or None if absent."""
    try:
        from models.detectors import REGISTRY
        from models.features import LogMelConfig
    except ImportError:  # pragma: no cover - depends on what the checkout holds
        return None
    if "dcase_ae" not in REGISTRY:
        return None
    cls = REGISTRY["dcase_ae"]
    cfg = LogMelConfig.from_dict(cls.default_feature)
    feats = cfg.extract_batch(wavs)
    train = [i for split in by_id.values() for i in split["train"]]
    test = [i for split in by_id.values() for i in split["test"]]
    det = cls(epochs=args.ae_epochs, progress=False, seed=args.seed, device="cpu").fit([feats[i] for i in train])
    return dict(zip(test, det.score([feats[i] for i in test]).tolist()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--machines", default=",".join(ANOMALIES))
    p.add_argument("--ids", type=int, default=3)
    p.add_argument("--train-clips", type=int, default=30, help="per id")
    p.add_argument("--test-clips", type=int, default=40, help="per id, half anomalous")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--snr", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ae-epochs", type=int, default=10, help="0 skips the DCASE AE")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results: dict[str, Any] = {}
    for machine in resolve_machines(args.machines.split(",")):
        t0 = time.perf_counter()
        results[machine] = evaluate_type(machine, args)
        log.info("%s: %s (%.0f s)", machine, {k: round(v, 3) for k, v in results[machine]["auc"].items()},
                 time.perf_counter() - t0)
    cpu = [r["cpu_seconds_per_clip"] for r in results.values()]
    doc = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "notes": "AUC = mean over ids of per-id AUC; dcase_ae trained per type for ae_epochs epochs only "
                 "(the baseline uses 100), so its figures are a lower bound on what the baseline reaches.",
        "generation_cpu_seconds_per_clip": {"mean": float(np.mean(cpu)), "max": float(np.max(cpu)),
                                            "clip_seconds": args.duration},
        "auc": {m: r["auc"] for m, r in results.items()},
        "machines": results,
    }
    path = write_result("synth_difficulty", doc, args.out)
    print(f"wrote {path}")
    for m, r in results.items():
        print(f"{m:12s} " + "  ".join(f"{k}={v:.3f}" for k, v in r["auc"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
