"""The bundle: a directory that is the whole deployable model, and the only thing the monitor loads.

    BUNDLE_DIR/bundle.json   what the model is (schema 2, DESIGN.md): kind, detector name + hyper-parameters,
                             granularity, feature config, stages, sample rate, window/hop, threshold (+ how it was
                             set, + per machine id), machine type/ids, learned metadata, member bundles, training
                             summary, software versions, creation time, sha256 of weights.pt
    BUNDLE_DIR/weights.pt    `torch.save` of one flat dict[str, Tensor]: the detector's `state_dict()` under
                             "detector.", stage i's under "stage{i}."
    BUNDLE_DIR/members/NAME/ member bundles (ensembles), each complete in itself

Loading must be safe on a bundle from an untrusted place: weights are read with `torch.load(weights_only=True)`
(no arbitrary unpickling), file names are fixed rather than taken from the JSON (member names are checked to be
plain names), and the checksum catches a truncated or swapped weights file before torch parses it. Every problem is
a `BundleError` that names the file. Schema-1 bundles (no stages, no members, unprefixed detector weights) still
load and score as they did.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import platform
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from models.detectors import REGISTRY, Detector
from models.device import select_device
from models.features import FeatureConfig, feature_from_dict
from models.features.base import CLIP_GROUP
from models.scoring import Chain, EnsembleScorer, MemberGroup, StreamScorer
from models.stages import STAGES, Stage

log = logging.getLogger(__name__)

BUNDLE_SCHEMA = 2
READABLE_SCHEMAS = (1, 2)
BUNDLE_JSON = "bundle.json"
WEIGHTS_FILE = "weights.pt"
MEMBERS_DIR = "members"
BUNDLE_KINDS = ("detector", "classifier", "denoiser")
DEFAULT_WINDOW_SECONDS = 10.0
DEFAULT_HOP_SECONDS = 1.0
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class BundleError(ValueError):
    """A bundle that cannot be written or loaded; the message names the directory or file and what is wrong."""


@dataclass
class Bundle:
    """A loaded bundle: feature front end, fitted stages and detector, and everything needed to turn input into
    decisions. `stream_scorer` is the one way it scores; `score_wavs` is that scorer fed whole clips."""

    path: Path
    name: str
    kind: str
    machine: str
    ids: list[str]
    feature: FeatureConfig
    stages: list[Stage]
    detector: Detector
    sample_rate: int
    threshold: float
    threshold_method: str
    per_id_thresholds: dict[str, float]
    window_seconds: float
    hop_seconds: float
    device: torch.device
    learned: dict[str, Any] = field(default_factory=dict)
    members: dict[str, "Bundle"] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.chain = Chain(self.stages, self.detector)

    @property
    def granularity(self) -> str:
        return self.chain.granularity

    @property
    def needs_id(self) -> bool:
        """Scores depend on the machine id: every source and file must say which machine it is."""
        return self.detector.needs_ids

    def threshold_for(self, machine_id: str | None = None) -> float:
        """The id's own threshold when the bundle has one, else the global one."""
        if machine_id is not None and machine_id in self.per_id_thresholds:
            return self.per_id_thresholds[machine_id]
        return self.threshold

    def calibration_for(self, machine_id: str | None = None) -> dict[str, Any] | None:
        """How sure the threshold `threshold_for(machine_id)` is (`models.threshold.calibration` plus `scores`, where
        the scores came from): the id's own when it has its own threshold, else the global one. None when the
        bundle records none for that threshold: written before calibration was recorded, or saved with a threshold
        set by hand and no scores; for an id's own threshold, written before per-id calibration (the global one
        would describe another number)."""
        threshold = self.meta.get("threshold")
        info = threshold.get("info") if isinstance(threshold, dict) else None
        if not isinstance(info, dict):
            return None
        if machine_id is not None and machine_id in self.per_id_thresholds:
            per_id = info.get("per_id_calibration")
            found = per_id.get(machine_id) if isinstance(per_id, dict) else None
        else:
            found = info.get("calibration")
        return found if isinstance(found, dict) else None

    def check_machine_id(self, machine_id: str | None) -> None:
        """BundleError when this bundle (or a member of it) cannot score a stream of `machine_id` (None: not said)."""
        for b in self.members.values():
            b.check_machine_id(machine_id)
        if machine_id is None:
            if self.needs_id:
                raise BundleError(f"{self.path}: {self.name} scores per machine id; give the source a machine_id "
                                  f"(one of {', '.join(self.ids) or 'the training ids'})")
            return
        if self.needs_id and self.ids and machine_id not in self.ids:
            raise BundleError(f"{self.path}: machine id {machine_id!r} was not trained; known: {', '.join(self.ids)}")

    @property
    def input_kind(self) -> str:
        """What the bundle scores: `audio`, or `vectors` (rows of pre-computed numbers). An ensemble scores audio
        through its members; its own feature is the vector of member scores."""
        return "audio" if self.members else self.feature.input_kind

    def ordered_members(self) -> list["Bundle"]:
        """An ensemble's member bundles in the order of its score vector."""
        return [self.members[name] for name in self.detector.member_names()]

    def check_lengths(self, wavs: Sequence[Any]) -> None:
        """ValueError for an input too short for one vector (of every member's feature, for an ensemble)."""
        for feature in [b.feature for b in self.ordered_members()] if self.members else [self.feature]:
            feature.check_lengths(wavs)

    def check_stream(self, machine_id: str | None, kind: str = "detector") -> None:
        """BundleError when this bundle cannot score a live audio stream of `machine_id` as a bundle of `kind` (the
        monitor's check: a source's bundle is a detector, the noise classifier a classifier)."""
        if self.kind != kind:
            hint = {"denoiser": "a denoiser scores nothing: train a detector with it as its first stage "
                                "(lstm_denoiser)",
                    "classifier": "a noise classifier goes to --noise-bundle (noise.bundle), beside a detector"}
            raise BundleError(f"{self.path}: a {self.kind} bundle ({self.name}), not a {kind}; "
                              f"{hint.get(self.kind, 'give a detector bundle')}")
        if self.input_kind != "audio":
            raise BundleError(f"{self.path}: scores pre-computed {self.feature.kind}, not audio "
                              "(score its files with `asd-offline score`)")
        self.check_machine_id(machine_id)

    def stream_scorer(self, n_streams: int = 0, window: float | None = None, hop: float | None = None,
                      device: str | torch.device | None = None,
                      machine_ids: Sequence[str | None] | None = None) -> StreamScorer | EnsembleScorer:
        """Window scores of `n_streams` streams fed chunk by chunk (seconds; `window=None`: each stream is one
        clip, scored at `flush()`). See `models.scoring.StreamScorer`."""
        dev = self.device if device is None else device
        for mid in machine_ids if machine_ids is not None else [None] * n_streams:
            self.check_machine_id(mid)
        if self.members:
            return EnsembleScorer(self.detector, self._member_groups(), n_streams, window, hop, dev, machine_ids)
        return StreamScorer(self.feature, self.chain, n_streams, window, hop, dev, machine_ids)

    def _member_groups(self) -> list[tuple[FeatureConfig, MemberGroup]]:
        """Members grouped by identical feature configs (each group's feature is computed once)."""
        groups: dict[str, tuple[FeatureConfig, list[int]]] = {}
        members = self.ordered_members()
        for pos, b in enumerate(members):
            groups.setdefault(json.dumps(b.feature.to_dict(), sort_keys=True), (b.feature, []))[1].append(pos)
        return [(f, MemberGroup(self.detector, [members[p].chain for p in pos], pos)) for f, pos in groups.values()]

    def score_features(self, features: Sequence[torch.Tensor], ids: Sequence[str] | None = None) -> np.ndarray:
        """Clip scores from per-clip feature matrices `[n_i, dim]` computed with `self.feature`."""
        return self.chain.score_windows(features, ids)

    def score_wavs(self, wavs: Sequence[np.ndarray], ids: Sequence[str | None] | None = None) -> np.ndarray:
        """Clip scores of whole inputs (mono float32 clips at `self.sample_rate`, or `[n, dim]` rows for a vectors
        bundle): the stream scorer fed each clip as one window. A clip too short for one vector is an error."""
        self.check_lengths(wavs)
        out: list[float] = []
        for start in range(0, len(wavs), CLIP_GROUP):
            part = list(wavs[start : start + CLIP_GROUP])
            part_ids = None if ids is None else list(ids[start : start + CLIP_GROUP])
            scorer = self.stream_scorer(machine_ids=part_ids or [None] * len(part))
            scorer.accept(part)
            out += [s[0][1] for s in scorer.flush()]
        return np.asarray(out, dtype=np.float64)


