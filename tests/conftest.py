"""Shared test helpers. Service fixtures (mosquitto, pulseaudio, prometheus) live in tests/integration/conftest.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def in_ci() -> bool:
    """In CI a missing service is a failure, not a skip (DESIGN: real parts, not mocks)."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> None:
    if in_ci():
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """../shared/data/real when present; the tests using it skip (also in CI) when it is absent, as its README asks."""
    if not (REAL_DATA / "manifest.csv").exists():
        pytest.skip(f"real recordings not found at {REAL_DATA}")
    return REAL_DATA
