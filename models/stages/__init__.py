"""Stages: learned pre-processing between features and detector, one module per stage, registered by name in
`STAGES`. Every module here (except `base` and names starting with `_`) is imported, so a new stage only has to
exist and use `@register_stage`."""

from __future__ import annotations

from models.registry import import_submodules
from models.stages.base import STAGES, Stage, register_stage

import_submodules(__name__, __path__, skip=lambda name: name == "base")


def get_stage(name: str) -> type[Stage]:
    """The class registered as `name`, or a ValueError that lists the known names."""
    return STAGES.lookup(name)


__all__ = ["STAGES", "Stage", "get_stage", "register_stage"]
