"""The training recipe: data -> features -> stages -> fit -> threshold -> bundle.

Two entries share everything after the features:
- `train_bundle(clips, model, machine, out, config)`: clip records in (what `asd-offline train` reads); selects the
  normal training clips, holds some out for the threshold, featurises them, then calls
- `fit_bundle(out, spec, fit, holdout, ...)`: tensors in (per-clip feature matrices and their machine ids), which
  `.npz` vector inputs and the monitor's demo use directly.

It lives in `models`, not `offline`, because the monitor's demo trains too and `monitor` may not import `offline`.
Config keys (configs/<model>.yaml, documented in offline/train.py) are checked before any audio is read.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch

from models.bundle import DEFAULT_HOP_SECONDS, DEFAULT_WINDOW_SECONDS, save_bundle
from models.detectors import REGISTRY, Detector, get_detector
from models.features import FeatureConfig, feature_from_dict
from models.scoring import Chain
from models.stages import Stage, get_stage
from models.threshold import MIN_GAMMA_SCORES, TRAIN_PERCENTILES, calibration, fit_threshold, parse_threshold_spec
from models.training import distributed
from models.training.loop import make_progress

log = logging.getLogger(__name__)

_LOAD_GROUP = 64  # clips read and featurised together: bounds the raw audio held at once

# the keys of configs/<model>.yaml
CONFIG_KEYS = {"model", "feature", "params", "stages", "holdout", "threshold", "per_id_thresholds", "seed",
               "window_seconds", "hop_seconds", "pairs"}  # pairs: the noise models' training pairs (offline.train)
DEFAULTS: dict[str, Any] = {"holdout": 0.1, "threshold": "gamma", "per_id_thresholds": True, "seed": 0,
                            "window_seconds": DEFAULT_WINDOW_SECONDS, "hop_seconds": DEFAULT_HOP_SECONDS}


class ClipLike(Protocol):
    """What training needs of a clip record (`offline.datasets.records.Clip` has it; `models` cannot import it)."""

    path: Path
    machine: str
    id: str
    split: str
    label: str | None


@dataclass
class ModelSpec:
    """Everything a config decides, built and checked before any data is read."""

    detector: Detector
    feature: FeatureConfig
    stages: list[Stage]
    threshold: dict[str, Any]  # fit_threshold keywords
    holdout: float
    per_id_thresholds: bool
    seed: int
    window_seconds: float
    hop_seconds: float
    config: dict[str, Any] = field(default_factory=dict)


def check_config(config: dict[str, Any], where: str = "config") -> None:
    """Top-level keys and section types; values are checked where they are used, with messages naming them."""
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(CONFIG_KEYS)}")
    for key in ("feature", "params"):
        if not isinstance(config.get(key, {}), dict):
            raise ValueError(f"{where}: {key!r} must be a mapping")
    stages = config.get("stages", [])
    if not isinstance(stages, list) or not all(isinstance(s, (str, dict)) for s in stages):
        raise ValueError(f"{where}: 'stages' must be a list of stage names or {{name: ..., params: {{...}}}}")


def build_spec(
    model_name: str,
    config: dict[str, Any] | None = None,
    *,
    device: str | None = None,
    progress: bool | None = None,
    epochs: int | None = None,
    feature_overrides: dict[str, Any] | None = None,
) -> ModelSpec:
    """Detector, feature, stages and settings from a config (the model's defaults where it is silent).

    `device`, `progress` and `epochs` (None: the config's or the default) apply to every part that has such a
    hyper-parameter; a detector trained in one pass ignores `epochs` and says so in one log line.
    """
    config = dict(config or {})
    check_config(config)
    if config.get("model", model_name) != model_name:
        raise ValueError(f"the config is for model {config['model']!r}, but model {model_name!r} was requested")
    settings = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    cls = get_detector(model_name)
    if "pairs" in config and cls.bundle_kind == "detector":
        raise ValueError(f"'pairs' configures the noise models' training pairs; {model_name} trains on normal clips")
    default = {"kind": "logmel", **cls.default_feature}
    given = {**(config.get("feature") or {}), **(feature_overrides or {})}
    # the model's default settings apply to its default kind only; another kind starts from its own defaults
    feature_cfg = {**default, **given} if given.get("kind", default["kind"]) == default["kind"] else given
    feature = feature_from_dict(feature_cfg)
    params = dict(config.get("params") or {})
    if "seed" in params:
        raise ValueError("set `seed` at the top level of the config, not under `params` (one seed drives everything)")
    seed = int(settings["seed"])
    shared = {"seed": seed, "device": device, "progress": progress, "epochs": epochs}
    if epochs is not None and not cls.iterative():
        log.info("%s is fitted in one pass: --epochs %d does not apply to it", model_name, epochs)
    detector = cls.from_params(_with_shared(params, shared, cls.param_names()))
    detector.check_feature(feature)
    stages = []
    for i, entry in enumerate(config.get("stages") or []):
        name, sparams = (entry, {}) if isinstance(entry, str) else (entry.get("name"), dict(entry.get("params") or {}))
        if not isinstance(name, str) or set(entry if isinstance(entry, dict) else {}) - {"name", "params"}:
            raise ValueError(f"stages[{i}]: expected a stage name or {{name: ..., params: {{...}}}}, got {entry!r}")
        scls = get_stage(name)
        stages.append(scls.from_params(_with_shared(sparams, shared, scls.param_names())))
        stages[-1].check_feature(feature)
    holdout = float(settings["holdout"])
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    return ModelSpec(
        detector=detector, feature=feature, stages=stages,
        threshold=parse_threshold_spec(str(settings["threshold"])), holdout=holdout,
        per_id_thresholds=bool(settings["per_id_thresholds"]), seed=seed,
        window_seconds=float(settings["window_seconds"]), hop_seconds=float(settings["hop_seconds"]),
        config=config,
    )


def _with_shared(params: dict[str, Any], shared: dict[str, Any], names: list[str]) -> dict[str, Any]:
    out = dict(params)
    for key, value in shared.items():
        if value is not None and key in names:
            out[key] = value
    return out


# -- clips in ---------------------------------------------------------------------------------------------------


def _featurise(
    clips: Sequence[ClipLike], feature: FeatureConfig, device: torch.device, progress: bool
) -> tuple[list[torch.Tensor], float]:
    """Load and featurise clips in groups, keeping only the CPU feature matrices (raw audio is dropped per group).

    Returns the features and the seconds of audio read."""
    from models.audio import WavReader, level_dbfs
    from models.levels import CLIP_LEVEL, CLIPPED_FRACTION, SILENCE_DBFS

    feats: list[torch.Tensor] = []
    seconds = 0.0
    notes: dict[str, list[str]] = {"resampled": [], "channel 0 of several": [], "silent": [], "clipped": []}
    bar = make_progress(progress, "features", len(clips))
    with bar or contextlib.nullcontext():
        for start in range(0, len(clips), _LOAD_GROUP):
            group = clips[start : start + _LOAD_GROUP]
            wavs = []
            for clip in group:
                reader = WavReader(clip.path, sample_rate=feature.sample_rate, resample=True)
                wav = reader.read()
                name = str(clip.path)
                if reader.file_rate != feature.sample_rate:
                    notes["resampled"].append(f"{name} ({reader.file_rate} Hz)")
                if reader.channels > 1:
                    notes["channel 0 of several"].append(f"{name} ({reader.channels} channels)")
                if level_dbfs(wav) < SILENCE_DBFS:
                    notes["silent"].append(name)
                elif np.mean(np.abs(wav) >= CLIP_LEVEL) > CLIPPED_FRACTION:
                    notes["clipped"].append(name)
                if feature.n_vectors(wav.shape[0]) == 0:
                    raise ValueError(f"{clip.path}: {wav.shape[0]} samples is too short for one feature vector")
                seconds += wav.shape[0] / feature.sample_rate
                wavs.append(wav)
            for clip, f in zip(group, feature.extract_batch(wavs, device)):
                if not bool(torch.isfinite(f).all()):
                    raise ValueError(f"{clip.path}: its {feature.kind} features are not finite (NaN/inf)")
                feats.append(f.cpu())
            if bar is not None:
                bar.update(bar.task_ids[0], advance=len(group))
    _report(notes, len(clips), feature.sample_rate)
    return feats, seconds


def _report(notes: dict[str, list[str]], n: int, rate: int) -> None:
    """One warning per kind of training-data trouble, naming the clips (the first ten)."""
    from models.levels import CLIPPED_FRACTION, SILENCE_DBFS

    what = {"resampled": f"were resampled to {rate} Hz", "channel 0 of several": "are multi-channel: channel 0 was used",
            "silent": f"are silent (below {SILENCE_DBFS:g} dBFS): they teach the model silence and lower the "
                      "threshold; remove them",
            "clipped": f"are clipped (over {CLIPPED_FRACTION:.0%} of samples at full scale): check the input gain"}
    for kind, names in notes.items():
        if names:
            shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            log.warning("%d of %d training clips %s: %s", len(names), n, what[kind], shown)


def select_training_clips(clips: Sequence[ClipLike], machine: str, ids: Sequence[str] | None) -> list[ClipLike]:
    """Normal training clips of one machine type (and ids); the error lists what the data does have."""
    chosen = [c for c in clips if c.machine == machine and c.split == "train" and c.label != "anomaly"]
    if ids:
        known = sorted({c.id for c in chosen})
        missing = sorted(set(ids) - set(known))
        if missing:
            raise ValueError(f"no normal training clips of {machine} for id(s) {missing}; ids present: {known}")
        chosen = [c for c in chosen if c.id in set(ids)]
    if not chosen:
        machines = sorted({c.machine for c in clips if c.split == "train"})
        raise ValueError(f"no normal training clips of machine {machine!r} (machines with training clips: {machines})")
    return chosen


MAX_FOLDS = 5  # cross-fitting folds with few clips: each clip is scored by a model fitted on the others


def needs_cross_fit(n: int, holdout: float, gamma: bool) -> bool:
    """True when `holdout` of `n` clips would leave too few held-out scores for the threshold (a gamma fit needs
    `MIN_GAMMA_SCORES`) or nothing to fit on: the threshold then comes from cross-fitted scores instead, every clip
    scored by a model that did not see it. Fewer than 2 clips cannot work either way: a ValueError that says
    what to do."""
    if n < 2:
        raise ValueError(f"{n} normal training clip(s): a threshold needs scores of clips the model did not see, "
                         "so give at least 2 (more is better: 8 or more for a stable threshold), or set the "
                         "threshold yourself with --threshold fixed:V")
    if holdout <= 0:
        return False  # asked for: the threshold from the training clips' own scores
    n_hold = held_out_count(n, holdout)
    return n - n_hold < 1 or (gamma and n_hold < MIN_GAMMA_SCORES)


def held_out_count(n: int, holdout: float) -> int:
    """How many of `n` clips `split_holdout` holds out: the `holdout` share rounded, at least one when holdout > 0."""
    return max(1, round(holdout * n)) if holdout > 0 else 0


def split_holdout(clips: Sequence[Any], holdout: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Seeded split, in the original order, into items to fit and items whose scores set the threshold (at least
    one when holdout > 0)."""
    n = len(clips)
    n_hold = held_out_count(n, holdout)
    if n - n_hold < 1:
        raise ValueError(f"{n} training clip(s): too few to hold out {holdout:.0%} and still train")
    hold = set(np.random.default_rng(seed).permutation(n)[:n_hold].tolist())
    return [c for i, c in enumerate(clips) if i not in hold], [c for i, c in enumerate(clips) if i in hold]


def cross_fitted_scores(rebuild: Callable[[], ModelSpec], feats: Sequence[torch.Tensor], ids: Sequence[str] | None,
                        seed: int, folds: int = MAX_FOLDS, others: Others | None = None) -> np.ndarray:
    """Out-of-fold scores `[n]`: the clips in `min(folds, n)` seeded folds, each fold scored by a fresh model
    (`rebuild()`: stages and detector as configured) fitted on the other folds (and on all of `others`)."""
    scores = np.empty(len(feats), dtype=np.float64)
    for held, chain in fold_chains(rebuild, feats, ids, seed, folds, others):
        scores[held] = chain.score_windows([feats[i] for i in held], None if ids is None else [ids[i] for i in held])
    return scores


def fold_chains(rebuild: Callable[[], ModelSpec], feats: Sequence[torch.Tensor], ids: Sequence[str] | None,
                seed: int, folds: int = MAX_FOLDS, others: Others | None = None) -> Iterator[tuple[np.ndarray, Chain]]:
    """The seeded folds of cross-fitting: for each of `min(folds, n)` folds, the indices of its clips and a fresh
    chain (`rebuild()`) fitted on the other folds' clips. A chain that cannot be fitted on a fold's share says how
    many clips that was."""
    n = len(feats)
    k = min(folds, n)
    order = np.random.default_rng(seed).permutation(n)
    for f in range(k):
        held = order[f::k]
        rest = np.setdiff1d(order, held)
        spec = rebuild()
        try:
            chain, _ = fit_chain(spec, [feats[i] for i in rest], None if ids is None else [ids[i] for i in rest],
                                 others)
        except ValueError as err:
            raise ValueError(f"cross-fitting {spec.detector.name} ({k} folds of {n} clips, each copy fitted on "
                             f"{rest.size}): {err}") from err
        yield held, chain


@dataclass(frozen=True)
class Others:
    """Featurised normal clips of other machine types with their class ids (`<type>/<id>`): the extra classes of a
    classifier of ids that `learns_other_types`. Stages are fitted on the machine's own clips and only applied to
    these; the threshold and the bundle's ids come from the own clips alone."""

    feats: list[torch.Tensor]
    ids: list[str]


def fit_chain(spec: ModelSpec, feats: Sequence[torch.Tensor], ids: Sequence[str] | None,
              others: Others | None = None) -> tuple[Chain, list[torch.Tensor]]:
    """Stages fitted in order, then the detector (on `others` too, when given); returns the chain and the own clips
    as the detector saw them."""
    feats = list(feats)
    extra = list(others.feats) if others else []
    for stage in spec.stages:
        stage.fit(feats, ids)
        feats = stage.transform_clips(feats)
        extra = stage.transform_clips(extra) if extra else extra
    if others:
        spec.detector.fit([*feats, *extra], [*(ids or []), *others.ids])
    else:
        spec.detector.fit(feats, ids)
    return Chain(spec.stages, spec.detector), feats


def train_bundle(
    clips: Sequence[ClipLike],
    model_name: str,
    machine: str,
    out: str | Path,
    config: dict[str, Any] | None = None,
    *,
    ids: Sequence[str] | None = None,
    data_source: str | None = None,
    device: str | None = None,
    progress: bool | None = None,
    epochs: int | None = None,
    extra_summary: dict[str, Any] | None = None,
    unlabeled: Sequence[ClipLike] = (),
    pretrained: Detector | None = None,
    other_types: Sequence[ClipLike] = (),
) -> Path:
    """Train `model_name` on the normal training clips of `machine`, set the threshold, write a bundle at `out`.

    Detectors that pre-train (`pretrains`, e.g. `ssl_knn`) learn their representation first from the fit clips
    plus `unlabeled` (normal training clips of any machine type and id: `pretraining_clips`), or start from a copy
    of `pretrained` (a detector of the same model, already pre-trained by `pretrain_detector`: one pre-training
    for several machines). Cross-fitting folds reuse that representation and fit only what is per machine.

    Classifiers of ids configured to learn other machine types (`learns_other_types`: `across_types: true`) also
    fit the normal training clips of `other_types` (clips of any other machine type; this machine's are ignored)
    as extra classes; the threshold, its cross-fitting folds and the bundle's ids are this machine's own.

    Bad settings fail before any audio is read. Used by `asd-offline train` (and `select`, whose choice goes into
    the training summary through `extra_summary`).
    """
    from models.device import describe, select_device

    if get_detector(model_name).bundle_kind != "detector":
        raise ValueError(f"{model_name} is a noise model ({get_detector(model_name).bundle_kind}): it trains on "
                         "paired noisy/clean audio, not on normal clips (models.training.noise)")
    if get_detector(model_name).combines_members:
        from models.training.ensemble import train_ensemble

        return train_ensemble(clips, machine, out, dict(config or {}), ids=ids, data_source=data_source,
                              device=device, progress=progress, epochs=epochs)
    spec = build_spec(model_name, config, device=device, progress=progress, epochs=epochs)
    _check_pretraining(spec, unlabeled, pretrained)
    other_clips = _other_type_clips(spec, other_types, machine)
    chosen = select_training_clips(clips, machine, ids)
    cross = needs_cross_fit(len(chosen), spec.holdout, gamma=spec.threshold["method"] == "gamma")
    fit_clips, hold_clips = (list(chosen), []) if cross else split_holdout(chosen, spec.holdout, spec.seed)
    dev = select_device(device or spec.detector.get_params().get("device", "auto"))
    show = bool(spec.detector.get_params().get("progress", True)) if progress is None else progress
    if cross:
        log.info("%s/%s: %d clips are too few to hold %.0f%% out for the threshold: it comes from cross-fitted "
                 "scores (%d folds, each scored by a model fitted on the others), the model from all %d clips, "
                 "features on %s", model_name, machine, len(chosen), 100 * spec.holdout,
                 min(MAX_FOLDS, len(chosen)), len(chosen), describe(dev))
    else:
        log.info("%s/%s: %d clips to fit, %d held out, features on %s", model_name, machine, len(fit_clips),
                 len(hold_clips), describe(dev))
    t0 = time.perf_counter()
    fit_feats, fit_seconds = _featurise(fit_clips, spec.feature, dev, show)
    hold_feats, hold_seconds = _featurise(hold_clips, spec.feature, dev, show) if hold_clips else ([], 0.0)
    summary = {"data": data_source, "n_clips": len(chosen), "audio_seconds": round(fit_seconds + hold_seconds, 3),
               "feature_seconds": round(time.perf_counter() - t0, 3), "device": describe(dev),
               **(extra_summary or {})}
    fit_ids = [c.id for c in fit_clips]
    others = None
    if other_clips:
        other_feats, _ = _featurise(other_clips, spec.feature, dev, show)
        others = Others(other_feats, [f"{c.machine}/{c.id}" for c in other_clips])
        summary["other_types"] = {"clips": len(other_clips), "types": sorted({c.machine for c in other_clips}),
                                  "classes": len(set(others.ids))}
    if spec.detector.pretrains:
        t_pre = time.perf_counter()
        spec.detector = _pretrained_copy(spec, fit_feats, unlabeled, pretrained, dev, show)
        summary["pretraining"] = {"clips": int(getattr(spec.detector, "pretrain_clips_", 0)),
                                  "unlabeled_clips": len(unlabeled), "from": "given" if pretrained else "here"}
        if pretrained is None:  # how long it took (a given representation was timed where it was pre-trained)
            summary["pretraining"].update(seconds=round(time.perf_counter() - t_pre, 3),
                                          epochs_run=len(getattr(spec.detector, "history_", None) or []))
    oof = None
    if cross:
        def rebuild() -> ModelSpec:
            fresh = build_spec(model_name, config, device=device, progress=False, epochs=epochs)
            if spec.detector.pretrains:  # the fold's model starts from the one representation
                fresh.detector = copy.deepcopy(spec.detector)
            return fresh

        oof = cross_fitted_scores(rebuild, fit_feats, fit_ids, spec.seed, others=others)
    return fit_bundle(out, spec, fit_feats, fit_ids, hold_feats, [c.id for c in hold_clips],
                      machine=machine, summary=summary, cross_fitted=oof, others=others)


def _other_type_clips(spec: ModelSpec, other_types: Sequence[ClipLike], machine: str) -> list[ClipLike]:
    """The normal training clips of other machine types that `spec.detector` learns as extra classes (none unless
    it `learns_other_types`); errors when they are given to a detector that does not, or missing for one that does."""
    name = spec.detector.name
    learns = spec.detector.learns_other_types()
    if other_types and not learns:
        raise ValueError(f"{name} does not learn other machine types' clips (only classifiers of ids with "
                         "across_types: true do)")
    chosen = [c for c in pretraining_clips(other_types) if c.machine != machine] if learns else []
    if learns and not chosen:
        raise ValueError(f"{name} with across_types: true learns {machine}'s ids against other machine types, but "
                         f"the data has no normal training clips of any type but {machine}")
    return chosen


def pretraining_clips(clips: Sequence[ClipLike]) -> list[ClipLike]:
    """The clips of a data set that pre-training may read: the normal training clips of every machine type and id
    (their labels and ids are not used; test clips stay out, so that evaluation on them is honest)."""
    return [c for c in clips if c.split == "train" and c.label != "anomaly"]


def pretrain_detector(model_name: str, config: dict[str, Any] | None, unlabeled: Sequence[ClipLike], *,
                      device: str | None = None, progress: bool | None = None,
                      epochs: int | None = None) -> Detector:
    """A detector of `model_name` (configured as `train_bundle` would) pre-trained on `unlabeled` alone: pass it
    as `train_bundle(..., pretrained=)` to train several machines on one representation."""
    from models.device import select_device

    spec = build_spec(model_name, config, device=device, progress=progress, epochs=epochs)
    _check_pretraining(spec, unlabeled, None)
    if not unlabeled:
        raise ValueError(f"{model_name}: no clips to pre-train on")
    dev = select_device(device or spec.detector.get_params().get("device", "auto"))
    show = bool(spec.detector.get_params().get("progress", True)) if progress is None else progress
    feats, _ = _featurise(list(unlabeled), spec.feature, dev, show)
    return spec.detector.pretrain(feats)


def _check_pretraining(spec: ModelSpec, unlabeled: Sequence[ClipLike], pretrained: Detector | None) -> None:
    name = spec.detector.name
    if (unlabeled or pretrained is not None) and not spec.detector.pretrains:
        pre = sorted(n for n, cls in REGISTRY.items() if cls.pretrains)
        raise ValueError(f"{name} does not pre-train on unlabeled audio; the models that do: {pre}")
    if spec.detector.pretrains and spec.stages:
        raise ValueError(f"{name} pre-trains on features as they are read: it takes no stages")
    if pretrained is not None and (pretrained.name != name or pretrained.get_params() != spec.detector.get_params()
                                   or not getattr(pretrained, "is_pretrained", False)):
        raise ValueError(f"the pre-trained detector given is not a pre-trained {name} with this config's settings")


def _pretrained_copy(spec: ModelSpec, fit_feats: Sequence[torch.Tensor], unlabeled: Sequence[ClipLike],
                     pretrained: Detector | None, dev: torch.device, show: bool) -> Detector:
    """`spec.detector` pre-trained: a copy of `pretrained`, else trained on the fit clips and `unlabeled`."""
    if pretrained is not None:
        return copy.deepcopy(pretrained)
    extra, _ = _featurise(list(unlabeled), spec.feature, dev, show) if unlabeled else ([], 0.0)
    return spec.detector.pretrain([*fit_feats, *extra])


# -- tensors in -------------------------------------------------------------------------------------------------


def fit_bundle(
    out: str | Path,
    spec: ModelSpec,
    fit: Sequence[torch.Tensor],
    fit_ids: Sequence[str] | None,
    holdout: Sequence[torch.Tensor] = (),
    holdout_ids: Sequence[str] | None = None,
    *,
    machine: str,
    summary: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    members: dict[str, Path] | None = None,
    cross_fitted: np.ndarray | None = None,
    others: Others | None = None,
) -> Path:
    """Fit the stages in order, then the detector, on `fit` (per-clip feature matrices with their machine ids);
    set the threshold on the scores of `holdout` (the training clips' own scores when there is none, which
    gives an optimistic, too low threshold), or on `cross_fitted` (out-of-fold scores of the `fit` clips, see
    `cross_fitted_scores`) when given; write the bundle.

    Per-id thresholds are set for every id with enough held-out clips when `spec.per_id_thresholds` (an id
    without gets the global one): machine ids of one type often score on different scales. Each threshold's
    calibration (`models.threshold.calibration`) goes beside it: `info["calibration"]` for the global one,
    `info["per_id_calibration"][id]` for an id's own. `others` (other machine types' clips) are fitted as extra
    classes and play no part in the threshold.
    """
    fit = list(fit)
    holdout = list(holdout)
    ids_fit = None if fit_ids is None else [str(i) for i in fit_ids]
    ids_hold = None if holdout_ids is None else [str(i) for i in holdout_ids]
    t0 = time.perf_counter()
    cpu0 = time.process_time()  # CPU time of all threads: tells a slow machine from a busy one
    chain, transformed = fit_chain(spec, fit, ids_fit, others)
    t_fit, cpu_fit = time.perf_counter() - t0, time.process_time() - cpu0
    if not distributed.is_main():
        log.info("process %d of %d: fitted; process 0 writes the bundle", distributed.rank(),
                 distributed.world_size())
        return Path(out)
    train_scores = spec.detector.score(transformed, ids_fit)  # the fit clips through the stages already
    if cross_fitted is not None:
        scores, scored_ids, source = np.asarray(cross_fitted, dtype=np.float64), ids_fit, "cross-fitted"
    elif holdout:
        scores, scored_ids, source = chain.score_windows(holdout, ids_hold), ids_hold, "holdout"
    else:
        scores, scored_ids, source = train_scores, ids_fit, "training"
    threshold_spec = spec.threshold
    if threshold_spec["method"] == "gamma" and len(scores) < MIN_GAMMA_SCORES:
        threshold_spec = parse_threshold_spec("percentile:100")
        log.warning("%d %s scores are too few for a gamma fit: the threshold is the highest of them; expect false "
                    "alarms until the model is retrained on more normal clips", len(scores), source)
    threshold, info = fit_threshold(scores, **threshold_spec)
    info["calibration"] = {**calibration(scores, threshold, _nominal_quantile(threshold_spec)), "scores": source}
    per_id, info["per_id_calibration"] = (_per_id_thresholds(scores, scored_ids, spec, source)
                                          if spec.per_id_thresholds else ({}, {}))

    history = getattr(spec.detector, "history_", None) or []
    used_ids = sorted(set(ids_fit or []) | set(ids_hold or []))
    full_summary: dict[str, Any] = {
        **(summary or {}),
        "n_fit_clips": len(fit),
        "n_holdout_clips": len(holdout),
        "holdout": spec.holdout,
        "n_vectors": sum(int(f.shape[0]) for f in fit),
        "threshold_scores": source,
        "cross_fit_folds": min(MAX_FOLDS, len(fit)) if cross_fitted is not None else None,
        "score_stats": {"mean": float(np.mean(scores)), "std": float(np.std(scores)),
                        "min": float(np.min(scores)), "max": float(np.max(scores))},
        # the MIMII study's decision rule, reported by `evaluate` beside the bundle's own threshold
        "train_score_percentiles": {str(q): float(np.percentile(train_scores, q)) for q in TRAIN_PERCENTILES},
        "seed": spec.seed,
        "fit_seconds": round(t_fit, 3),
        "fit_cpu_seconds": round(cpu_fit, 3),
        "epochs_run": len(history),
        "final_loss": history[-1]["loss"] if history else None,
        "final_val_loss": history[-1].get("val_loss") if history else None,
        "loss_curve": [{k: h[k] for k in ("epoch", "loss", "val_loss") if k in h} for h in history],
    }
    full_summary.setdefault("n_clips", len(fit) + len(holdout))
    config = {**spec.config, "params": spec.detector.get_params(),
              "stages": [{"name": s.name, "params": s.get_params()} for s in spec.stages]}
    path = save_bundle(
        out, spec.detector, spec.feature, threshold, info, machine, used_ids, full_summary,
        window_seconds=spec.window_seconds, hop_seconds=spec.hop_seconds,
        extra={"config": config, **(extra or {})}, stages=spec.stages, per_id_thresholds=per_id, members=members,
    )
    log.info("%s/%s: threshold %.6g (%s%s), bundle %s", spec.detector.name, machine, threshold, info["method"],
             f", {len(per_id)} per id" if per_id else "", path)
    return path


def _nominal_quantile(spec: dict[str, Any]) -> float | None:
    """The quantile of normal scores a threshold rule estimates (None for a fixed value)."""
    if spec["method"] == "gamma":
        return float(spec.get("q", 0.9))
    if spec["method"] == "percentile":
        return float(spec["percentile"]) / 100.0
    return None


def _per_id_thresholds(scores: np.ndarray, ids: Sequence[str] | None, spec: ModelSpec,
                       source: str) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Each id's own threshold (from its own scores, by the global rule) and its calibration on those scores
    (`source`: where the scores came from), so that how sure a per-id threshold is can be read beside it."""
    if ids is None or spec.threshold["method"] == "fixed" or len(set(ids)) < 2:
        return {}, {}
    need = MIN_GAMMA_SCORES if spec.threshold["method"] == "gamma" else 1
    thresholds: dict[str, float] = {}
    calibrations: dict[str, dict[str, Any]] = {}
    for ident in sorted(set(ids)):
        own = np.asarray([s for s, i in zip(scores, ids) if i == ident])
        if own.size < need:
            log.info("id %s: %d held-out scores, too few for its own threshold; it uses the global one", ident,
                     own.size)
            continue
        try:
            thresholds[ident] = fit_threshold(own, **spec.threshold)[0]
        except ValueError as exc:  # e.g. all equal: the global threshold still holds
            log.info("id %s: no threshold of its own (%s); it uses the global one", ident, exc)
            continue
        calibrations[ident] = {**calibration(own, thresholds[ident], _nominal_quantile(spec.threshold)),
                               "scores": source}
    return thresholds, calibrations
