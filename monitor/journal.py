"""Open alarms on disk, so that a run killed during an alarm (`kill -9`, a power loss) does not leave it open for
ever: the next run ends each one with an `end` event that says so, which turns the retained MQTT alarm `OFF` and
closes the alarm for every subscriber that saw its `new`.

The journal is a sink: it sees every event and keeps the open alarms; when they changed (`new`, `update`, `end`)
it rewrites one small JSON file (`<state_dir>/open-alarms-<node>.json`, written to a temporary file and renamed, so
a crash mid-write leaves the previous version), at most once per `WRITE_INTERVAL` seconds and at close: hundreds
of sources alarming at once (a fleet-wide noise) cost one write a second, not one per event. The file is a
convenience, not a record: losing it (or a corrupt one, which is logged and set aside), or the last second of
changes, loses nothing but those `end` events.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from monitor.events import AlarmEvent, Event

log = logging.getLogger(__name__)

SCHEMA = "asd-monitor/open-alarms/1"
STALE_REASON = "the previous run stopped without ending this alarm (closed at start-up)"
WRITE_INTERVAL = 1.0  # seconds between rewrites of the file while alarms change


def journal_path(state_dir: Path, node: str) -> Path:
    return state_dir / f"open-alarms-{node}.json"


class AlarmJournal:
    """Keeps `path` listing the alarms that are open now; `stale_ends(now)` closes those a previous run left."""

    name = "journal"

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._open: dict[str, dict[str, Any]] = {}  # alarm id -> its last event
        self._warned = False
        self._dirty = False
        self._clock = clock
        self._written = float("-inf")

    def stale_ends(self, now: float) -> list[AlarmEvent]:
        """`end` events for the alarms the file lists (a previous run's), then an empty file. Call once, before
        this run's first alarm."""
        previous = self._read()
        ends = []
        for alarm in previous:
            try:
                ends.append(AlarmEvent(
                    type="end", id=str(alarm["id"]), source=str(alarm["source"]), model=str(alarm["model"]),
                    score=float(alarm["score"]), peak_score=float(alarm["peak_score"]),
                    threshold=float(alarm["threshold"]), start_time=float(alarm["start_time"]),
                    end_time=max(now, float(alarm["start_time"])), reason=STALE_REASON))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("alarm journal %s: skipping an entry it cannot read (%s): %r", self.path, exc, alarm)
        for end in ends:
            log.warning("alarm %s of source %s (since %.0f) was left open by the previous run: ending it", end.id,
                        end.source, end.start_time)
        self._write()
        return ends

    # -- Sink protocol -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        return None

    def publish(self, event: Event) -> None:
        if isinstance(event, AlarmEvent):
            if event.type == "end":
                self._dirty |= self._open.pop(event.id, None) is not None
            else:
                self._open[event.id] = event.to_dict()
                self._dirty = True
        if self._dirty and self._clock() - self._written >= WRITE_INTERVAL:  # any event may carry the write
            self._write()

    async def close(self) -> None:
        if self._dirty:
            self._write()

    # -- the file ----------------------------------------------------------------------------------------------------

    def _read(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("alarm journal %s cannot be read (%s): alarms a previous run left open stay open", self.path,
                        exc.strerror or exc)
            return []
        try:
            data = json.loads(text)
            alarms = data["alarms"]
            if data.get("schema") != SCHEMA or not isinstance(alarms, list):
                raise ValueError("not an open-alarms file")
            return [a for a in alarms if isinstance(a, dict)]
        except (ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_name(self.path.name + ".corrupt")
            log.warning("alarm journal %s is not readable (%s); moved to %s", self.path, exc, aside)
            try:
                os.replace(self.path, aside)
            except OSError:
                pass
            return []

    def _write(self) -> None:
        data = {"schema": SCHEMA, "alarms": list(self._open.values())}
        tmp = self.path.with_name(self.path.name + ".tmp")
        self._dirty, self._written = False, self._clock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data), encoding="utf-8")
            os.replace(tmp, self.path)
            self._warned = False
        except OSError as exc:
            if not self._warned:  # once per outage: an unwritable state dir must not flood the log
                log.warning("alarm journal %s cannot be written (%s): a crash now would leave open alarms open",
                            self.path, exc.strerror or exc)
                self._warned = True
