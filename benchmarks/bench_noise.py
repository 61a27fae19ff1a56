"""The noise models measured: accuracy / MSE on synthetic validation pairs, cost per second of audio, and whether
denoising before a detector raises its AUC (synthetic data at 6, 0 and -6 dB; real fan clips with extra noise).

Everything below was fixed before any result was looked at; nothing is chosen on anomaly labels.

- **Noise models** (`models`): `asd-offline synth --pairs` data (seed 1: other machines and factories than the
  detector data below), the six synthetic types x 2 ids, `--train-recordings` (12) and `--val-recordings` (4) 10 s
  recordings per id, each at 6, 0 and -6 dB. `lstm_classifier` and `lstm_denoiser` are trained with their shipped
  configs (`configs/lstm_*.yaml`) and evaluated on the validation pairs by `asd-offline evaluate`'s noise path.
- **Cost** (`cost`, on the bundles a `models` run kept in `--work`): CPU seconds per second of audio for the classifier's window scores (`Bundle.score_wavs` on
  64 clips of 10 s) and for streaming the denoiser stage (64 streams fed 1 s hops through `stream_transform`, the
  monitor's path), one thread and all threads. Needs an idle machine to mean anything.
- **Denoising before the AE, synthetic** (`synthetic`): per SNR (6, 0, -6 dB) a DCASE-layout dataset (`asd-offline
  synth`, seed 0, fan / pump / slider / valve, 1 id, `--train-clips` 30 normal training clips, 20 test clips);
  `dcase_ae` with its shipped config but on the denoiser's 80-band log-mel (context 5), with and without the
  `lstm_denoiser` stage (the denoiser from `models`), and the shipped 128-band AE as the reference; `--epochs`
  (30) for all three. AUC per type from `offline.evaluate`, mean over types. `--detectors` (default `dcase_ae`)
  runs the same three variants of other detectors that read log-mel frames (e.g. `embed_knn`, the few-normals
  segment embeddings: its shipped config, its own context, on the denoiser's log-mel or as shipped); `--epochs`
  applies to iterative ones only.
- **Denoising before the AE, real** (`real`): MIMII fan id_00 (the 20 normal + 20 anomalous clips of one set),
  each clip mixed with the synthetic factory background at 0 dB (its own noise stretch per clip); the same
  seeded splits as `bench_realdata` (10 normals to train, `--splits` 10). A denoiser for fan is trained the way a
  user would (`asd-offline train --data RECORDINGS --noise` path: clean recordings + noise at 6, 0, -6 dB) on the
  *other* real fan normals in `../shared/data/real` (not id_00 of that set), with the generator's background from
  other factories than the test mixing uses. Each detector (80-band, as above) with and without it; AUC mean +-
  std over splits, with `rms_level` and `chance`.

`synthetic` without `models` trains only the denoiser of `models` (the classifier is not needed).

Usage: python -m benchmarks.bench_noise [--parts models,synthetic,real] [--detectors dcase_ae] [--epochs 30]
       [--work DIR] -> benchmarks/results/noise.json
       python -m benchmarks.bench_noise --parts cost --work DIR --name noise_cost
       python -m benchmarks.bench_noise --parts synthetic,real --detectors embed_knn --name noise_embed_knn
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_realdata import DEFAULT_REAL, FOLDER, fan_id00_manifest, spread
from benchmarks.common import CONFIGS, write_result

log = logging.getLogger("bench_noise")

SNRS = (6.0, 0.0, -6.0)
DETECTOR_TYPES = ("fan", "pump", "slider", "valve")
NOISE_MODELS = ("lstm_classifier", "lstm_denoiser")
TEST_NOISE_KEY = 7_000  # factories of the real-data test mixing; the denoiser's training noise uses other keys


def _config(name: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())


def detector_configs(model: str, denoiser: Path | None, epochs: int) -> dict[str, dict[str, Any]]:
    """A detector's variants compared: on the denoiser's log-mel (the detector's own context) with and without the
    stage, and as shipped."""
    from models.detectors import get_detector

    base = _config(model)
    names = get_detector(model).param_names()
    extra = {"epochs": epochs, "device": "cpu", "progress": False}
    base["params"] = {**base.get("params", {}), **{k: v for k, v in extra.items() if k in names}}
    noise_feature = {k: v for k, v in _config("lstm_denoiser")["feature"].items() if k != "context"}
    mel80 = {**base, "feature": {**base.get("feature", {}), **noise_feature}}
    out = {f"{model}_128": base, f"{model}_80": mel80}
    if denoiser is not None:
        out[f"{model}_80_denoised"] = {**mel80, "stages": [{"name": "lstm_denoiser",
                                                            "params": {"bundle": str(denoiser)}}]}
    return out


def all_configs(detectors: list[str], denoiser: Path | None, epochs: int) -> dict[str, dict[str, Any]]:
    """Every detector's variants, labelled `<detector>_128`, `_80` and `_80_denoised`."""
    return {k: v for model in detectors for k, v in detector_configs(model, denoiser, epochs).items()}


# -- the noise models -----------------------------------------------------------------------------------------------


def part_models(work: Path, args: argparse.Namespace,
                models: tuple[str, ...] = NOISE_MODELS) -> tuple[dict[str, Any], Path]:
    """Train and validate the noise models on synthetic pairs; their figures and the denoiser's bundle."""
    from models.synth.catalog import ALL_MACHINES
    from offline.cli import main as cli

    pairs = work / "pairs"
    t0 = time.perf_counter()
    cli(["synth", str(pairs), "--pairs", "--machines", ",".join(ALL_MACHINES), "--ids", "2", "--train-clips",
         str(args.train_recordings), "--test-clips", str(args.val_recordings), "--seed", "1"])
    out: dict[str, Any] = {"pairs_seconds": round(time.perf_counter() - t0, 1)}
    paths = {}
    for model in models:
        paths[model] = work / model
        t0 = time.perf_counter()
        cli(["train", "--data", str(pairs), "--model", model, "--config", str(CONFIGS / f"{model}.yaml"),
             "--out", str(paths[model]), "--no-progress", "--device", "cpu"])
        out[model] = {"train_seconds": round(time.perf_counter() - t0, 1)}
    from models.bundle import load_bundle
    from offline.evaluate import _load_bundles
    from offline.evaluate_noise import evaluate_noise

    doc = evaluate_noise(pairs, _load_bundles([str(p) for p in paths.values()], "cpu"), work / "noise_report")
    for model, path in paths.items():
        b = load_bundle(path, device="cpu")
        t = b.meta["training"]
        out[model].update(params=b.meta["model"]["params"], n_pairs=t["n_pairs"], n_val_pairs=t["n_val_pairs"],
                          fit_seconds=t["fit_seconds"], seconds_per_epoch=round(t["fit_seconds"] / t["epochs_run"], 2),
                          final_loss=t["final_loss"], validation=doc["noise_models"][model])
    return out, paths["lstm_denoiser"]


def cost(classifier: Path, denoiser: Path, n: int = 64, seconds: float = 10.0) -> dict[str, Any]:
    """CPU seconds per second of audio: the classifier's window scores, and the denoiser stage streamed."""
    import torch

    from models.bundle import load_bundle
    from models.stages import get_stage
    from models.synth.voices import MachineVoice

    clf = load_bundle(classifier, device="cpu")
    sr = clf.sample_rate
    wavs = [MachineVoice("fan", 0, sr, 3, 0.0, instance=k).generate(int(seconds * sr)) for k in range(n)]
    feats = clf.feature.extract_batch(wavs)
    stage = get_stage("lstm_denoiser")(bundle=str(denoiser)).fit(feats[:1])
    hop = int(round(sr / clf.feature.hop_samples))
    out: dict[str, Any] = {"streams": n, "audio_seconds": n * seconds}
    threads = torch.get_num_threads()
    for label, k in (("1_thread", 1), (f"{threads}_threads", threads)):
        torch.set_num_threads(k)
        t0 = time.perf_counter()
        clf.score_wavs(wavs)
        t_clf = time.perf_counter() - t0
        t0 = time.perf_counter()
        states: list[Any] = [None] * n
        for a in range(0, feats[0].shape[0], hop):
            _, states = stage.stream_transform([f[a : a + hop] for f in feats], states)
        t_den = time.perf_counter() - t0
        out[label] = {"classifier_incl_features_s_per_audio_s": t_clf / (n * seconds),
                      "denoiser_stage_streamed_s_per_audio_s": t_den / (n * seconds)}
    torch.set_num_threads(threads)
    return out


# -- denoising before the AE ----------------------------------------------------------------------------------------


def _train_and_evaluate(data: Path, machine_types: tuple[str, ...], configs: dict[str, dict[str, Any]], work: Path,
                        chance_seed: int = 0) -> dict[str, Any]:
    from models.training.recipe import train_bundle
    from offline.datasets.index import load_clips
    from offline.evaluate import evaluate

    clips = load_clips(data)
    bundles, seconds = [], {}
    for label, config in configs.items():
        for m in machine_types:
            t0 = time.perf_counter()
            path = train_bundle(clips, config["model"], m, work / f"{label}_{m}", config)
            seconds[f"{label}/{m}"] = round(time.perf_counter() - t0, 1)
            bundles.append((label, path))
    res = evaluate(data, bundles, work / "report", device="cpu", chance_seed=chance_seed, plots=False)
    return {"results": res["models"], "train_seconds": seconds}


def part_synthetic(work: Path, denoiser: Path, args: argparse.Namespace) -> dict[str, Any]:
    from offline.cli import main as cli

    out: dict[str, Any] = {}
    for snr in SNRS:
        data = work / f"synth_{snr:g}dB"
        cli(["synth", str(data), "--machines", ",".join(DETECTOR_TYPES), "--ids", "1", "--train-clips",
             str(args.train_clips), "--test-clips", "20", "--snr", str(snr), "--seed", "0"])
        run = _train_and_evaluate(data, DETECTOR_TYPES, all_configs(args.detectors, denoiser, args.epochs),
                                  work / f"runs_{snr:g}")
        out[f"{snr:g}"] = {label: {"mean_auc": r["mean"]["auc"],
                                   "auc": {m: r["machines"][m]["auc"] for m in DETECTOR_TYPES}}
                           for label, r in run["results"].items()}
        log.info("%g dB: %s", snr, {k: round(v["mean_auc"], 3) for k, v in out[f"{snr:g}"].items()})
    return out


def _noisy_real(real_dir: Path, work: Path) -> tuple[Path, list[Path]]:
    """The real clips with extra noise: fan id_00 (one set) mixed at 0 dB with per-clip factory backgrounds, written
    to `work`; and the other real fan normals (the denoiser's clean recordings)."""
    import soundfile as sf

    from models.audio import WavReader
    from offline.datasets.pairs import mix_at_snr, noise_for

    with (real_dir / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    mixed = work / "real_noisy"
    test_rows = [r for r in rows if r["machine"] == "fan" and r["id"] == "id_00" and r["path"].startswith(FOLDER)]
    rng = np.random.default_rng(0)
    for k, r in enumerate(sorted(test_rows, key=lambda r: r["path"])):
        x = WavReader(real_dir / r["path"], sample_rate=16000).read()
        dest = mixed / r["path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        sf.write(dest, mix_at_snr(x, noise_for(x.size, None, rng, 16000, TEST_NOISE_KEY + k), 0.0), 16000,
                 subtype="FLOAT")
    others = [real_dir / r["path"] for r in rows
              if r["machine"] == "fan" and r["label"] == "normal" and not r["path"].startswith(FOLDER)]
    (mixed / "manifest.csv").write_text((real_dir / "manifest.csv").read_text())
    return mixed, others


def part_real(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from models.training.noise import train_noise_bundle
    from offline.datasets.pairs import mix_pairs

    mixed, others = _noisy_real(args.real_dir, work)

    class _Clip:  # what mix_pairs reads of a clip record
        def __init__(self, path: Path) -> None:
            self.path, self.id = path, "fan"

    train, val = mix_pairs([_Clip(p) for p in others], None, SNRS, 0.2, 16000, seed=1)
    den_cfg = _config("lstm_denoiser")
    den_cfg.pop("pairs", None)
    denoiser = train_noise_bundle("lstm_denoiser", train, val, work / "denoiser_real", den_cfg, machine="fan",
                                  device="cpu", progress=False)
    from models.bundle import load_bundle

    den_meta = load_bundle(denoiser, device="cpu").meta["training"]
    configs = {k: v for k, v in all_configs(args.detectors, denoiser, args.epochs).items() if not k.endswith("_128")}
    for c in configs.values():
        c.update(holdout=0.3, threshold="percentile:90")
    runs = []
    for seed in range(args.splits):
        manifest = fan_id00_manifest(mixed, work / f"manifest_{seed}.csv", seed, 10)
        run = _train_and_evaluate(manifest, ("fan",), {k: {**c, "seed": seed} for k, c in configs.items()},
                                  work / f"real_{seed}", chance_seed=seed)
        runs.append({label: r["machines"]["fan"]["ids"]["id_00"]["auc"] for label, r in run["results"].items()})
        log.info("real split %d: %s", seed, {k: round(v, 3) for k, v in runs[-1].items()})
    return {"denoiser": {"clean_recordings": len(others), "n_pairs": den_meta["n_pairs"],
                         "validation": den_meta["validation"]},
            "auc": {label: spread([r[label] for r in runs]) for label in runs[0]}, "splits": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="models,synthetic,real")
    parser.add_argument("--train-recordings", type=int, default=12, help="pairs: recordings per id to train on")
    parser.add_argument("--val-recordings", type=int, default=4, help="pairs: recordings per id to validate on")
    parser.add_argument("--train-clips", type=int, default=30, help="detector data: normal training clips per id")
    parser.add_argument("--detectors", type=lambda s: s.split(","), default=["dcase_ae"],
                        help="comma-separated detectors compared with and without the denoiser")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of iterative detectors (all variants)")
    parser.add_argument("--splits", type=int, default=10, help="real data: seeded splits")
    parser.add_argument("--real-dir", type=Path, default=DEFAULT_REAL)
    parser.add_argument("--name", default="noise")
    parser.add_argument("--work", type=Path, help="keep the data and bundles here (default: a temporary folder); "
                        "`--parts cost` reuses the bundles a `models` run left there")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parts = args.parts.split(",")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result: dict[str, Any] = {"protocol": __doc__, "settings": settings}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        denoiser = None
        if "models" in parts or "synthetic" in parts:
            wanted = NOISE_MODELS if "models" in parts else ("lstm_denoiser",)
            result["models"], denoiser = part_models(work, args, wanted)
        if "cost" in parts:
            result["cost"] = cost(work / "lstm_classifier", work / "lstm_denoiser")
        if "synthetic" in parts:
            result["synthetic"] = part_synthetic(work, denoiser, args)
        if "real" in parts:
            result["real"] = part_real(work, args)
    result["cpu_count"] = os.cpu_count()
    path = write_result(args.name, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
