"""`asd-offline train`: fit a detector on the normal training clips of one machine type and write a bundle.

A fraction of the normal training clips (`--holdout`, default 0.1) is kept out of the fit; the threshold is set on
their scores (gamma fit, 0.9 quantile, by default), so it reflects how the model scores normal sound it has not seen.
With `--holdout 0` the training clips' own scores are used, which gives an optimistic (too low) threshold. Each
machine id with enough held-out clips also gets its own threshold (`per_id_thresholds`), used when a source or file
says its id.

Without `--model` the model is the config's `model`; without `--model` and `--config`, audio is trained with the
few-normals default (`DEFAULT_CONFIG`, or `FEW_CLIPS_CONFIG` with fewer than `SHRUNK_BELOW` training clips), and the
bundle's `training.default` records the choice.

`--data` may also be an `.npz` (array `X` [n_files, dim], optional `names`, `ids`) or `.csv` of pre-computed
per-file vectors: every row is one normal training item, the feature kind is `vectors` with the data's `dim`, and
`--machine` is optional (default `vectors`).

Configuration (YAML, all keys optional; command-line flags win):

    model: dcase_ae            # must match --model when given
    feature: {n_mels: 128, n_fft: 1024, hop_length: 512, power: 2.0, context: 5}   # merged over the model's default
                               # (another `kind:` starts from that kind's own defaults)
    params: {epochs: 100, batch_size: 512, lr: 0.001}                              # detector hyper-parameters
    stages: [{name: pca, params: {n_components: 0.95}}]                            # fitted in order, before it
    holdout: 0.1
    threshold: gamma           # gamma | gamma:Q | percentile:P | fixed:V
    per_id_thresholds: true    # also one threshold per machine id that has enough held-out clips
    seed: 0                    # holdout split and every part's `seed` (not allowed under params)
    window_seconds: 10         # the monitor's default window and hop for this bundle
    hop_seconds: 1

Detectors that pre-train a representation, self-supervised, on unlabeled audio (`ssl_knn`) learn it from the normal
training clips of every machine type and id in `--data` (not only `--machine`'s), plus those of each `--unlabeled`
root (another data set, or `asd-offline synth` output); the labels and ids of those clips are not used, and test
clips are never read for it.

Classifiers of machine ids configured with `across_types: true` (`stgram_mfn`, `id_classifier`) also learn the normal
training clips of every other machine type in `--data` as extra classes, so that `--machine`'s ids are told apart
from all the machines there; the bundle serves `--machine`'s ids.

`--epochs`, `--device` and `--seed` apply to every part (detector or stage) that has such a hyper-parameter; a
detector fitted in one pass says in one log line that it ignores `--epochs`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

VECTOR_SUFFIXES = (".npz", ".csv")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the repository's configs (a checkout or editable install)
# Without --model and --config, audio is trained with the few-normals default (README, "Few normals: what to use"),
# which `benchmarks/fewshot_default.py`'s rule chose on real clips: the level-normalised modulation-spectrum graph,
# with shrunk scales when it has fewer than SHRUNK_BELOW training clips (the rule chose them at 2 clips per id, and
# the unshrunk scales at 3, 4 and the training half: `fewshot_default.json`).
DEFAULT_CONFIG, FEW_CLIPS_CONFIG, SHRUNK_BELOW = "modspec_graph_level", "modspec_graph_level_2clips", 3


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, metavar="ROOT_OR_MANIFEST",
                        help="dataset root (DCASE 2020 or MIMII layout), manifest CSV, or .npz/.csv of vectors")
    parser.add_argument("--model", metavar="NAME",
                        help="registered detector (see `asd-offline models`); default: the --config's `model`, and "
                             f"without --config the few-normals default ({DEFAULT_CONFIG}, {FEW_CLIPS_CONFIG} "
                             f"with fewer than {SHRUNK_BELOW} clips; configs/variants/)")
    parser.add_argument("--machine", metavar="TYPE", help="machine type to train on, e.g. fan (optional for vectors)")
    parser.add_argument("--config", type=Path, metavar="YAML", help="feature + model hyper-parameters (configs/*.yaml)")
    parser.add_argument("--out", required=True, type=Path, metavar="BUNDLE_DIR", help="bundle directory to write")
    parser.add_argument("--id", dest="ids", action="append", metavar="ID",
                        help="train on this machine id only (repeatable); default: one model for all ids")
    parser.add_argument("--epochs", type=int, help="training epochs of every iterative part (overrides the config)")
    parser.add_argument("--device", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--holdout", type=float,
                        help="fraction of normal training clips held out to set the threshold (default 0.1)")
    parser.add_argument("--threshold", metavar="SPEC", help="gamma (default), gamma:Q, percentile:P or fixed:V")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--noise", type=Path, metavar="WAV",
                        help="noise models: a recording of the site's background, mixed into the clean clips of "
                             "--data at the config's pairs.snrs (default: the synthetic factory background)")
    parser.add_argument("--unlabeled", action="append", type=Path, default=[], metavar="ROOT_OR_MANIFEST",
                        help="more audio to pre-train on (models that pre-train, e.g. ssl_knn; repeatable): the "
                             "normal training clips of every machine there, labels and ids unused")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="train data-parallel in N processes on this machine (torchrun; one per GPU, or CPU "
                             "processes on gloo); default 1")


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
    from models.training.recipe import check_config

    check_config(data, str(path))
    return _inline_member_configs(data, Path(path).parent)


def find_config(name: str, folder: Path) -> Path | None:
    """`folder/<name>.yaml`, else the named variant `folder/variants/<name>.yaml`, else None."""
    return next((p for p in (folder / f"{name}.yaml", folder / "variants" / f"{name}.yaml") if p.exists()), None)


def _inline_member_configs(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """An ensemble's member configs named by path are read (relative to the ensemble config's folder) and put
    inline, so that the ensemble bundle records every member's whole config."""
    params = config.get("params") or {}
    members = params.get("members")
    if not isinstance(members, list):
        return config
    inlined = []
    for entry in members:
        if isinstance(entry, dict) and isinstance(entry.get("config"), str):
            entry = {**entry, "config": load_config(folder / entry["config"])}
        inlined.append(entry)
    return {**config, "params": {**params, "members": inlined}}


