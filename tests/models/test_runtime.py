"""The allocator setting the entry points apply: it must take effect on glibc and never fail elsewhere."""

from __future__ import annotations

import platform

import pytest

from models.runtime import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are a glibc feature")
def test_keep_freed_memory_applies_on_glibc() -> None:
    assert keep_freed_memory() is True
