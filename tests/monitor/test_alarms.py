"""The alarm policy, driven by an explicit clock: k-of-n raising, hysteresis + hold clearing, cooldown, updates."""

from __future__ import annotations

import itertools

import pytest

from monitor.alarms import AlarmPolicy, AlarmTracker

THR = 1.0


def tracker(**policy) -> AlarmTracker:
    counter = itertools.count(1)
    return AlarmTracker("fan1", "dcase_ae", THR, AlarmPolicy(**policy), new_id=lambda: f"a{next(counter)}")


def feed(t: AlarmTracker, scores, start: float = 0.0, step: float = 1.0, suppressed: bool = False):
    """Feed scores one per `step` seconds; return [(time, event)] for every event produced."""
    out = []
    for i, s in enumerate(scores):
        now = start + i * step
        out += [(now, e) for e in t.update(s, now, suppressed=suppressed)]
    return out


def test_raises_only_after_k_of_n_windows():
    t = tracker(k=3, n=5)
    assert feed(t, [2, 0, 2, 0]) == []  # 2 of 4
    events = feed(t, [2], start=4)  # 3 of the last 5
    assert [e.type for _, e in events] == ["new"]
    ev = events[0][1]
    assert (ev.id, ev.source, ev.model, ev.threshold) == ("a1", "fan1", "dcase_ae", THR)
    assert (ev.start_time, ev.end_time) == (4, None)
    assert ev.peak_score == 2 and t.active


def test_old_exceedances_fall_out_of_the_last_n():
    t = tracker(k=3, n=5)
    assert feed(t, [2, 2, 0, 0, 0, 0, 2]) == []  # never 3 within any 5 consecutive windows


def test_score_equal_to_threshold_is_not_above():
    t = tracker(k=1, n=1)
    assert feed(t, [THR, THR]) == []
    assert [e.type for _, e in feed(t, [THR + 1e-6], start=2)] == ["new"]


def test_peak_is_the_largest_exceeding_score_in_the_window():
    t = tracker(k=2, n=3)
    events = feed(t, [5.0, 0.1, 1.5])
    assert events[0][1].type == "new" and events[0][1].peak_score == 5.0


def test_clears_after_hold_below_hysteresis_and_not_before():
    t = tracker(k=1, n=1, hysteresis=0.9, hold_seconds=3.0)
    feed(t, [2.0])
    # 0.95 is below the threshold but above the clear level (0.9): the alarm stays up
    assert feed(t, [0.95] * 10, start=1) == []
    assert t.active
    quiet = feed(t, [0.5, 0.5, 0.5, 0.5], start=11)  # below since 11; held 3 s at 14
    assert [(now, e.type) for now, e in quiet] == [(14, "end")]
    end = quiet[0][1]
    assert end.id == "a1" and end.end_time == 14 and end.start_time == 0 and end.peak_score == 2.0
    assert not t.active


def test_a_loud_window_during_hold_restarts_the_hold():
    t = tracker(k=1, n=1, hold_seconds=2.0, update_interval_seconds=100)
    feed(t, [2.0])
    events = feed(t, [0.1, 0.1, 0.95, 0.1, 0.1, 0.1], start=1)
    # below from 1, interrupted at 3 (0.95 >= 0.9), below again from 4, held 2 s at 6
    assert [(now, e.type) for now, e in events] == [(6, "end")]


def test_cooldown_blocks_a_new_alarm_right_after_an_end():
    t = tracker(k=1, n=1, hold_seconds=0.0, cooldown_seconds=5.0)
    assert [e.type for _, e in feed(t, [2.0, 0.0])] == ["new", "end"]  # ends at t=1
    assert feed(t, [2.0, 2.0, 2.0], start=2) == []  # t=2..4: within 5 s of the end
    events = feed(t, [2.0], start=6)
    assert [e.type for _, e in events] == ["new"] and events[0][1].id == "a2"


def test_updates_only_when_the_peak_grows_and_rate_limited():
    t = tracker(k=1, n=1, update_interval_seconds=2.0)
    feed(t, [2.0])  # new at 0, peak 2
    events = feed(t, [3.0, 2.5, 4.0, 4.0, 1.5, 5.0], start=1)
    # t=1 peak 3 but only 1 s since the `new`; t=2 2 s passed and peak 3 > published 2 -> update(3)
    # t=3 peak 4 (1 s since) -> wait; t=4 -> update(4); t=5 no growth; t=6 peak 5 -> update(5)
    got = [(now, e.type, e.peak_score) for now, e in events]
    assert got == [(2, "update", 3.0), (4, "update", 4.0), (6, "update", 5.0)]
    assert all(e.id == "a1" for _, e in events)


def test_close_ends_an_open_alarm_and_is_a_no_op_otherwise():
    t = tracker(k=1, n=1)
    assert t.close(1.0) == []
    feed(t, [3.0])
    (end,) = t.close(7.5)
    assert (end.type, end.end_time, end.peak_score, end.id) == ("end", 7.5, 3.0, "a1")
    assert t.close(8.0) == []


def test_close_forgets_partial_evidence():
    t = tracker(k=2, n=3)
    feed(t, [2.0])
    t.close(1.0)
    assert feed(t, [2.0], start=2) == []  # the pre-close exceedance does not count


def test_suppressed_windows_never_raise_and_let_an_alarm_clear():
    t = tracker(k=1, n=1, hold_seconds=1.0)
    assert feed(t, [9.0, 9.0], suppressed=True) == []
    feed(t, [2.0], start=2)
    events = feed(t, [9.0, 9.0], start=3, suppressed=True)  # silence counts as quiet, whatever the score
    assert [(now, e.type) for now, e in events] == [(4, "end")]


def test_default_ids_are_unique():
    t1 = AlarmTracker("a", "m", THR, AlarmPolicy(k=1, n=1, hold_seconds=0, cooldown_seconds=0))
    ids = set()
    for i in range(3):
        ids.add(t1.update(2.0, 2 * i)[0].id)
        t1.update(0.0, 2 * i + 1)
    assert len(ids) == 3


@pytest.mark.parametrize(
    "kwargs", [dict(k=0), dict(k=4, n=3), dict(hysteresis=0.0), dict(hysteresis=1.5), dict(hold_seconds=-1)]
)
def test_invalid_policies_are_rejected(kwargs):
    with pytest.raises(ValueError):
        AlarmPolicy(**kwargs)
