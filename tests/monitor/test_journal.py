"""The open-alarm journal: what a run killed during an alarm leaves on disk, and how the next run ends it."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from pathlib import Path
from typing import Callable

from monitor.events import AlarmEvent, ScoreUpdate
from monitor.journal import STALE_REASON, WRITE_INTERVAL, AlarmJournal, journal_path


def alarm(kind: str, n: int = 1, source: str = "fan", peak: float = 2.5) -> AlarmEvent:
    return AlarmEvent(kind, f"{source}-{n}", source, "dcase_ae", 2.0, peak, 1.0, start_time=100.0 + n,
                      end_time=110.0 + n if kind == "end" else None)


def listed(path: Path) -> list[str]:
    return [a["id"] for a in json.loads(path.read_text())["alarms"]]


def ticking() -> Callable[[], float]:
    """A clock that moves 10 s per reading: every change is written at once."""
    return itertools.count(0.0, 10.0).__next__


def test_the_file_lists_exactly_the_open_alarms(tmp_path: Path) -> None:
    j = AlarmJournal(journal_path(tmp_path / "state", "node1"), clock=ticking())
    assert j.stale_ends(50.0) == [] and listed(j.path) == []  # no previous run: an empty file
    j.publish(alarm("new", 1))
    j.publish(alarm("new", 2, source="pump"))
    j.publish(ScoreUpdate("fan", "dcase_ae", 3.0, 1.0, time=1.0, level_dbfs=-20.0, alarm_active=True))
    assert listed(j.path) == ["fan-1", "pump-2"]
    j.publish(alarm("update", 1, peak=4.0))
    assert json.loads(j.path.read_text())["alarms"][0]["peak_score"] == 4.0
    j.publish(alarm("end", 1))
    assert listed(j.path) == ["pump-2"]
    assert not list(j.path.parent.glob("*.tmp"))


def test_a_killed_runs_open_alarms_are_ended_once_by_the_next(tmp_path: Path) -> None:
    path = journal_path(tmp_path, "node1")
    killed = AlarmJournal(path, clock=ticking())
    killed.publish(alarm("new", 7))
    killed.publish(alarm("update", 7, peak=3.5))  # ... then kill -9: nothing ends it

    ends = AlarmJournal(path).stale_ends(500.0)
    assert len(ends) == 1
    end = ends[0]
    assert (end.type, end.id, end.source, end.peak_score, end.start_time, end.end_time) == (
        "end", "fan-7", "fan", 3.5, 107.0, 500.0)
    assert end.reason == STALE_REASON
    assert AlarmJournal(path).stale_ends(600.0) == []  # the next start has nothing left to end


def test_a_corrupt_file_is_set_aside_and_loses_only_those_ends(tmp_path: Path, caplog) -> None:
    path = journal_path(tmp_path, "node1")
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert AlarmJournal(path).stale_ends(1.0) == []
    assert "not readable" in caplog.text
    assert path.with_name(path.name + ".corrupt").read_text() == "{not json"
    assert listed(path) == []


def test_an_unwritable_path_warns_once_and_never_raises(tmp_path: Path, caplog) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the state directory should be: mkdir fails, also for root
    j = AlarmJournal(journal_path(blocker, "node1"), clock=ticking())
    with caplog.at_level(logging.WARNING):
        j.stale_ends(1.0)
        j.publish(alarm("new", 1))
        j.publish(alarm("end", 1))
    assert caplog.text.count("cannot be written") == 1


def test_many_changes_at_once_cost_one_write_per_interval_and_close_writes_the_rest(tmp_path: Path) -> None:
    now = {"t": 0.0}
    j = AlarmJournal(journal_path(tmp_path, "node1"), clock=lambda: now["t"])
    for n in range(200):  # a plant-wide noise: every source alarms in the same second
        j.publish(alarm("new", n))
    assert listed(j.path) == ["fan-0"]  # the first change is written at once, the rest wait for the interval
    now["t"] += WRITE_INTERVAL
    j.publish(ScoreUpdate("fan", "dcase_ae", 3.0, 1.0, time=1.0, level_dbfs=-20.0, alarm_active=True))
    assert len(listed(j.path)) == 200  # any later event carries the write
    for n in range(200):
        j.publish(alarm("end", n))
    asyncio.run(j.close())
    assert listed(j.path) == []
