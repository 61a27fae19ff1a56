"""Process-wide settings that the entry points (CLIs, benchmarks) apply once; never done on import."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)


def setup_logging(level: int) -> None:
    """The one log format of both CLIs, on stderr: `time level logger: message`, without the time under systemd's
    journal (which stamps every line itself; systemd sets `JOURNAL_STREAM` for a service whose output it keeps)."""
    import os
    import sys

    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(level=level, format=stamp + "%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def own_version() -> str:
    """The installed asd-monitor version ("unknown" when run from a source tree that is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("asd-monitor")
    except PackageNotFoundError:
        return "unknown"


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(threshold_bytes: int = 64 << 20) -> bool:
    """Keep freed blocks up to `threshold_bytes` in the heap instead of returning them to the OS.

    glibc serves blocks over 128 KiB with mmap and gives them back on free, so the next call page-faults them in
    (zeroed) again. The feature and scoring hot paths allocate such blocks on every call: log-mel of one 10 s clip
    took 2.9 ms with ~1000 page faults per call, 1.05 ms with this set (measured on the 2-core CPU). Returns False
    where the C library is not glibc (the setting is simply not applied).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("mallopt not available (C library %s): allocator left as is", name)
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * threshold_bytes))
    log.debug("allocator thresholds %s", "raised" if ok else "unchanged")
    return ok
