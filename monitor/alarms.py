"""When a stream of window scores becomes an alarm, and when it stops being one.

A single window above threshold is noise; an alarm needs `k` of the last `n` windows above it. It clears only
when the score has stayed below `hysteresis * threshold` for `hold_seconds`, so a score wobbling around the
threshold gives one alarm, not a burst. After an alarm ends, `cooldown_seconds` must pass before a new one.

The tracker is pure: time comes in with each score (the audio clock of the window end), so tests drive it with any
clock and replays at any speed give the same alarms.
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import Callable

from monitor.config import AlarmPolicy
from monitor.events import AlarmEvent


def uuid_ids() -> str:
    return uuid.uuid4().hex


class AlarmTracker:
    """The alarm state of one source. `update` and `close` return the events to publish (often none)."""

    def __init__(
        self,
        source: str,
        model: str,
        threshold: float,
        policy: AlarmPolicy | None = None,
        new_id: Callable[[], str] = uuid_ids,
    ) -> None:
        self.source = source
        self.model = model
        self.threshold = float(threshold)
        self.policy = policy or AlarmPolicy()
        self._new_id = new_id
        self._recent: deque[tuple[bool, float]] = deque(maxlen=self.policy.n)  # (above, score)
        self._id: str | None = None
        self._start = 0.0
        self._peak = 0.0
        self._published_peak = 0.0
        self._last_publish = 0.0
        self._below_since: float | None = None
        self._ended_at: float | None = None

    @property
    def active(self) -> bool:
        return self._id is not None

    def update(self, score: float, time: float, suppressed: bool = False) -> list[AlarmEvent]:
        """Feed one window score. `suppressed` windows (silence, bad signal) count as quiet: they never raise."""
        if self._id is None:
            return self._maybe_raise(score, time, suppressed)
        return self._while_active(score, time, suppressed)

    def close(self, time: float, reason: str = "") -> list[AlarmEvent]:
        """End an open alarm (shutdown, end of replay, source lost); `reason` goes into the `end` event."""
        self._recent.clear()
        if self._id is None:
            return []
        return [self._end(time, self._peak, reason)]

    def _maybe_raise(self, score: float, time: float, suppressed: bool) -> list[AlarmEvent]:
        p = self.policy
        above = (not suppressed) and score > self.threshold
        self._recent.append((above, score))
        if not above or sum(a for a, _ in self._recent) < p.k:
            return []
        if self._ended_at is not None and time - self._ended_at < p.cooldown_seconds:
            return []
        self._id = self._new_id()
        self._start = time
        self._peak = max(s for a, s in self._recent if a)
        self._published_peak = self._peak
        self._last_publish = time
        self._below_since = None
        return [self._event("new", score, self._peak)]

    def _while_active(self, score: float, time: float, suppressed: bool) -> list[AlarmEvent]:
        p = self.policy
        quiet = suppressed or score < p.hysteresis * self.threshold
        if quiet:
            if self._below_since is None:
                self._below_since = time
            if time - self._below_since >= p.hold_seconds:
                return [self._end(time, score)]
        else:
            self._below_since = None
            self._peak = max(self._peak, score)
        if self._peak > self._published_peak and time - self._last_publish >= p.update_interval_seconds:
            self._published_peak = self._peak
            self._last_publish = time
            return [self._event("update", score, self._peak)]
        return []

    def _end(self, time: float, score: float, reason: str = "") -> AlarmEvent:
        event = self._event("end", score, self._peak, end_time=time, reason=reason)
        self._id = None
        self._ended_at = time
        self._recent.clear()
        return event

    def _event(self, kind: str, score: float, peak: float, end_time: float | None = None,
               reason: str = "") -> AlarmEvent:
        assert self._id is not None
        return AlarmEvent(
            type=kind,  # type: ignore[arg-type]
            id=self._id,
            source=self.source,
            model=self.model,
            score=float(score),
            peak_score=float(peak),
            threshold=self.threshold,
            start_time=self._start,
            end_time=end_time,
            reason=reason,
        )