def software_versions() -> dict[str, str]:
    """Versions recorded in each bundle, so a surprising score can be traced to the code that produced it."""
    from models.runtime import own_version

    return {"asd-monitor": own_version(), "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_bundle(
    path: str | Path,
    detector: Detector,
    feature_cfg: FeatureConfig,
    threshold: float,
    threshold_info: dict[str, Any],
    machine: str,
    ids: Sequence[str],
    train_summary: dict[str, Any],
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
    hop_seconds: float = DEFAULT_HOP_SECONDS,
    extra: dict[str, Any] | None = None,
    *,
    stages: Sequence[Stage] = (),
    per_id_thresholds: Mapping[str, float] | None = None,
    members: Mapping[str, str | Path] | None = None,
) -> Path:
    """Write fitted stages and detector and their context as a bundle directory; returns the directory.

    `members` maps names to existing bundle directories, copied into `members/NAME/` (ensembles).
    weights.pt is written before bundle.json (each atomically), so a directory with a bundle.json whose checksum
    matches is complete.
    """
    out = Path(path)
    if detector.name not in REGISTRY:
        raise BundleError(f"detector {detector.name!r} is not registered, a bundle of it could not be loaded")
    for st in stages:
        if st.name not in STAGES:
            raise BundleError(f"stage {st.name!r} is not registered, a bundle of it could not be loaded")
    if detector.bundle_kind not in BUNDLE_KINDS:
        raise BundleError(f"{detector.name}: bundle kind {detector.bundle_kind!r} is not one of {BUNDLE_KINDS}")
    per_id = {str(k): float(v) for k, v in (per_id_thresholds or {}).items()}
    if not all(math.isfinite(v) for v in [float(threshold), *per_id.values()]):
        raise BundleError(f"threshold must be finite, got {threshold!r} (per id: {per_id})")
    if not (window_seconds > 0 and hop_seconds > 0):
        raise BundleError(f"window and hop must be positive, got {window_seconds} and {hop_seconds}")
    state: dict[str, torch.Tensor] = {}
    parts: list[tuple[str, Detector | Stage]] = [(f"stage{i}", st) for i, st in enumerate(stages)]
    parts.append(("detector", detector))
    for prefix, part in parts:
        for k, v in part.state_dict().items():
            if not isinstance(k, str) or not isinstance(v, torch.Tensor):
                raise BundleError(f"{part.name}.state_dict() must map names to tensors; bad entry: {k!r}")
            state[f"{prefix}.{k}"] = v.detach().cpu().contiguous()
    member_names = list(members or {})
    for name in member_names:
        if not _MEMBER_NAME.match(name):
            raise BundleError(f"member name {name!r} must be a plain name (letters, digits, _ . -)")
    # only complete, valid bundles become members; an ensemble hears audio at its members' common rate
    member_rates = {int(load_bundle(src, device="cpu").sample_rate) for src in (members or {}).values()}
    if len(member_rates) > 1:
        raise BundleError(f"member bundles run at different sample rates {sorted(member_rates)}; an ensemble needs one")
    sample_rate = member_rates.pop() if member_rates else int(feature_cfg.sample_rate)
    buf = io.BytesIO()
    torch.save(state, buf)
    weights = buf.getvalue()
    meta = {
        "schema": BUNDLE_SCHEMA,
        "kind": detector.bundle_kind,
        "model": {"name": detector.name, "params": detector.get_params()},
        "granularity": Chain(list(stages), detector).granularity,
        "feature": feature_cfg.to_dict(),
        "stages": [{"name": st.name, "params": st.get_params()} for st in stages],
        "sample_rate": sample_rate,
        "window_seconds": float(window_seconds),
        "hop_seconds": float(hop_seconds),
        "threshold": {"value": float(threshold), "method": threshold_info.get("method", "unknown"),
                      "info": threshold_info, "per_id": per_id},
        "machine": {"type": machine, "ids": list(ids)},
        "learned": {prefix: part.learned() for prefix, part in parts if part.learned()},
        "members": member_names,
        "training": train_summary,
        "versions": software_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "weights_sha256": _sha256(weights),
        "weights_bytes": len(weights),
        "extra": extra or {},
    }
    try:
        text = json.dumps(meta, indent=2, sort_keys=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"bundle metadata is not plain JSON (params, summary, learned or extra): {exc}") from exc
    out.mkdir(parents=True, exist_ok=True)
    if member_names:
        dest = out / MEMBERS_DIR
        shutil.rmtree(dest, ignore_errors=True)
        for name, src in (members or {}).items():
            shutil.copytree(src, dest / name)
    _write_atomic(out / WEIGHTS_FILE, weights)
    _write_atomic(out / BUNDLE_JSON, (text + "\n").encode())
    log.info("wrote bundle %s (%s, threshold %.6g)", out, detector.name, threshold)
    return out


