"""Feature extractors shared by training and the monitor. Each config has `.stream()`; offline = one stream per clip."""

from __future__ import annotations

from typing import Any

from models.features.logmel import (
    FeatureInputError,
    LogMelBatchStream,
    LogMelConfig,
    LogMelStream,
)

FEATURES: dict[str, type] = {LogMelConfig.kind: LogMelConfig}


def feature_from_dict(d: dict[str, Any]) -> LogMelConfig:
    """Rebuild a feature config from its JSON form (as stored in a bundle)."""
    kind = d.get("kind")
    if kind not in FEATURES:
        raise ValueError(f"unknown feature kind {kind!r}; known: {sorted(FEATURES)}")
    return FEATURES[kind].from_dict(d)


__all__ = [
    "FEATURES",
    "FeatureInputError",
    "LogMelBatchStream",
    "LogMelConfig",
    "LogMelStream",
    "feature_from_dict",
]
