"""Live capture: a PulseAudio virtual microphone feeds `--device asd_mic0` of the daemon subprocess; the machine
sound played into it is scored (and its fault alarmed), and a PulseAudio restart is survived (offline, online)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.helpers import machine_audio
from tests.integration.conftest import ALARM_CONFIG, start_daemon, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MIC = "asd_mic0"


def journal_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def states(path: Path) -> list[str]:
    return [e["state"] for e in journal_events(path) if e["kind"] == "status" and e["source"] == MIC]


def loud_scores(path: Path) -> list[dict]:
    # digital silence has level -inf, which JSON writes as null
    return [e for e in journal_events(path) if e["kind"] == "score" and (e["level_dbfs"] or -1e9) > -40]


@pytest.fixture
def sound(tmp_path: Path) -> Path:
    """2 s of the normal hum, 4 s with the fault, 1 s normal, written at PulseAudio's 48 kHz."""
    x = np.concatenate([machine_audio(2.0, 1, sr=48000), machine_audio(4.0, 2, anomalous=True, sr=48000),
                        machine_audio(1.0, 3, sr=48000)])
    path = tmp_path / "machine.wav"
    sf.write(path, x, 48000, subtype="PCM_16")
    return path


def test_a_virtual_microphone_is_captured_scored_and_alarmed(tmp_path, bundle_dir, pulse_mics, sound, daemons):
    journal = tmp_path / "events.jsonl"
    d = start_daemon(tmp_path, "--bundle", str(bundle_dir), "--device", MIC, env=pulse_mics.env,
                     config=ALARM_CONFIG + f"sinks:\n  jsonl:\n    path: {journal}\n    include_scores: true\n")
    daemons.append(d)
    wait_until(lambda: "online" in states(journal), 60, f"{MIC} online\n{d.output()}")
    wait_until(lambda: any(e["kind"] == "score" for e in journal_events(journal)), 30, "the first score")
    player = pulse_mics.play(MIC, sound)
    assert player.wait(timeout=30) == 0, player.stderr.read() if player.stderr else ""
    wait_until(lambda: any(e["kind"] == "alarm" for e in journal_events(journal)), 15, "an alarm")
    assert loud_scores(journal), "the played sound never reached the pipeline"
    events = journal_events(journal)
    assert [e for e in events if e["kind"] == "status"][0]["detail"].startswith(MIC)  # opened by name
    kinds = [e["kind"] for e in events]
    assert kinds.index("threshold") < kinds.index("score")  # how sure the threshold is, before the first score
    alarms = [e for e in journal_events(journal) if e["kind"] == "alarm"]
    assert alarms[0]["type"] == "new" and alarms[0]["source"] == MIC


def test_a_pulseaudio_restart_is_survived(tmp_path, bundle_dir, pulse_mics, sound, daemons):
    journal = tmp_path / "events.jsonl"
    d = start_daemon(tmp_path, "--bundle", str(bundle_dir), "--device", MIC, env=pulse_mics.env,
                     config=f"sinks:\n  jsonl:\n    path: {journal}\n    include_scores: true\n"
                            "    include_counters: true\n")
    daemons.append(d)
    wait_until(lambda: "online" in states(journal), 60, f"{MIC} online\n{d.output()}")
    pulse_mics.restart()
    wait_until(lambda: "offline" in states(journal), 30, f"{MIC} offline after the restart\n{d.output()}")
    after = len(states(journal))
    wait_until(lambda: "online" in states(journal)[after:] or "silent" in states(journal)[after:], 60,
               f"{MIC} back after the restart\n{d.output()}")
    n_before = len(loud_scores(journal))
    player = pulse_mics.play(MIC, sound)
    assert player.wait(timeout=30) == 0
    wait_until(lambda: len(loud_scores(journal)) > n_before, 15, "scores of audio played after the restart")
    restarts = [e for e in journal_events(journal) if e["kind"] == "counter" and e["name"] == "source_restarts"]
    assert restarts and restarts[0]["source"] == MIC