def _field(meta: dict[str, Any], dotted: str, kind: type | tuple[type, ...], where: Path) -> Any:
    node: Any = meta
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise BundleError(f"{where}: missing field {dotted!r}")
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, kind):  # JSON true is an int to Python, never wanted here
        raise BundleError(f"{where}: field {dotted!r} has the wrong type ({type(node).__name__})")
    return node


def _read_weights(path: Path, expected_sha: str) -> dict[str, torch.Tensor]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: weights file missing") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read weights: {exc}") from exc
    if _sha256(data) != expected_sha:
        raise BundleError(f"{path}: checksum mismatch, the weights file is corrupted or was replaced")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse is the same user-facing problem
        raise BundleError(f"{path}: not a plain tensor file (refused or unreadable): {exc}") from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise BundleError(f"{path}: expected a flat dict of name -> tensor")
    # a NaN weight gives NaN scores, and a source that can never alarm (infinities may be sentinels, NaN never is)
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and bool(torch.isnan(v).any()))
    if bad:
        raise BundleError(f"{path}: NaN in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}: the model is "
                          "broken (a diverged training?); retrain it")
    return state


def load_bundle(path: str | Path, device: str | torch.device = "auto") -> Bundle:
    """Load and validate a bundle directory (schema 1 or 2); stages and detector are ready to score on `device`."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"bundle directory not found: {root}")
    json_path = root / BUNDLE_JSON
    try:
        meta = json.loads(json_path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{json_path}: missing (not a bundle directory?)") from None
    except OSError as exc:  # a folder, unreadable
        raise BundleError(f"{json_path}: cannot be read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{json_path}: malformed JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise BundleError(f"{json_path}: expected a JSON object")
    schema = meta.get("schema")
    if schema not in READABLE_SCHEMAS or isinstance(schema, bool):
        raise BundleError(f"{json_path}: bundle schema {schema!r}, this version reads schemas "
                          f"{', '.join(map(str, READABLE_SCHEMAS))}")
    if schema == 1:
        meta = _upgrade_schema1(meta)

    name = _field(meta, "model.name", str, json_path)
    if name not in REGISTRY:
        raise BundleError(f"{json_path}: unknown model {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    params = _field(meta, "model.params", dict, json_path)
    kind = _field(meta, "kind", str, json_path)
    if kind not in BUNDLE_KINDS:
        raise BundleError(f"{json_path}: kind {kind!r} is not one of {', '.join(BUNDLE_KINDS)}")
    try:
        feature = feature_from_dict(_field(meta, "feature", dict, json_path))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{json_path}: bad feature config: {exc}") from exc
    sample_rate = _field(meta, "sample_rate", int, json_path)
    member_names = _field(meta, "members", list, json_path)
    if sample_rate != feature.sample_rate and not member_names:
        raise BundleError(f"{json_path}: sample_rate {sample_rate} differs from the feature's {feature.sample_rate}")
    threshold = float(_field(meta, "threshold.value", (int, float), json_path))
    per_id_raw = _field(meta, "threshold.per_id", dict, json_path)
    window = float(_field(meta, "window_seconds", (int, float), json_path))
    hop = float(_field(meta, "hop_seconds", (int, float), json_path))
    try:
        per_id = {str(k): float(v) for k, v in per_id_raw.items()}
    except (TypeError, ValueError):
        raise BundleError(f"{json_path}: threshold.per_id must map ids to numbers") from None
    if not (all(math.isfinite(v) for v in [threshold, *per_id.values()]) and window > 0 and hop > 0):
        raise BundleError(f"{json_path}: thresholds must be finite and window/hop positive")
    stage_specs = _field(meta, "stages", list, json_path)
    learned = _field(meta, "learned", dict, json_path)
    sha = _field(meta, "weights_sha256", str, json_path)

    state = _read_weights(root / WEIGHTS_FILE, sha)
    if schema == 1:
        state = {f"detector.{k}": v for k, v in state.items()}
    dev = select_device(device)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        prefix, dot, rest = key.partition(".")
        if not dot:
            raise BundleError(f"{root / WEIGHTS_FILE}: key {key!r} has no part prefix (detector., stage0. ...)")
        parts.setdefault(prefix, {})[rest] = value
    stages: list[Stage] = []
    for i, spec in enumerate(stage_specs):
        if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("params"), dict)):
            raise BundleError(f"{json_path}: stages[{i}] must be {{'name': str, 'params': {{...}}}}")
        if spec["name"] not in STAGES:
            raise BundleError(f"{json_path}: unknown stage {spec['name']!r}; registered: {', '.join(sorted(STAGES))}")
        stages.append(_restore(STAGES[spec["name"]], spec["params"], parts.pop(f"stage{i}", {}),
                               learned.get(f"stage{i}"), dev, root))
    detector = _restore(REGISTRY[name], params, parts.pop("detector", {}), learned.get("detector"), dev, root)
    try:
        detector.check_feature(feature)
    except ValueError as exc:
        raise BundleError(f"{json_path}: {exc}") from None
    if parts:
        raise BundleError(f"{root / WEIGHTS_FILE}: weights for parts the bundle does not have: {sorted(parts)}")
    members: dict[str, Bundle] = {}
    for m in member_names:
        if not isinstance(m, str) or not _MEMBER_NAME.match(m):
            raise BundleError(f"{json_path}: member name {m!r} is not a plain name")
        try:
            members[m] = load_bundle(root / MEMBERS_DIR / m, device=dev)
        except BundleError as exc:
            raise BundleError(f"{root}: member {m!r}: {exc}") from exc
        if members[m].sample_rate != sample_rate:
            raise BundleError(f"{json_path}: member {m!r} runs at {members[m].sample_rate} Hz, the ensemble at "
                              f"{sample_rate}")
    if detector.combines_members:
        try:
            wanted = detector.member_names()
        except ValueError as exc:
            raise BundleError(f"{json_path}: {exc}") from None
        if sorted(wanted) != sorted(members):
            raise BundleError(f"{json_path}: the ensemble combines members {wanted}, the bundle holds "
                              f"{sorted(members)}")
    machine = meta.get("machine") if isinstance(meta.get("machine"), dict) else {}
    return Bundle(
        path=root,
        name=name,
        kind=kind,
        machine=str(machine.get("type", "")),
        ids=[str(i) for i in machine.get("ids", [])],
        feature=feature,
        stages=stages,
        detector=detector,
        sample_rate=sample_rate,
        threshold=threshold,
        threshold_method=str(meta["threshold"].get("method", "unknown")),
        per_id_thresholds=per_id,
        window_seconds=window,
        hop_seconds=hop,
        device=dev,
        learned=learned,
        members=members,
        meta=meta,
    )


def _restore(cls: type, params: dict[str, Any], state: dict[str, torch.Tensor], learned: Any,
             device: torch.device, root: Path) -> Any:
    """An unfitted twin from the stored hyper-parameters, then its learned state; runs no stored code."""
    try:
        obj = cls.from_params(params)
        if "device" in obj.param_names():
            obj.set_params(device=str(device))
        obj.load_state_dict(state, learned if isinstance(learned, dict) else None)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{root}: weights do not fit {cls.name!r}: {exc}") from exc
    return obj


def _upgrade_schema1(meta: dict[str, Any]) -> dict[str, Any]:
    """Read a schema-1 bundle.json as schema 2: no stages, no members, a detector bundle (its unprefixed weights
    are the detector's; `load_bundle` prefixes them)."""
    meta = dict(meta)
    weights = meta.get("weights") if isinstance(meta.get("weights"), dict) else {}
    meta.setdefault("weights_sha256", weights.get("sha256"))
    meta.setdefault("versions", meta.get("software", {}))
    meta.update(kind="detector", stages=[], members=[], learned={})
    if isinstance(meta.get("threshold"), dict):
        meta["threshold"] = {**meta["threshold"], "per_id": {}}
    return meta
