"""Training an ensemble: member bundles first, then the combiner on their scores of normal clips they did not see.

`asd-offline train --model ensemble --config configs/ensemble.yaml` comes here through `train_bundle`. The config's
`params.members` lists the members, each `{name, model, config}` (`config`: a path to the member's own config, or
the config itself inline; omitted: the model's defaults). One seeded split serves all of them:
1. the normal training clips are split into clips to fit and held-out clips (`holdout`);
2. every member is fitted on the fit clips through `fit_bundle` (its threshold from the held-out clips), with
   features computed once per distinct feature config;
3. each member scores the held-out clips; the combiner (`ScoreEnsemble`) learns each member's normal score
   statistics from those scores, never from test data;
4. the ensemble's threshold is set on its own combined scores of the same held-out clips, and the bundle is
   written with the member bundles inside (`members/NAME/`).

With few clips (`holdout` would leave fewer than `MIN_HELD_OUT` held-out clips, or a member's gamma threshold too
few scores: `needs_cross_fit`) nothing is held out: every member is fitted on all clips, and the scores that
normalise it are its cross-fitted scores of those clips (each clip scored by a copy of the member fitted on the
other folds, `cross_fitted_scores`), so a normaliser still only sees scores of clips the scoring model did not
see. This is what lets an ensemble train on 2 to 5 clips, the regime of issue #13.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from models.detectors import get_detector
from models.scoring import Chain
from models.training.recipe import (
    MAX_FOLDS,
    ClipLike,
    ModelSpec,
    _featurise,
    build_spec,
    check_config,
    cross_fitted_scores,
    fit_bundle,
    held_out_count,
    needs_cross_fit,
    select_training_clips,
    split_holdout,
)

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
MIN_HELD_OUT = 2  # a standard deviation (z-score) or a rank needs at least two normal scores per member


def member_specs(members: Sequence[Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, model, config) per member entry, checked: plain unique names, registered non-ensemble models, configs
    that are files (read as YAML) or mappings."""
    import yaml

    if not members or len(members) < 2:
        raise ValueError("an ensemble needs at least 2 members under params.members: [{name, model, config}, ...]")
    out, seen = [], set()
    for i, entry in enumerate(members):
        if not isinstance(entry, dict) or set(entry) - {"name", "model", "config"} or "model" not in entry:
            raise ValueError(f"params.members[{i}]: expected {{name, model, config}}, got {entry!r}")
        model = str(entry["model"])
        name = str(entry.get("name", model))
        if not _NAME.match(name) or name in seen:
            raise ValueError(f"params.members[{i}]: member name {name!r} must be a plain name, used once")
        if get_detector(model).combines_members:
            raise ValueError(f"params.members[{i}]: an ensemble cannot be a member of an ensemble")
        config = entry.get("config") or {}
        if isinstance(config, str):
            path = Path(config)
            if not path.is_file():
                raise ValueError(f"params.members[{i}]: config file {config!r} not found (paths are relative to the "
                                 "working directory)")
            config = yaml.safe_load(path.read_text()) or {}
        if not isinstance(config, dict):
            raise ValueError(f"params.members[{i}]: config must be a file path or a mapping")
        check_config(config, where=f"params.members[{i}].config")
        seen.add(name)
        out.append((name, model, {**config, "model": model}))
    return out


