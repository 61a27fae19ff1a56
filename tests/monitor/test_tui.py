"""The TUI sink renders its event-folded state without a terminal (Console(record=True))."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import logging
import re
import sys

from rich.console import Console

from monitor.events import HIGH_FALSE_ALARM_RATE, AlarmEvent, CounterEvent, ScoreUpdate, SourceStatus, ThresholdInfo
from monitor.sinks.tui import SPARK_BLOCKS, SPARK_LENGTH, TuiSink, sparkline
from tests.helpers import calibrated_info

T0 = 1_700_000_000.0
WIDTH = 180  # a wide terminal: every column shown in full


def render(sink: TuiSink) -> str:
    console = Console(record=True, width=WIDTH, file=io.StringIO(), color_system=None)
    console.print(sink.render())
    return console.export_text()


def row(text: str, source: str) -> str:
    [line] = [line for line in text.splitlines() if f" {source} " in line]
    return line


def update(source: str, score: float, level: float = -20.0, lag: float = 0.1) -> ScoreUpdate:
    return ScoreUpdate(source, "dcase_ae", score, 1.0, time=T0, level_dbfs=level, alarm_active=score >= 1.0,
                       lag_seconds=lag)


def test_rows_show_level_score_alarm_drops_and_status() -> None:
    now = [T0]
    sink = TuiSink(device="cuda:0 (H100)", clock=lambda: now[0])
    sink.publish(SourceStatus("fan", "online", "capturing"))
    sink.publish(update("fan", 0.42, level=-31.26))
    sink.publish(SourceStatus("pump", "error", "device lost"))
    sink.publish(update("pump", 1.7, lag=0.35))
    sink.publish(AlarmEvent("new", "pump-1", "pump", "dcase_ae", 1.7, 1.9, 1.0, start_time=T0 - 5))
    sink.publish(CounterEvent("dropped_blocks", "pump", amount=4))
    sink.publish(CounterEvent("overflows", "pump", amount=2))
    now[0] = T0 + 3725
    text = render(sink)

    fan, pump = row(text, "fan"), row(text, "pump")
    assert "-31.3" in fan and "0.42 / 1" in fan and "ok" in fan and "0/0/0" in fan and "online" in fan
    since = dt.datetime.fromtimestamp(T0 - 5).strftime("%H:%M:%S")
    assert f"ALARM since {since}" in pump and "peak 1.9" in pump
    assert "4/2/0" in pump and "error" in pump
    header = text.splitlines()[0]
    assert "dcase_ae" in header and "cuda:0 (H100)" in header and "0.35 s" in header and "1:02:05" in header

    sink.publish(AlarmEvent("end", "pump-1", "pump", "dcase_ae", 0.4, 1.9, 1.0, start_time=T0 - 5, end_time=T0))
    assert "ok (1 so far)" in row(render(sink), "pump")


def test_sparkline_keeps_the_last_scores_and_marks_threshold() -> None:
    sink = TuiSink()
    for i in range(SPARK_LENGTH + 10):
        sink.publish(update("fan", float(i)))
    assert list(sink.sources["fan"].scores) == [float(i) for i in range(10, SPARK_LENGTH + 10)]

    line = sparkline([0.0, 1.0, 3.0, 7.0], threshold=3.0)
    assert line.plain == SPARK_BLOCKS[0] + SPARK_BLOCKS[1] + SPARK_BLOCKS[3] + SPARK_BLOCKS[7]
    styles = [str(span.style) for span in line.spans]
    assert styles == ["green", "green", "red", "red"]
    assert sparkline([], 1.0).plain == ""


def test_score_colour_follows_threshold() -> None:
    sink = TuiSink()
    for source, score in (("low", 0.2), ("near", 0.95), ("over", 1.3)):
        sink.publish(update(source, score))
    console = Console(record=True, width=WIDTH, file=io.StringIO(), color_system="standard", force_terminal=True)
    console.print(sink.render())
    text = console.export_text(styles=True)
    for source, ansi, score in (("low", "32", "0.2"), ("near", "33", "0.95"), ("over", "1;31", "1.3")):
        assert re.search(rf"\x1b\[{ansi}m\s*{re.escape(score)}\x1b", row(text, source)), source


def test_the_noise_column_shows_the_noise_score_with_a_classifier_only() -> None:
    plain, noisy_view = TuiSink(), TuiSink(noise=True)
    for sink in (plain, noisy_view):
        sink.publish(dataclasses.replace(update("fan", 0.42), noise=0.123))
        sink.publish(update("pump", 0.3))  # before the classifier's first window: no noise yet
        sink.publish(SourceStatus("valve", "noisy", "noise score 0.91 above 0.8"))
        sink.publish(dataclasses.replace(update("valve", 0.5), noise=0.91))
    assert "noise" not in render(plain).splitlines()[2] and "0.12" not in render(plain)
    text = render(noisy_view)
    assert "noise" in text.splitlines()[2]  # the header row of the table
    assert "0.12" in row(text, "fan") and "0.91" in row(text, "valve") and "noisy" in row(text, "valve")
    assert re.search(r"0\.3 / 1\s+│\s+—\s+│\s+-\s+│", row(text, "pump"))  # false alarms unknown, then noise
    console = Console(record=True, width=WIDTH, file=io.StringIO(), color_system="standard", force_terminal=True)
    console.print(noisy_view.render())
    assert re.search(r"\x1b\[33m\s*0\.91\x1b", row(console.export_text(styles=True), "valve"))  # yellow: noisy


def test_the_false_alarms_column_says_how_sure_each_threshold_is() -> None:
    sink = TuiSink()
    few = calibrated_info("fan", [1.0, 2.0, 3.0, 4.0, 5.0], 4.5)  # 1 of 5 above: 20 %, interval [0.51 %, 72 %]
    many = calibrated_info("pump", [float(i) for i in range(200)], 179.5)  # 20 of 200: 10 %, interval [6.2 %, 15 %]
    assert few.may_alarm_often and not many.may_alarm_often
    assert many.false_alarm_rate_interval[1] < HIGH_FALSE_ALARM_RATE < few.false_alarm_rate_interval[1]
    for info in (few, many, ThresholdInfo("valve", "dcase_ae", 0.75, "configured"),
                 ThresholdInfo("slider", "dcase_ae", 2.0, "fixed")):
        sink.publish(info)
    sink.publish(update("pump", 150.0))
    text = render(sink)
    assert "false alarms" in text.splitlines()[2]  # the table's header row
    assert "20% [0.51-72%] n=5" in row(text, "fan") and "- / 4.5" in row(text, "fan")  # threshold before a score
    assert "10% [6.2-15%] n=200" in row(text, "pump")
    assert "configured" in row(text, "valve") and "- / 0.75" in row(text, "valve")
    assert re.search(r"- / 2\s+│\s+—\s+│", row(text, "slider"))  # no calibration in the bundle
    console = Console(record=True, width=WIDTH, file=io.StringIO(), color_system="standard", force_terminal=True)
    console.print(sink.render())
    styled = console.export_text(styles=True)
    assert re.search(r"\x1b\[33m\s*20% \[0\.51-72%\] n=5\x1b", row(styled, "fan"))  # yellow: may alarm often
    assert not re.search(r"\x1b\[33m\s*10% \[6\.2-15%\]", row(styled, "pump"))


async def test_live_start_and_close_on_a_non_tty_console() -> None:
    out = io.StringIO()
    sink = TuiSink(console=Console(file=out, width=120, force_terminal=False), refresh_hz=50)
    await sink.start()
    sink.publish(update("valve", 0.3))
    await asyncio.sleep(0.1)
    await sink.close()
    assert "valve" in out.getvalue()


async def test_logging_goes_through_the_live_console_while_running() -> None:
    root = logging.getLogger()
    plain = logging.StreamHandler(sys.stderr)  # what logging.basicConfig installs in the daemon
    root.addHandler(plain)
    before = list(root.handlers)
    console = Console(record=True, width=WIDTH, file=io.StringIO(), force_terminal=True, color_system=None)
    sink = TuiSink(console=console, refresh_hz=50.0)
    try:
        await sink.start()
        assert plain not in root.handlers
        sink.publish(update("fan", 0.42))
        logging.getLogger("monitor.test").warning("broker gone: %s", "fan-42")
        await asyncio.sleep(0.05)
        await sink.close()
        assert root.handlers == before
    finally:
        root.removeHandler(plain)
    text = console.export_text()
    [line] = [line for line in text.splitlines() if "broker gone: fan-42" in line]
    assert "WARNING" in line and "monitor.test" in line
    assert text.index("broker gone: fan-42") < text.rindex(" fan ")  # printed above the table, which stays
