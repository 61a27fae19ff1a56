"""Detectors, one module per system, each registered by name in `REGISTRY` (the name bundles store).

Every module in this package (except `base` and names starting with `_`) is imported here, so a new detector only
has to exist and use `@register`; `asd-offline models`, training, bundle loading and the parametrized tests then
find it.
"""

from __future__ import annotations

from models.detectors.base import REGISTRY, Detector, ExampleInput, NotFittedError, register
from models.registry import import_submodules

import_submodules(__name__, __path__, skip=lambda name: name == "base")


def registered(kind: str = "detector") -> list[str]:
    """Sorted names of the registered systems whose bundles are of `kind`: the anomaly detectors by default (trained
    on normal clips); `classifier` and `denoiser` are the noise models (trained on noisy/clean pairs)."""
    return sorted(name for name, cls in REGISTRY.items() if cls.bundle_kind == kind)


def get_detector(name: str) -> type[Detector]:
    """The class registered as `name`, or a ValueError that lists the known names."""
    return REGISTRY.lookup(name)


__all__ = ["REGISTRY", "Detector", "ExampleInput", "NotFittedError", "get_detector", "register", "registered"]
