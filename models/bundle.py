"""The bundle: a directory that is the whole deployable model, and the only thing the monitor loads.

    BUNDLE_DIR/bundle.json   what the model is: schema, detector name + hyper-parameters, feature config, sample
                             rate, window/hop, threshold (+ how it was set), machine type/ids, training summary,
                             software versions, creation time, sha256 of weights.pt
    BUNDLE_DIR/weights.pt    `torch.save` of a flat dict[str, Tensor] (the detector's `state_dict()`)

Loading must be safe on a bundle from an untrusted place: weights are read with `torch.load(weights_only=True)`
(no arbitrary unpickling), the file name is fixed rather than taken from the JSON, and the checksum catches a
truncated or swapped weights file before torch parses it. Every problem is a `BundleError` that names the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from models.detectors import REGISTRY, Detector
from models.device import select_device
from models.features import LogMelConfig, feature_from_dict

log = logging.getLogger(__name__)

BUNDLE_SCHEMA = 1
BUNDLE_JSON = "bundle.json"
WEIGHTS_FILE = "weights.pt"
DEFAULT_WINDOW_SECONDS = 10.0
DEFAULT_HOP_SECONDS = 1.0


class BundleError(ValueError):
    """A bundle that cannot be written or loaded; the message names the directory or file and what is wrong."""


@dataclass
class Bundle:
    """A loaded bundle: a fitted detector plus everything needed to turn audio into decisions."""

    path: Path
    name: str
    machine: str
    ids: list[str]
    feature: LogMelConfig
    sample_rate: int
    threshold: float
    threshold_method: str
    window_seconds: float
    hop_seconds: float
    detector: Detector
    device: torch.device
    meta: dict[str, Any] = field(repr=False)

    def score_features(self, features: Sequence[torch.Tensor]) -> np.ndarray:
        """Clip scores from per-clip feature matrices `[n_i, dim]` computed with `self.feature`."""
        return self.detector.score(features)

    def score_wavs(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        """Clip scores of whole mono float32 clips already at `self.sample_rate` (offline scoring/evaluation)."""
        return self.score_features(self.feature.extract_batch(wavs, self.device))


def software_versions() -> dict[str, str]:
    """Versions recorded in each bundle, so a surprising score can be traced to the code that produced it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("asd-monitor")
    except PackageNotFoundError:
        own = "unknown"
    return {"asd-monitor": own, "torch": torch.__version__, "numpy": np.__version__,
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
    feature_cfg: LogMelConfig,
    threshold: float,
    threshold_info: dict[str, Any],
    machine: str,
    ids: Sequence[str],
    train_summary: dict[str, Any],
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
    hop_seconds: float = DEFAULT_HOP_SECONDS,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a fitted detector and its context as a bundle directory; returns the directory.

    weights.pt is written before bundle.json (each atomically), so a directory with a bundle.json whose checksum
    matches is complete.
    """
    out = Path(path)
    if detector.name not in REGISTRY:
        raise BundleError(f"detector {detector.name!r} is not registered, a bundle of it could not be loaded")
    if not math.isfinite(float(threshold)):
        raise BundleError(f"threshold must be finite, got {threshold!r}")
    if not (window_seconds > 0 and hop_seconds > 0):
        raise BundleError(f"window and hop must be positive, got {window_seconds} and {hop_seconds}")
    state = detector.state_dict()
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise BundleError(f"{detector.name}.state_dict() must map names to tensors; bad entries: {bad}")
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buf)
    weights = buf.getvalue()
    meta = {
        "schema": BUNDLE_SCHEMA,
        "model": {"name": detector.name, "params": detector.get_params()},
        "feature": feature_cfg.to_dict(),
        "sample_rate": int(feature_cfg.sample_rate),
        "window_seconds": float(window_seconds),
        "hop_seconds": float(hop_seconds),
        "threshold": {"value": float(threshold), "method": threshold_info.get("method", "unknown"),
                      "info": threshold_info},
        "machine": {"type": machine, "ids": list(ids)},
        "training": train_summary,
        "software": software_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "weights": {"file": WEIGHTS_FILE, "sha256": _sha256(weights), "bytes": len(weights)},
        "extra": extra or {},
    }
    try:
        text = json.dumps(meta, indent=2, sort_keys=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"bundle metadata is not plain JSON (params, summary or extra): {exc}") from exc
    out.mkdir(parents=True, exist_ok=True)
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
    return state


def load_bundle(path: str | Path, device: str | torch.device = "auto") -> Bundle:
    """Load and validate a bundle directory; the detector is ready to score on `device`."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"bundle directory not found: {root}")
    json_path = root / BUNDLE_JSON
    try:
        meta = json.loads(json_path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{json_path}: missing (not a bundle directory?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{json_path}: malformed JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise BundleError(f"{json_path}: expected a JSON object")
    schema = meta.get("schema")
    if schema != BUNDLE_SCHEMA:
        raise BundleError(f"{json_path}: bundle schema {schema!r}, this version reads schema {BUNDLE_SCHEMA}")

    name = _field(meta, "model.name", str, json_path)
    if name not in REGISTRY:
        raise BundleError(f"{json_path}: unknown model {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    params = _field(meta, "model.params", dict, json_path)
    try:
        feature = feature_from_dict(_field(meta, "feature", dict, json_path))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{json_path}: bad feature config: {exc}") from exc
    sample_rate = _field(meta, "sample_rate", int, json_path)
    if sample_rate != feature.sample_rate:
        raise BundleError(f"{json_path}: sample_rate {sample_rate} differs from the feature's {feature.sample_rate}")
    threshold = float(_field(meta, "threshold.value", (int, float), json_path))
    window = float(_field(meta, "window_seconds", (int, float), json_path))
    hop = float(_field(meta, "hop_seconds", (int, float), json_path))
    if not (math.isfinite(threshold) and window > 0 and hop > 0):
        raise BundleError(f"{json_path}: threshold must be finite and window/hop positive")
    sha = _field(meta, "weights.sha256", str, json_path)

    state = _read_weights(root / WEIGHTS_FILE, sha)
    dev = select_device(device)
    try:
        detector = REGISTRY[name].from_params(params)
        if "device" in detector.param_names():
            detector.set_params(device=str(dev))
        detector.load_state_dict(state)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{root}: weights do not fit model {name!r}: {exc}") from exc
    machine = meta.get("machine") if isinstance(meta.get("machine"), dict) else {}
    return Bundle(
        path=root,
        name=name,
        machine=str(machine.get("type", "")),
        ids=[str(i) for i in machine.get("ids", [])],
        feature=feature,
        sample_rate=sample_rate,
        threshold=threshold,
        threshold_method=str(meta["threshold"].get("method", "unknown")),
        window_seconds=window,
        hop_seconds=hop,
        detector=detector,
        device=dev,
        meta=meta,
    )
