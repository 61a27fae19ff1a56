"""Feature kinds shared by training and the monitor, one module per kind, each registered by `kind` in `FEATURES`.

Every module in this package (except `base` and names starting with `_`) is imported here, so a new kind only has to
exist and use `@register_feature`; bundles, training and the parametrized parity tests then find it.
"""

from __future__ import annotations

from models.features.base import (
    FEATURES,
    BatchStream,
    FeatureConfig,
    FeatureInputError,
    FrameComputer,
    FramedBatchStream,
    FramedFeature,
    WindowFeature,
    feature_from_dict,
    register_feature,
)
from models.features.logmel import LogMelConfig

from models.registry import import_submodules

import_submodules(__name__, __path__, skip=lambda name: name == "base")

__all__ = [
    "FEATURES",
    "BatchStream",
    "FeatureConfig",
    "FeatureInputError",
    "FrameComputer",
    "FramedBatchStream",
    "FramedFeature",
    "LogMelConfig",
    "WindowFeature",
    "feature_from_dict",
    "register_feature",
]
