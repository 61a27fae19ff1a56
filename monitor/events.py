"""What the pipeline tells the outside world. Sinks (MQTT, Prometheus, TUI, JSONL) consume these and nothing else.

Every event is a plain frozen dataclass with a `to_dict()` that is the JSON payload (snake_case), so the MQTT
payload, the JSONL log and the tests all see the same fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Union, runtime_checkable

EVENT_SCHEMA = "asd-monitor/event/1"


@dataclass(frozen=True)
class AlarmEvent:
    """An alarm's life: `new` when raised, `update` when its peak grows, `end` when it clears. `reason` says why an
    `end` came other than by the score falling: `shutdown`, the source's end (`end of input`, ...), or a previous run
    that stopped without ending it (see `monitor.journal`); empty otherwise."""

    type: Literal["new", "update", "end"]
    id: str
    source: str
    model: str
    score: float
    peak_score: float
    threshold: float
    start_time: float  # unix seconds
    end_time: float | None = None
    reason: str = ""
    schema: str = EVENT_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ScoreUpdate:
    """One scored window of one source (many per second in total; sinks rate-limit as they need).

    `noise`: the noise classifier's latest score of the source (0..1, the probability that its audio is noisy
    background rather than the machine), from its newest window ending no later than this one; None without a
    classifier, or before its first window (after a start or a gap)."""

    source: str
    model: str
    score: float
    threshold: float
    time: float  # unix seconds of the window end
    level_dbfs: float
    alarm_active: bool
    inference_seconds: float = 0.0
    lag_seconds: float = 0.0
    noise: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# `noisy`: audio flows and is scored (alarms go on), but the noise classifier says background noise dominates, so an
# alarm decision (raised or not) is unreliable; see `monitor.pipeline` for its precedence after silent and clipping.
SourceState = Literal["online", "offline", "silent", "clipping", "noisy", "error", "ended"]


@dataclass(frozen=True)
class SourceStatus:
    """A change in a source's health; `detail` says why in words a person can act on."""

    source: str
    state: SourceState
    detail: str = ""
    time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CounterEvent:
    """Something to count (dropped audio blocks, bad input, sink errors); Prometheus turns these into counters."""

    name: Literal["dropped_blocks", "input_errors", "overflows", "sink_errors", "source_restarts"]
    source: str
    amount: int = 1
    detail: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


Event = Union[AlarmEvent, ScoreUpdate, SourceStatus, CounterEvent]


@runtime_checkable
class Sink(Protocol):
    """A consumer of events. `publish` must return at once: a slow or dead sink never blocks audio or scoring.

    Sinks that do I/O keep their own bounded queue and a task started in `start()`; `close()` flushes what it can
    (e.g. the final `end` events and MQTT `offline`) and stops that task.
    """

    name: str

    async def start(self) -> None: ...

    def publish(self, event: Event) -> None: ...

    async def close(self) -> None: ...
