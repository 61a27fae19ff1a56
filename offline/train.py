"""`asd-offline train`: fit a detector on the normal training clips of one machine type and write a bundle.

A fraction of the normal training clips (`--holdout`, default 0.1) is kept out of the fit; the threshold is set on
their scores (gamma fit, 0.9 quantile, by default), so it reflects how the model scores normal sound it has not seen.
With `--holdout 0` the training clips' own scores are used, which gives an optimistic (too low) threshold.

Configuration (YAML, all keys optional; command-line flags win):

    model: dcase_ae            # must match --model when given
    feature: {n_mels: 128, n_fft: 1024, hop_length: 512, power: 2.0, context: 5}   # merged over the model's default
    params: {epochs: 100, batch_size: 512, lr: 0.001}                              # detector hyper-parameters
    holdout: 0.1
    threshold: gamma           # gamma | gamma:Q | percentile:P | fixed:V
    seed: 0                    # holdout split and the detector's `seed` (not allowed under params)
    window_seconds: 10         # the monitor's default window and hop for this bundle
    hop_seconds: 1
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from models.training import ClipLike


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, metavar="ROOT_OR_MANIFEST",
                        help="dataset root (DCASE 2020 or MIMII layout) or manifest CSV")
    parser.add_argument("--model", required=True, metavar="NAME", help="registered detector (see `asd-offline models`)")
    parser.add_argument("--machine", required=True, metavar="TYPE", help="machine type to train on, e.g. fan")
    parser.add_argument("--config", type=Path, metavar="YAML", help="feature + model hyper-parameters (configs/*.yaml)")
    parser.add_argument("--out", required=True, type=Path, metavar="BUNDLE_DIR", help="bundle directory to write")
    parser.add_argument("--id", dest="ids", action="append", metavar="ID",
                        help="train on this machine id only (repeatable); default: one model for all ids")
    parser.add_argument("--epochs", type=int, help="training epochs (overrides the config)")
    parser.add_argument("--device", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--holdout", type=float,
                        help="fraction of normal training clips held out to set the threshold (default 0.1)")
    parser.add_argument("--threshold", metavar="SPEC", help="gamma (default), gamma:Q, percentile:P or fixed:V")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def load_config(path: Path | None) -> dict[str, Any]:
    """Read a training config; unknown keys are errors so a typo does not silently train with defaults."""
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    from models.training import check_config

    check_config(data, str(path))
    return data


def _apply_flags(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    config = {**config, "params": dict(config.get("params") or {})}
    if args.epochs is not None:
        config["params"]["epochs"] = args.epochs
    for key in ("holdout", "threshold", "seed"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    return config


def run(args: argparse.Namespace) -> int:
    from models.bundle import load_bundle
    from models.training import train_bundle
    from offline.datasets.index import load_clips

    config = _apply_flags(load_config(args.config), args)
    clips = load_clips(args.data, machine=args.machine, lenient=False)
    out = train_bundle(clips, args.model, args.machine, args.out, config, ids=args.ids, data_source=str(args.data),
                       device=args.device, progress=False if args.no_progress else None)
    bundle = load_bundle(out, device="cpu")  # proves the bundle is complete before we say so
    summary = bundle.meta["training"]
    print(
        f"wrote {out}: {bundle.name} for {bundle.machine} ({', '.join(bundle.ids)}), "
        f"{summary['n_fit_clips']} clips fitted, threshold {bundle.threshold:.6g} ({bundle.threshold_method} on "
        f"{summary['threshold_scores']} scores)"
    )
    return 0


def train_bundle(clips: Sequence["ClipLike"], model_name: str, machine: str, out: str | Path,
                 config: dict[str, Any] | None = None, **kwargs: Any) -> Path:
    """`models.training.train_bundle`, re-exported here for offline scripts (it lives in `models` so that the
    monitor's demo can train without importing `offline`); imported lazily to keep the CLI parser free of torch."""
    from models.training import train_bundle as _train_bundle

    return _train_bundle(clips, model_name, machine, out, config, **kwargs)
