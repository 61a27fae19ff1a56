"""Name -> class registries (detectors, stages, feature kinds) and the hyper-parameter conventions they share."""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

T = TypeVar("T", bound=type)


class Registry(dict[str, type]):
    """A dict of registered classes, keyed by the class attribute `key` (the name bundles store).

    `register` is the class decorator; registering a second class under a taken name is an error, while re-importing
    the same class (a module imported twice) is not.
    """

    def __init__(self, what: str, key: str = "name") -> None:
        super().__init__()
        self.what, self.key = what, key

    def register(self, cls: T) -> T:
        name = getattr(cls, self.key, None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__qualname__} needs a non-empty class attribute `{self.key}` to be registered")
        prev = self.get(name)
        if prev is not None and (prev.__module__, prev.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"{self.what} {self.key} {name!r} already registered by {prev.__qualname__}")
        self[name] = cls
        return cls

    def lookup(self, name: str) -> type:
        """The class registered as `name`, or a ValueError that lists the known names."""
        try:
            return self[name]
        except KeyError:
            raise ValueError(f"unknown {self.what} {name!r}; registered: {', '.join(sorted(self))}") from None


class HyperParams:
    """scikit-learn's convention: hyper-parameters are the explicit `__init__` keywords, stored under the same
    attribute names, so `cls(**obj.get_params())` rebuilds an unfitted twin (which is how bundles are loaded)."""

    name: str

    @classmethod
    def param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.param_names()}

    def set_params(self, **params: Any) -> "HyperParams":
        _check_names(type(self), params)
        for k, v in params.items():
            setattr(self, k, v)
        return self

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Any:
        """Build from a config/bundle dict, with an error that lists the valid names instead of a TypeError."""
        _check_names(cls, params)
        return cls(**params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def _check_names(cls: type[HyperParams], params: dict[str, Any]) -> None:
    unknown = sorted(set(params) - set(cls.param_names()))
    if unknown:
        raise ValueError(f"{cls.name}: unknown hyper-parameter(s) {unknown}; valid: {cls.param_names()}")


def import_submodules(package: str, path: list[str], skip: Callable[[str], bool]) -> None:
    """Import every module of a package so that their `@register` decorators run."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(path):
        if not skip(info.name) and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
