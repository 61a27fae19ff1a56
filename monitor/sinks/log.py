"""Log sink: alarms and source health as log lines, the record a headless monitor leaves.

Under systemd or with `--no-tui` nothing else reaches a person reading the journal, so every daemon has this sink.
It is the one place status changes are logged: trouble (`offline`, `error`, `silent`, `clipping`, `noisy`) and
alarms at WARNING, routine changes (`online`, `ended`, a growing alarm peak) at INFO. Each source's threshold is
logged once at start, at WARNING when it may alarm often (`ThresholdInfo.may_alarm_often`), else at INFO. Scores
and counters are left to Prometheus and the JSONL log: they come many per second.
"""

from __future__ import annotations

import logging

from monitor.events import AlarmEvent, Event, SourceStatus, ThresholdInfo

log = logging.getLogger(__name__)

_TROUBLE = frozenset({"offline", "error", "silent", "clipping", "noisy"})


class LogSink:
    """Writes alarm and source-status events to the `monitor.sinks.log` logger; no I/O of its own."""

    name = "log"

    async def start(self) -> None:
        return None

    def publish(self, event: Event) -> None:
        if isinstance(event, AlarmEvent):
            self._alarm(event)
        elif isinstance(event, SourceStatus):
            level = logging.WARNING if event.state in _TROUBLE else logging.INFO
            log.log(level, "source %s: %s%s", event.source, event.state, f" ({event.detail})" if event.detail else "")
        elif isinstance(event, ThresholdInfo):
            self._threshold(event)

    @staticmethod
    def _alarm(e: AlarmEvent) -> None:
        if e.type == "new":
            log.warning("ALARM %s: score %.4g above threshold %.4g (model %s, alarm %s)",
                        e.source, e.score, e.threshold, e.model, e.id)
        elif e.type == "end":
            lasted = (e.end_time or e.start_time) - e.start_time
            log.warning("alarm cleared %s: peak score %.4g, lasted %.1f s (alarm %s)", e.source, e.peak_score,
                        lasted, e.id)
        else:
            log.info("alarm %s: peak score now %.4g (alarm %s)", e.source, e.peak_score, e.id)

    @staticmethod
    def _threshold(e: ThresholdInfo) -> None:
        if e.method == "configured":
            log.info("source %s: threshold %.4g, set in the configuration", e.source, e.threshold)
            return
        if e.false_alarm_rate is None or e.false_alarm_rate_interval is None:
            log.info("source %s: threshold %.4g (%s; the bundle records no calibration)", e.source, e.threshold,
                     e.method)
            return
        lo, hi = e.false_alarm_rate_interval
        level = logging.WARNING if e.may_alarm_often else logging.INFO
        log.log(level, "source %s: threshold %.4g (%s on %s %s scores): false alarms %.1f%% [%.1f%%, %.1f%%]%s",
                e.source, e.threshold, e.method, e.n_scores, e.scores, 100 * e.false_alarm_rate, 100 * lo, 100 * hi,
                "; it may alarm often: record more normal sound and retrain" if e.may_alarm_often else "")

    async def close(self) -> None:
        return None
