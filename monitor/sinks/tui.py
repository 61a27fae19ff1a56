"""Terminal view (rich Live): one row per source with level, score vs threshold, how sure the threshold is, the
noise score (with a noise classifier), a sparkline, alarm state, drops and status, under a header with model,
device, lag and uptime.

The `false alarms` column reads the source's ThresholdInfo: the share of the bundle's normal calibration scores
above the threshold with its interval and their count (`10% [0.3-45%] n=5`), in yellow when the interval reaches
above `monitor.events.HIGH_FALSE_ALARM_RATE` (the threshold may alarm often), `configured` for a threshold set in
the monitor's configuration, `—` when the bundle records no calibration.

The sink only keeps state folded from the events it is given and redraws it about four times a second from its
own task; it never calls into the pipeline. `render()` builds the whole view as a renderable, so tests and other
front ends can print it without a terminal. While it runs, root-logger handlers that write to the terminal are
swapped for one that prints through the same rich console, so log lines appear above the table instead of
tearing it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from monitor.events import AlarmEvent, CounterEvent, Event, ScoreUpdate, SourceStatus, ThresholdInfo

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
SPARK_LENGTH = 30
REFRESH_HZ = 4.0
NEAR_THRESHOLD = 0.9  # scores above this fraction of a positive threshold show as a warning
STATUS_STYLES = {"online": "green", "silent": "yellow", "clipping": "yellow", "noisy": "yellow", "offline": "red",
                 "error": "bold red", "ended": "dim"}


@dataclass
class SourceView:
    """What the table shows for one source, folded from its events."""

    model: str = ""
    level_dbfs: float | None = None
    score: float | None = None
    threshold: float | None = None
    noise: float | None = None
    calibration: ThresholdInfo | None = None
    scores: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=SPARK_LENGTH))
    alarm_since: float | None = None
    alarm_peak: float | None = None
    alarms: int = 0
    dropped: int = 0
    overflows: int = 0
    input_errors: int = 0
    state: str = "waiting"
    detail: str = ""
    lag_seconds: float = 0.0


def sparkline(values: list[float], threshold: float | None) -> Text:
    """Unicode-block sparkline scaled to the values and the threshold; blocks at or above threshold are red."""
    text = Text()
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return text
    low = min(finite)
    high = max(finite + ([threshold] if threshold is not None and math.isfinite(threshold) else []))
    span = high - low
    for v in values:
        if not math.isfinite(v):
            text.append(" ")
            continue
        level = 0 if span <= 0 else round((v - low) / span * (len(SPARK_BLOCKS) - 1))
        over = threshold is not None and v >= threshold
        text.append(SPARK_BLOCKS[level], style="red" if over else "green")
    return text


def _score_style(score: float, threshold: float | None) -> str:
    if threshold is None:
        return ""
    if score >= threshold:
        return "bold red"
    if threshold > 0 and score >= NEAR_THRESHOLD * threshold:
        return "yellow"
    return "green"


def _percent(share: float) -> str:
    """A share (0..1) in percent, with two significant digits below 10 % (a 0.5 % bound is not 0)."""
    value = 100 * share
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.2g}"


def _clock_text(unix_seconds: float) -> str:
    return dt.datetime.fromtimestamp(unix_seconds).strftime("%H:%M:%S")


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class TuiSink:
    """A live terminal table of all sources; `publish` only updates in-memory state."""

    name = "tui"

    def __init__(
        self,
        *,
        device: str = "",
        noise: bool = False,
        console: Console | None = None,
        refresh_hz: float = REFRESH_HZ,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.device = device
        self.noise = noise  # a noise classifier scores the sources: show the `noise` column
        self.console = console if console is not None else Console()
        self.refresh_hz = refresh_hz
        self._clock = clock
        self._started_at = clock()
        self.sources: dict[str, SourceView] = {}
        self._live: Live | None = None
        self._task: asyncio.Task[None] | None = None
        self._log_handler: RichHandler | None = None
        self._replaced: list[logging.Handler] = []

    def _view(self, source: str) -> SourceView:
        return self.sources.setdefault(source, SourceView())

    def publish(self, event: Event) -> None:
        """Fold one event into the displayed state."""
        view = self._view(event.source)
        if isinstance(event, ScoreUpdate):
            view.model = event.model
            view.level_dbfs = event.level_dbfs
            view.score = event.score
            view.threshold = event.threshold
            view.noise = event.noise
            view.scores.append(event.score)
            view.lag_seconds = event.lag_seconds
            if view.state == "waiting":  # scores prove audio flows even if no status came first
                view.state = "online"
        elif isinstance(event, AlarmEvent):
            view.model = event.model
            view.threshold = event.threshold
            if event.type == "end":
                view.alarm_since = None
                view.alarm_peak = None
            else:
                if event.type == "new":
                    view.alarms += 1
                view.alarm_since = event.start_time
                view.alarm_peak = event.peak_score
        elif isinstance(event, SourceStatus):
            view.state = event.state
            view.detail = event.detail
        elif isinstance(event, ThresholdInfo):
            view.model = event.model
            view.threshold = event.threshold
            view.calibration = event
        elif isinstance(event, CounterEvent):
            if event.name == "dropped_blocks":
                view.dropped += event.amount
            elif event.name == "overflows":
                view.overflows += event.amount
            elif event.name == "input_errors":
                view.input_errors += event.amount

    def render(self) -> RenderableType:
        """The whole view (header and table) as one renderable."""
        return Group(self._header(), self._table())

    def _header(self) -> Text:
        models = sorted({v.model for v in self.sources.values() if v.model})
        lag = max((v.lag_seconds for v in self.sources.values()), default=0.0)
        header = Text("asd-monitor", style="bold")
        for label, value in (("model", ", ".join(models) or "-"), ("device", self.device or "-"),
                             ("lag", f"{lag:.2f} s"), ("uptime", _duration(self._clock() - self._started_at))):
            header.append(f"  {label} ", style="dim")
            header.append(value)
        return header

    def _table(self) -> Table:
        table = Table(expand=True)
        columns = [("source", "left"), ("level dBFS", "right"), ("score / threshold", "right"),
                   ("false alarms", "right")]
        columns += [("noise", "right")] if self.noise else []
        columns += [(f"last {SPARK_LENGTH}", "left"), ("alarm", "left"), ("drop/ovf/err", "right"), ("status", "left")]
        for column, justify in columns:
            table.add_column(column, justify=justify, no_wrap=True, overflow="ellipsis",
                             min_width=SPARK_LENGTH if column.startswith("last") else None)
        for name, view in sorted(self.sources.items()):
            noise = [self._noise(view)] if self.noise else []
            table.add_row(name, self._level(view), self._score(view), self._false_alarms(view), *noise,
                          sparkline(list(view.scores), view.threshold), self._alarm(view), self._drops(view),
                          self._status(view))
        return table

    @staticmethod
    def _level(view: SourceView) -> Text:
        if view.level_dbfs is None:
            return Text("-", style="dim")
        if not math.isfinite(view.level_dbfs):
            return Text("silent", style="yellow")
        return Text(f"{view.level_dbfs:.1f}")

    @staticmethod
    def _score(view: SourceView) -> Text:
        threshold = "-" if view.threshold is None else f"{view.threshold:.3g}"
        if view.score is None:
            return Text(f"- / {threshold}", style="dim")
        text = Text(f"{view.score:.3g}", style=_score_style(view.score, view.threshold))
        text.append(f" / {threshold}", style="dim")
        return text

    @staticmethod
    def _false_alarms(view: SourceView) -> Text:
        """How sure the threshold is (see the module docstring)."""
        info = view.calibration
        if info is not None and info.method == "configured":
            return Text("configured", style="dim")
        if info is None or info.false_alarm_rate is None or info.false_alarm_rate_interval is None:
            return Text("—", style="dim")
        low, high = info.false_alarm_rate_interval
        n = "" if info.n_scores is None else f" n={info.n_scores}"
        return Text(f"{_percent(info.false_alarm_rate)}% [{_percent(low)}-{_percent(high)}%]{n}",
                    style="yellow" if info.may_alarm_often else "")

    @staticmethod
    def _noise(view: SourceView) -> Text:
        """The noise score, in the status colour while the source is `noisy`; `-` before the classifier's first
        window."""
        if view.noise is None:
            return Text("-", style="dim")
        return Text(f"{view.noise:.2f}", style=STATUS_STYLES["noisy"] if view.state == "noisy" else "")

    def _alarm(self, view: SourceView) -> Text:
        if view.alarm_since is None:
            return Text(f"ok ({view.alarms} so far)" if view.alarms else "ok", style="green")
        peak = "" if view.alarm_peak is None else f", peak {view.alarm_peak:.3g}"
        since = f"{_clock_text(view.alarm_since)} ({_duration(self._clock() - view.alarm_since)})"
        return Text(f"ALARM since {since}{peak}", style="bold white on red")

    @staticmethod
    def _drops(view: SourceView) -> Text:
        total = view.dropped + view.overflows + view.input_errors
        text = f"{view.dropped}/{view.overflows}/{view.input_errors}"
        return Text(text, style="yellow" if total else "dim")

    @staticmethod
    def _status(view: SourceView) -> Text:
        text = Text(view.state, style=STATUS_STYLES.get(view.state, "dim"))
        if view.detail:
            text.append(f" {view.detail}", style="dim")
        return text

    async def start(self) -> None:
        """Take over the terminal and redraw from a task (no rich refresh thread: state is only read here)."""
        if self._task is not None:
            return
        self._started_at = self._clock()
        self._route_logging()  # first: Live swaps sys.stderr for a proxy, hiding which handlers write to it
        self._live = Live(self.render(), console=self.console, auto_refresh=False, transient=False)
        self._live.start()
        self._task = asyncio.create_task(self._refresh(), name="tui-refresh")

    def _route_logging(self) -> None:
        """Swap root handlers that write to stdout/stderr for one printing through our console (above the table)."""
        root = logging.getLogger()
        terminal = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
        # Exact type: file handlers and pytest's capture handlers are StreamHandler subclasses that must stay.
        self._replaced = [h for h in root.handlers
                          if type(h) is logging.StreamHandler and any(h.stream is t for t in terminal)]
        if not self._replaced:
            return
        handler = RichHandler(console=self.console, show_path=False, level=min(h.level for h in self._replaced))
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))  # time and level are rich's own columns
        for h in self._replaced:
            root.removeHandler(h)
        root.addHandler(handler)
        self._log_handler = handler

    def _restore_logging(self) -> None:
        root = logging.getLogger()
        if self._log_handler is not None:
            root.removeHandler(self._log_handler)
            self._log_handler = None
        for h in self._replaced:
            root.addHandler(h)
        self._replaced = []

    async def _refresh(self) -> None:
        assert self._live is not None
        while True:
            self._live.update(self.render(), refresh=True)
            await asyncio.sleep(1.0 / self.refresh_hz)

    async def close(self) -> None:
        """Draw the final state once more and give the terminal back."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
            self._live.stop()
            self._live = None
        self._restore_logging()
