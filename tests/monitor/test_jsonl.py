"""The JSONL sink: one parseable line per kept event, scores opt-in, lines on disk before close."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitor.events import EVENT_SCHEMA, AlarmEvent, CounterEvent, ScoreUpdate, SourceStatus, ThresholdInfo
from monitor.sinks.jsonl import JsonlSink


def events() -> list:
    return [
        ThresholdInfo("fan", "dcase_ae", 1.0, "gamma", "cross-fitted", 5, 0.95, 0.2, (0.005, 0.716), 0.9, (1.5, None)),
        SourceStatus("fan", "online", "capturing", time=1.0),
        ScoreUpdate("fan", "dcase_ae", 0.4, 1.0, time=2.0, level_dbfs=float("-inf"), alarm_active=False),
        AlarmEvent("new", "fan-1", "fan", "dcase_ae", 1.5, 1.5, 1.0, start_time=3.0),
        CounterEvent("dropped_blocks", "fan", amount=3),
        AlarmEvent("end", "fan-1", "fan", "dcase_ae", 0.5, 1.9, 1.0, start_time=3.0, end_time=8.0),
    ]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_alarms_and_status_only_by_default(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "events.jsonl"  # parent created
    sink = JsonlSink(path)
    await sink.start()
    for event in events():
        sink.publish(event)
        assert path.read_text().endswith("\n")  # line-buffered: each line is on disk at once
    await sink.close()
    records = read(path)
    assert [(r["kind"], r.get("type", r.get("state"))) for r in records] == [
        ("threshold", None), ("status", "online"), ("alarm", "new"), ("alarm", "end")]
    assert records[0]["false_alarm_rate_interval"] == [0.005, 0.716] and records[0]["quantile_interval"] == [1.5, None]
    assert records[3] == {"kind": "alarm", "type": "end", "id": "fan-1", "source": "fan", "model": "dcase_ae",
                          "score": 0.5, "peak_score": 1.9, "threshold": 1.0, "start_time": 3.0, "end_time": 8.0,
                          "reason": "", "schema": EVENT_SCHEMA}


async def test_scores_and_counters_when_asked_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"kind": "status", "source": "old"}\n')
    sink = JsonlSink(path, include_scores=True, include_counters=True)
    await sink.start()
    for event in events():
        sink.publish(event)
    await sink.close()
    await sink.close()  # idempotent
    records = read(path)
    assert [r["kind"] for r in records] == ["status", "threshold", "status", "score", "alarm", "counter", "alarm"]
    assert records[3]["level_dbfs"] is None  # -inf is not JSON
    assert records[5]["amount"] == 3


async def test_unwritable_path_names_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    sink = JsonlSink(blocker / "events.jsonl")
    with pytest.raises(OSError, match="events.jsonl"):
        await sink.start()


def test_publish_before_start_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="before start"):
        JsonlSink(tmp_path / "x.jsonl").publish(events()[1])
