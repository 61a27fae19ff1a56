"""What the pipeline tells the outside world. Sinks (MQTT, Prometheus, TUI, JSONL) consume these and nothing else;
a sink ignores the event types it has no use for (`isinstance` dispatch in its `publish`).

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


# The upper end of a threshold's false-alarm-rate interval above which the threshold may alarm often on normal
# sound (the TUI shows it in yellow, the log warns): 0.2 is twice the DCASE rule's nominal 10 %.
HIGH_FALSE_ALARM_RATE = 0.2


@dataclass(frozen=True)
class ThresholdInfo:
    """What a source's threshold rests on, once per source when the pipeline starts: a threshold set on 5 normal
    clips is a guess, and whoever reads an alarm (or its absence) should see how sure it is.

    `method`: the bundle's threshold rule (`gamma`, `percentile`, `fixed`, ...), or `configured` when the monitor's
    configuration overrides the threshold for this source (the bundle's calibration then describes another number,
    so every calibration field is None). `scores`: the normal scores the bundle's threshold was calibrated on
    (`holdout`, `cross-fitted`, `training`); `false_alarm_rate`: the share of them above the threshold, with its
    `level` (e.g. 0.95) Clopper-Pearson interval; `quantile`: the quantile of normal scores the rule estimates, with
    its order-statistic interval (a bound None where the scores cannot give one). None where the bundle records no
    calibration (see `models.bundle.Bundle.calibration_for`)."""

    source: str
    model: str
    threshold: float
    method: str
    scores: str | None = None
    n_scores: int | None = None
    level: float | None = None
    false_alarm_rate: float | None = None
    false_alarm_rate_interval: tuple[float, float] | None = None
    quantile: float | None = None
    quantile_interval: tuple[float | None, float | None] | None = None

    @property
    def may_alarm_often(self) -> bool:
        """The false-alarm rate may exceed `HIGH_FALSE_ALARM_RATE` (the upper end of its interval does)."""
        return self.false_alarm_rate_interval is not None and self.false_alarm_rate_interval[1] > HIGH_FALSE_ALARM_RATE

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


Event = Union[AlarmEvent, ScoreUpdate, SourceStatus, CounterEvent, ThresholdInfo]


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
