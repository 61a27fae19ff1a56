"""Prometheus sink: turns monitor events into `asd_*` metrics served over HTTP for scraping.

It keeps its own `CollectorRegistry` (never the process-global one, so tests and several sinks do not collide)
and serves it with prometheus_client's threaded HTTP server, bound to 127.0.0.1 unless told otherwise.
Labels are `source` and `model` (both bounded by the configuration); sink errors are labelled by `sink`.
`publish()` only updates in-memory metrics, which is cheap and never blocks on the network.

Every configured source's series exist from start-up (counters at 0, `asd_source_state` with each state): a rule
or panel over `increase(asd_alarms_total[...])` then sees the first alarm, and a source that never delivered audio
is listed rather than absent. The process collector adds `process_*` (CPU, memory, open files, start time).

How sure each source's threshold is comes once, at start (ThresholdInfo): `asd_threshold_false_alarm_rate` with
`bound` `estimate`, `low` and `high` (the share of the bundle's normal calibration scores above the threshold, and
its interval) and `asd_threshold_calibration_scores` (how many scores). A source without a calibration (an older
bundle, or a threshold set in the monitor's configuration) has no such series: no made-up number.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, Iterable, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from models.runtime import own_version
from monitor.events import AlarmEvent, CounterEvent, Event, ScoreUpdate, SourceState, SourceStatus, ThresholdInfo

log = logging.getLogger(__name__)

# Inference of one batch takes from about a millisecond (small dense AE) to a good part of a second (large
# models on CPU); the buckets resolve that range finely enough for p50/p99.
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
UP_STATES = frozenset({"online", "silent", "clipping", "noisy"})
STATES: tuple[str, ...] = get_args(SourceState)


class PrometheusSink:
    """Serves the monitor's metrics on `host:port` (port 0 picks a free one; read `.port` after `start()`)."""

    name = "prometheus"

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        registry: CollectorRegistry | None = None,
        *,
        model: str = "",
        device: str = "",
        sources: Iterable[tuple[str, str | None]] = (),
    ) -> None:
        """`sources`: (name, model) of every configured source (model None: its bundle could not be loaded), whose
        series are created now."""
        self.host = host
        self._requested_port = port
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        r = self.registry
        sm = ["source", "model"]
        self.score = Gauge("asd_anomaly_score", "Anomaly score of the latest window (higher is more anomalous).",
                           sm, registry=r)
        self.threshold = Gauge("asd_anomaly_threshold", "Score above which a window counts as anomalous.",
                               sm, registry=r)
        self.false_alarm_rate = Gauge("asd_threshold_false_alarm_rate",
                                      "Share (0..1) of the normal calibration scores above the threshold (bound="
                                      "estimate), with the low and high ends of its confidence interval.",
                                      [*sm, "bound"], registry=r)
        self.calibration_scores = Gauge("asd_threshold_calibration_scores",
                                        "Normal scores the threshold's false-alarm rate was estimated from.", sm,
                                        registry=r)
        self.alarm_active = Gauge("asd_alarm_active", "1 while an alarm is open for the source, else 0.",
                                  sm, registry=r)
        self.alarms = Counter("asd_alarms", "Alarms raised.", sm, registry=r)
        self.windows = Counter("asd_windows_scored", "Windows scored.", sm, registry=r)
        self.inference = Histogram("asd_inference_duration_seconds",
                                   "Model inference time of the batch that scored a window.", sm,
                                   buckets=INFERENCE_BUCKETS, registry=r)
        self.level = Gauge("asd_audio_level_dbfs", "RMS level of the latest window in dBFS.", ["source"],
                           registry=r)
        self.noise = Gauge("asd_noise_score", "Noise classifier's latest score of the source: the probability (0..1) "
                           "that its audio is background noise.", ["source"], registry=r)
        self.lag = Gauge("asd_processing_lag_seconds", "Delay from the end of a window to its score.",
                         ["source"], registry=r)
        self.source_up = Gauge("asd_source_up", "1 while the source delivers audio, else 0.", ["source"],
                               registry=r)
        self.source_state = Gauge("asd_source_state", "1 for the state the source is in, 0 for the others.",
                                  ["source", "state"], registry=r)
        self.dropped = Counter("asd_audio_dropped_blocks", "Audio blocks dropped because the queue was full.",
                               ["source"], registry=r)
        self.overflows = Counter("asd_audio_input_overflows", "Input overflows reported by the audio driver.",
                                 ["source"], registry=r)
        self.input_errors = Counter("asd_input_errors", "Audio blocks rejected as bad input.", ["source"],
                                    registry=r)
        self.restarts = Counter("asd_source_restarts", "Times a source was reopened after a failure.",
                                ["source"], registry=r)
        self.sink_errors = Counter("asd_sink_errors", "Errors and dropped messages in output sinks.", ["sink"],
                                   registry=r)
        self._counters = {
            "dropped_blocks": self.dropped,
            "overflows": self.overflows,
            "input_errors": self.input_errors,
            "source_restarts": self.restarts,
        }
        self.build = Info("asd_build", "Software version, model and compute device of this monitor.", registry=r)
        self.build.info({"version": own_version(), "model": model, "device": device})
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        for source, source_model in sources:
            self._create_series(source, source_model)

    def expect_sinks(self, names: Iterable[str]) -> None:
        """Create `asd_sink_errors_total` for each sink now, at 0 (the daemon calls it once its sinks exist)."""
        for name in names:
            self.sink_errors.labels(name)

    def _create_series(self, source: str, model: str | None) -> None:
        for counter in self._counters.values():
            counter.labels(source)
        self.source_up.labels(source)
        for state in STATES:
            self.source_state.labels(source, state)
        if model is not None:
            for metric in (self.alarms, self.windows, self.alarm_active):
                metric.labels(source, model)

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for) once started."""
        if self._server is None:
            raise RuntimeError("PrometheusSink not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    async def start(self) -> None:
        """Bind and serve in a daemon thread; a port in use raises OSError naming the address."""
        if self._server is not None:
            return
        try:
            self._server, self._thread = start_http_server(self._requested_port, addr=self.host,
                                                           registry=self.registry)
        except OSError as exc:
            raise OSError(f"Prometheus sink cannot listen on {self.host}:{self._requested_port}: {exc}") from exc
        log.info("Prometheus metrics on http://%s:%d/metrics", self.host, self.port)

    def publish(self, event: Event) -> None:
        """Update the metrics an event touches."""
        if isinstance(event, ScoreUpdate):
            labels = (event.source, event.model)
            if math.isfinite(event.score):
                self.score.labels(*labels).set(event.score)
            self.threshold.labels(*labels).set(event.threshold)
            self.alarm_active.labels(*labels).set(1.0 if event.alarm_active else 0.0)
            self.windows.labels(*labels).inc()
            self.inference.labels(*labels).observe(max(event.inference_seconds, 0.0))
            self.level.labels(event.source).set(event.level_dbfs)
            if event.noise is not None and math.isfinite(event.noise):
                self.noise.labels(event.source).set(event.noise)
            self.lag.labels(event.source).set(event.lag_seconds)
            self.source_up.labels(event.source).set(1.0)
        elif isinstance(event, AlarmEvent):
            labels = (event.source, event.model)
            self.threshold.labels(*labels).set(event.threshold)
            if event.type == "new":
                self.alarms.labels(*labels).inc()
            self.alarm_active.labels(*labels).set(0.0 if event.type == "end" else 1.0)
        elif isinstance(event, SourceStatus):
            self.source_up.labels(event.source).set(1.0 if event.state in UP_STATES else 0.0)
            for state in STATES:
                self.source_state.labels(event.source, state).set(1.0 if state == event.state else 0.0)
        elif isinstance(event, ThresholdInfo):
            labels = (event.source, event.model)
            self.threshold.labels(*labels).set(event.threshold)
            if event.false_alarm_rate is not None and event.false_alarm_rate_interval is not None:
                low, high = event.false_alarm_rate_interval
                for bound, value in (("estimate", event.false_alarm_rate), ("low", low), ("high", high)):
                    self.false_alarm_rate.labels(*labels, bound).set(value)
            if event.n_scores is not None:
                self.calibration_scores.labels(*labels).set(event.n_scores)
        elif isinstance(event, CounterEvent):
            if event.name == "sink_errors":
                self.sink_errors.labels(event.labels.get("sink", event.source)).inc(event.amount)
            else:
                self._counters[event.name].labels(event.source).inc(event.amount)

    async def close(self) -> None:
        """Stop serving and free the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None
