"""Detectors, one module per system, each registered by name in `REGISTRY` (the name bundles store).

Every module in this package (except `base` and names starting with `_`) is imported here, so a new detector only
has to exist and use `@register`; `asd-offline models`, training, bundle loading and the parametrized tests then
find it.
"""

from __future__ import annotations

import importlib
import pkgutil

from models.detectors.base import REGISTRY, Detector, NotFittedError, register

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")


def get_detector(name: str) -> type[Detector]:
    """The class registered as `name`, or a ValueError that lists the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; registered: {', '.join(sorted(REGISTRY))}") from None


__all__ = ["REGISTRY", "Detector", "NotFittedError", "get_detector", "register"]
