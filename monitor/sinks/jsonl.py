"""JSONL sink: an append-only local record of alarms, source health and each source's threshold at start, one JSON
object per line.

Each line is the event's `to_dict()` plus `"kind"` (`alarm`, `status`, `score`, `counter`, `threshold`) so that a
reader can tell SourceStatus from ScoreUpdate without guessing from the fields. The file is line-buffered: every
complete line reaches the OS at once, so a crash loses at most the line being written and `tail -f` works.
Scores are left out unless asked for (they are many per second).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import IO, Any

from monitor.events import AlarmEvent, CounterEvent, Event, ScoreUpdate, SourceStatus, ThresholdInfo

log = logging.getLogger(__name__)

_KINDS: dict[type, str] = {AlarmEvent: "alarm", SourceStatus: "status", ScoreUpdate: "score", CounterEvent: "counter",
                           ThresholdInfo: "threshold"}


class JsonlSink:
    """Appends events to `path` (created with its parent directories)."""

    name = "jsonl"

    def __init__(self, path: str | Path, *, include_scores: bool = False, include_counters: bool = False) -> None:
        self.path = Path(path)
        self.include_scores = include_scores
        self.include_counters = include_counters
        self.errors = 0
        self._file: IO[str] | None = None

    async def start(self) -> None:
        """Open the file for appending; a path that cannot be written raises OSError naming it."""
        if self._file is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8", buffering=1)
        except OSError as exc:
            raise OSError(f"JSONL sink cannot open {self.path} for appending: {exc.strerror or exc}") from exc

    def publish(self, event: Event) -> None:
        """Write one line; a write error (disk full) is logged and counted, never raised into the pipeline."""
        if isinstance(event, ScoreUpdate) and not self.include_scores:
            return
        if isinstance(event, CounterEvent) and not self.include_counters:
            return
        if self._file is None:
            raise RuntimeError(f"JsonlSink({self.path}) used before start()")
        record = {"kind": _KINDS[type(event)], **json_safe(event.to_dict())}
        try:
            self._file.write(json.dumps(record, allow_nan=False) + "\n")
        except OSError as exc:
            self.errors += 1
            if self.errors == 1:
                log.error("JSONL sink cannot write to %s: %s", self.path, exc)

    async def close(self) -> None:
        """Flush and close; safe to call twice."""
        if self._file is None:
            return
        try:
            self._file.flush()
        finally:
            self._file.close()
            self._file = None


def json_safe(data: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN/inf (a silent window is -inf dBFS): use null instead of writing invalid JSON.
    Shared by the sinks that serialise events (JSONL, MQTT)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in data.items()}