def train_ensemble(
    clips: Sequence[ClipLike],
    machine: str,
    out: str | Path,
    config: dict[str, Any],
    *,
    ids: Sequence[str] | None = None,
    data_source: str | None = None,
    device: str | None = None,
    progress: bool | None = None,
    epochs: int | None = None,
) -> Path:
    """Members, then the combiner on their held-out (or, with few clips, cross-fitted) scores; writes the ensemble
    bundle at `out`."""
    from models.device import select_device

    members = member_specs((config.get("params") or {}).get("members"))
    # a member's own threshold (only its bundle uses it, on the same held-out clips) follows the ensemble's
    inherit = {"threshold": config["threshold"]} if "threshold" in config else {}
    specs = [(name, build_spec(model, {**cfg, **inherit}, device=device, progress=progress, epochs=epochs))
             for name, model, cfg in members]
    # the bundle records each member whole (name, model, config read from its file), in score-vector order
    entries = [{"name": name, "model": model, "config": cfg} for name, model, cfg in members]
    spec = build_spec("ensemble", {**config, "params": {**(config.get("params") or {}), "members": entries}},
                      device=device, progress=progress, epochs=epochs, feature_overrides={"dim": len(members)})
    chosen = select_training_clips(clips, machine, ids)
    cross = _cross_fit(len(chosen), spec.holdout, [mspec for _, mspec in specs])
    fit_clips, hold_clips = (list(chosen), []) if cross else split_holdout(chosen, spec.holdout, spec.seed)
    fit_ids, hold_ids = [c.id for c in fit_clips], [c.id for c in hold_clips]
    dev = select_device(device or "auto")
    show = bool(progress) if progress is not None else False
    feats: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}  # feature config -> (fit, held out)
    raw = []
    if cross:
        log.info("ensemble/%s: %d clips are too few to hold %.0f%% out: every member is fitted on all of them and "
                 "normalised by its cross-fitted scores (%d folds)", machine, len(chosen), 100 * spec.holdout,
                 min(MAX_FOLDS, len(chosen)))
    with tempfile.TemporaryDirectory(prefix="ensemble_members_") as tmp:
        paths = {}
        for (name, mspec), (_, model, cfg) in zip(specs, members):
            key = json.dumps(mspec.feature.to_dict(), sort_keys=True)
            if key not in feats:
                feats[key] = (_featurise(fit_clips, mspec.feature, dev, show)[0],
                              _featurise(hold_clips, mspec.feature, dev, show)[0] if hold_clips else [])
            fit_f, hold_f = feats[key]
            log.info("ensemble member %s (%s): %d clips to fit, %d held out", name, mspec.detector.name,
                     len(fit_f), len(hold_f))
            summary = {"data": data_source, "n_clips": len(chosen)}
            if cross:
                def rebuild(model: str = model, cfg: dict[str, Any] = cfg) -> ModelSpec:
                    return build_spec(model, {**cfg, **inherit}, device=device, progress=False, epochs=epochs)

                normal = cross_fitted_scores(rebuild, fit_f, fit_ids, spec.seed)
                paths[name] = fit_bundle(Path(tmp) / name, mspec, fit_f, fit_ids, machine=machine, summary=summary,
                                         cross_fitted=normal)
                raw.append(torch.from_numpy(normal))
            else:
                paths[name] = fit_bundle(Path(tmp) / name, mspec, fit_f, fit_ids, hold_f, hold_ids,
                                         machine=machine, summary=summary)
                raw.append(torch.from_numpy(Chain(mspec.stages, mspec.detector).score_windows(hold_f, hold_ids)))
        rows = list(torch.stack(raw, dim=1).float().split(1))  # one [1, M] score vector per normalising clip
        summary = {"data": data_source, "n_clips": len(chosen), "n_member_fit_clips": len(fit_clips),
                   "n_normalising_clips": len(rows), "normalising_scores": "cross-fitted" if cross else "holdout"}
        how = ("members fitted on all clips; combiner fitted and thresholded on the members' cross-fitted scores "
               "of them (each clip scored by a copy of the member that did not see it)" if cross else
               "fitted and thresholded on the members' scores of held-out normal clips (the members never saw "
               "them)")
        return fit_bundle(out, spec, rows, hold_ids or fit_ids, machine=machine, summary=summary, members=paths,
                          extra={"ensemble": how})


def _cross_fit(n: int, holdout: float, specs: Sequence[ModelSpec]) -> bool:
    """True when the members must be normalised by cross-fitted scores: `holdout` of `n` clips would hold out fewer
    than `MIN_HELD_OUT` (none at all with holdout 0: a member's scores of its own training clips would make a
    normaliser that calls every new clip anomalous), or too few for a member's gamma threshold. Fewer than 2 clips:
    `needs_cross_fit`'s ValueError."""
    member_needs = [needs_cross_fit(n, holdout, gamma=s.threshold["method"] == "gamma") for s in specs]
    return held_out_count(n, holdout) < MIN_HELD_OUT or any(member_needs)