def apply_flags(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    config = dict(config)
    for key in ("holdout", "threshold", "seed"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    return config


def run(args: argparse.Namespace) -> int:
    from models.bundle import load_bundle
    from models.training import distributed

    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1 and not distributed.launched():
        load_config(args.config)  # a bad config is reported once, here, not by every process
        return _relaunch(args)
    if distributed.launched():  # joined before any work, so that only process 0 writes, whatever the model
        from models.device import select_device

        distributed.init_from_env(select_device(args.device or "auto"))
        if not distributed.is_main():
            logging.getLogger().setLevel(logging.WARNING)  # one process reports
    default = args.model is None and args.config is None
    config = apply_flags(load_config(default_config(DEFAULT_CONFIG) if default else args.config), args)
    model = args.model or config.get("model")
    if model is None:
        raise ValueError(f"{args.config} names no `model`: give --model")
    progress = False if args.no_progress else None
    from models.detectors import get_detector

    if get_detector(model).bundle_kind != "detector":
        return train_noise(args, model, config, progress)
    if args.noise is not None:
        raise ValueError("--noise is for the noise models (lstm_classifier, lstm_denoiser)")
    if args.unlabeled and not get_detector(model).pretrains:
        raise ValueError(f"--unlabeled is for the models that pre-train on unlabeled audio (e.g. ssl_knn), not "
                         f"{model}")
    if is_vector_file(args.data):
        if default:
            raise ValueError("--model is required for pre-computed vectors (the default is for audio)")
        out = train_vectors(args.data, model, args.machine or "vectors", args.out, config, ids=args.ids,
                            device=args.device, progress=progress, epochs=args.epochs)
    else:
        from models.training.recipe import build_spec, select_training_clips, train_bundle
        from offline.datasets.index import load_clips

        if not args.machine:
            raise ValueError("--machine is required for audio data (e.g. --machine fan)")
        across = build_spec(model, config).detector.learns_other_types()
        clips = load_clips(args.data, machine=None if across else args.machine, lenient=False)
        summary = None
        if default:
            config, summary = few_normals_default(len(select_training_clips(clips, args.machine, args.ids)), args)
        out = train_bundle(clips, model, args.machine, args.out, config, ids=args.ids,
                           data_source=str(args.data), device=args.device, progress=progress, epochs=args.epochs,
                           unlabeled=unlabeled_clips(args) if get_detector(model).pretrains else (),
                           other_types=[c for c in clips if c.machine != args.machine] if across else (),
                           extra_summary=summary)
    main_process = distributed.is_main()
    distributed.finish()  # after process 0 has written the bundle
    if not main_process:  # process 0 reports
        return 0
    bundle = load_bundle(out, device="cpu")  # proves the bundle is complete before we say so
    summary = bundle.meta["training"]
    print(
        f"wrote {out}: {bundle.name} for {bundle.machine} ({', '.join(bundle.ids)}), "
        f"{summary['n_fit_clips']} clips fitted, threshold {bundle.threshold:.6g} ({bundle.threshold_method} on "
        f"{summary['threshold_scores']} scores)"
    )
    return 0


def default_config(name: str) -> Path:
    """The path of a config the default uses; a clear error where the repository's configs are not at hand."""
    path = find_config(name, CONFIGS)
    if path is None:
        raise FileNotFoundError(f"the default training config {name}.yaml is not in {CONFIGS} (an install without "
                                "the repository's configs/): give --model and --config")
    return path


def few_normals_default(n_clips: int, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The default's config for `n_clips` training clips, and what the bundle's training summary records of the
    choice."""
    name = FEW_CLIPS_CONFIG if n_clips < SHRUNK_BELOW else DEFAULT_CONFIG
    path = default_config(name)
    log.info("no --model or --config: the few-normals default for %d training clips, %s (%s)", n_clips, name, path)
    return apply_flags(load_config(path), args), {"default": {
        "config": name, "training_clips": n_clips,
        "rule": f"{FEW_CLIPS_CONFIG} below {SHRUNK_BELOW} training clips, else {DEFAULT_CONFIG}"}}


def train_noise(args: argparse.Namespace, model: str, config: dict[str, Any], progress: bool | None) -> int:
    """A noise model from paired audio: a seed-layout pairs folder, or the normal training clips of --machine in a
    dataset mixed with --noise (or the synthetic factory background) at the config's `pairs.snrs`."""
    from models.bundle import load_bundle
    from models.training.noise import train_noise_bundle
    from models.training.recipe import build_spec
    from offline.datasets.pairs import is_pair_folder, mix_pairs, pair_settings, read_pair_folder

    if args.nproc > 1:
        raise ValueError("noise models train in one process (--nproc 1)")
    settings = pair_settings(config)
    detector_config = {k: v for k, v in config.items() if k != "pairs"}
    sample_rate = build_spec(model, detector_config).feature.sample_rate
    noise = args.noise or (Path(settings["noise"]) if settings["noise"] else None)
    if is_pair_folder(args.data):
        if noise is not None:
            raise ValueError(f"{args.data} holds ready pairs; --noise (or pairs.noise) mixes clean clips instead")
        train, val = read_pair_folder(args.data, sample_rate)
        source = {"pairs": "folder"}
    else:
        from models.training.recipe import select_training_clips
        from offline.datasets.index import load_clips

        if not args.machine:
            raise ValueError("--machine is required to take clean clips from a dataset (or give a pairs folder "
                             "with train/{noisy,clean}/)")
        clips = select_training_clips(load_clips(args.data, machine=args.machine, lenient=False), args.machine,
                                      args.ids)
        train, val = mix_pairs(clips, noise, settings["snrs"], settings["val_fraction"], sample_rate,
                               int(config.get("seed", 0)))
        source = {"pairs": "mixed", "noise": str(noise) if noise else "synthetic factory background",
                  "snrs": settings["snrs"], "val_fraction": settings["val_fraction"]}
    out = train_noise_bundle(model, train, val, args.out, detector_config, machine=args.machine or "any",
                             data_source=str(args.data), device=args.device, progress=progress, epochs=args.epochs,
                             extra_summary=source)
    bundle = load_bundle(out, device="cpu")
    val_metrics = bundle.meta["training"]["validation"]
    shown = ", ".join(f"{k} {v:.4g}" for k, v in val_metrics.items() if k != "n_pairs") or "no validation pairs"
    print(f"wrote {out}: {bundle.name} ({bundle.kind}) on {len(train)} pairs; validation ({len(val)} pairs): {shown}")
    return 0


def unlabeled_clips(args: argparse.Namespace) -> list[Any]:
    """What a pre-training model reads besides its own clips: the normal training clips of the other machine types
    (and ids) of `--data` and of every `--unlabeled` root."""
    from models.training.recipe import pretraining_clips
    from offline.datasets.index import load_clips

    own = set(args.ids or [])
    others = [c for c in load_clips(args.data, lenient=False)
              if c.machine != args.machine or (own and c.id not in own)]
    extra = [c for root in args.unlabeled for c in load_clips(root, lenient=False)]
    chosen = pretraining_clips(others + extra)
    log.info("pre-training reads %d more normal training clips (%d from other machines or ids of --data, %d from "
             "--unlabeled)", len(chosen), len(pretraining_clips(others)), len(pretraining_clips(extra)))
    return chosen


def _relaunch(args: argparse.Namespace) -> int:
    """The same command under torchrun with `--nproc` processes on this machine (`--standalone`: a rendezvous on
    a free local port). For several machines, run torchrun yourself on each one (see the README)."""
    import subprocess
    import sys

    argv, skip = [], False
    for a in getattr(args, "_argv", sys.argv[1:]):  # the command as given, without --nproc
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            argv.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "offline.cli", *argv]
    log.info("training in %d processes: %s", args.nproc, " ".join(cmd))
    return subprocess.call(cmd)


def is_vector_file(path: Path) -> bool:
    """An .npz, or a .csv of vectors rather than a dataset manifest (manifests have a `path` column)."""
    suffix = path.suffix.lower()
    if suffix not in VECTOR_SUFFIXES or not path.is_file():
        return False
    if suffix == ".npz":
        return True
    with path.open(newline="") as f:
        header = f.readline().strip().split(",")
    return "path" not in [h.strip() for h in header]


def train_vectors(data: Path, model_name: str, machine: str, out: str | Path, config: dict[str, Any],
                  *, ids: Sequence[str] | None = None, **kwargs: Any) -> Path:
    """Train on pre-computed per-file vectors (every row one normal item) through the recipe's tensors-in entry."""
    import torch

    from models.features.vectors import read_vectors
    from models.training.recipe import build_spec, cross_fitted_scores, fit_bundle, needs_cross_fit, split_holdout

    vf = read_vectors(data)
    spec = build_spec(model_name, config, feature_overrides={"kind": "vectors", "dim": vf.dim}, **kwargs)
    rows = list(range(len(vf)))
    if ids:
        if vf.ids is None:
            raise ValueError(f"{data}: --id given but the file has no `ids`")
        rows = [i for i in rows if vf.ids[i] in set(ids)]
        if not rows:
            raise ValueError(f"{data}: no rows of id(s) {list(ids)}; ids present: {sorted(set(vf.ids))}")
    cross = needs_cross_fit(len(rows), spec.holdout, gamma=spec.threshold["method"] == "gamma")
    fit_rows, hold_rows = (rows, []) if cross else split_holdout(rows, spec.holdout, spec.seed)
    X = torch.from_numpy(vf.X)

    def items(sel: list[int]) -> tuple[list[torch.Tensor], list[str] | None]:
        return [X[i : i + 1] for i in sel], None if vf.ids is None else [vf.ids[i] for i in sel]

    fit, fit_ids = items(fit_rows)
    hold, hold_ids = items(hold_rows)
    oof = None
    if cross:  # too few rows to hold some out: each row scored by a model fitted on the others
        def rebuild() -> Any:
            return build_spec(model_name, config, feature_overrides={"kind": "vectors", "dim": vf.dim}, **kwargs)

        oof = cross_fitted_scores(rebuild, fit, fit_ids, spec.seed)
    return fit_bundle(out, spec, fit, fit_ids, hold, hold_ids, machine=machine, cross_fitted=oof,
                      summary={"data": str(data), "n_clips": len(rows), "rows": "one per file"})
