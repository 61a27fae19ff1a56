"""The daemon as a subprocess (`python -m monitor.cli`) against a real mosquitto: one alarm sequence for an
anomalous replay with the DESIGN payload, retained state, the Last Will on SIGKILL, delivery across a broker
restart, and a clean SIGTERM shutdown."""

from __future__ import annotations

import json
import os
import pwd
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from monitor.journal import STALE_REASON
from tests.helpers import SR, machine_audio
from tests.integration.conftest import ALARM_CONFIG, BASE, EVENT_FIELDS, start_daemon, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

def anomalous_wav(path: Path, normal_s: float = 2.0, fault_s: float = 3.0, after_s: float = 4.0) -> Path:
    x = np.concatenate([machine_audio(normal_s, 1), machine_audio(fault_s, 2, anomalous=True),
                        machine_audio(after_s, 3)])
    sf.write(path, x, SR, subtype="FLOAT")
    return path


def alarm_sequences(messages) -> dict[str, list[str]]:
    seqs: dict[str, list[str]] = {}
    for m in messages:
        ev = m.json()
        seqs.setdefault(ev["id"], []).append(ev["type"])
    return seqs


def test_anomalous_replay_raises_one_alarm_sequence_with_retained_state(tmp_path, bundle_dir, noise_bundle_dir,
                                                                         mosquitto, mqtt_collector, daemons):
    live = mqtt_collector([f"{BASE}/#", "homeassistant/#"])
    d = start_daemon(tmp_path, "--bundle", str(bundle_dir), "--noise-bundle", str(noise_bundle_dir),
                     "--replay", str(anomalous_wav(tmp_path / "m1.wav")), "--speed", "0", "--mqtt", mosquitto.url,
                     config=ALARM_CONFIG)
    daemons.append(d)
    assert d.wait() == 0, d.output()
    live.wait_for(f"{BASE}/availability", payload=b"offline")
    events = live.on(f"{BASE}/events")
    seqs = alarm_sequences(events)
    assert len(seqs) == 1, seqs
    (types,) = seqs.values()
    assert types[0] == "new" and types[-1] == "end" and set(types[1:-1]) <= {"update"}
    for m in events:
        ev = m.json()
        assert set(ev) == EVENT_FIELDS and ev["source"] == "m1" and ev["model"] == "dcase_ae"
        assert ev["peak_score"] >= ev["threshold"] and ev["start_time"] > 1e9
    end = events[-1].json()
    assert end["end_time"] > end["start_time"]
    # OFF first: a run starts with no open alarm, which replaces any ON a killed run left retained
    assert [m.payload for m in live.on(f"{BASE}/m1/alarm")] == [b"OFF", b"ON", b"OFF"]
    availability = [m.payload for m in live.on(f"{BASE}/availability")]
    assert availability[0] == b"online" and availability[-1] == b"offline"
    scores = [m.json() for m in live.on(f"{BASE}/m1/score")]  # the noise classifier's score rides along
    assert scores and all(0.0 <= s["noise"] <= 1.0 for s in scores), scores
    noise_sensor = [m.json() for m in live.on("homeassistant/sensor/asd-itest/m1_noise/config")][-1]
    assert noise_sensor["state_topic"] == f"{BASE}/m1/score"
    assert noise_sensor["value_template"] == "{{ value_json.noise }}"

    late = mqtt_collector([f"{BASE}/#"])  # a subscriber arriving later sees the retained final state
    late.wait_for(f"{BASE}/m1/alarm")
    late.wait_for(f"{BASE}/availability")
    late.wait_for(f"{BASE}/m1/status")
    assert [(m.payload, m.retain) for m in late.on(f"{BASE}/m1/alarm")] == [(b"OFF", True)]
    assert [(m.payload, m.retain) for m in late.on(f"{BASE}/availability")] == [(b"offline", True)]
    assert late.on(f"{BASE}/m1/status")[-1].json()["state"] == "ended"


def test_last_will_is_published_when_the_daemon_is_killed(tmp_path, bundle_dir, mosquitto, mqtt_collector, daemons):
    live = mqtt_collector([f"{BASE}/availability"])
    d = start_daemon(tmp_path, "--bundle", str(bundle_dir), "--replay", str(anomalous_wav(tmp_path / "m1.wav")),
                     "--loop", "--mqtt", mosquitto.url)
    daemons.append(d)
    live.wait_for(f"{BASE}/availability", payload=b"online", timeout=60)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(timeout=10)
    live.wait_for(f"{BASE}/availability", payload=b"offline", timeout=30)


def test_an_alarm_open_when_the_daemon_is_killed_is_ended_by_the_next_run(tmp_path, bundle_dir, mosquitto,
                                                                         mqtt_collector, daemons):
    live = mqtt_collector([f"{BASE}/#"])
    fault = anomalous_wav(tmp_path / "m1.wav", normal_s=1.0, fault_s=60.0, after_s=1.0)
    d = start_daemon(tmp_path, "--bundle", str(bundle_dir), "--replay", str(fault), "--mqtt", mosquitto.url,
                     config=ALARM_CONFIG)
    daemons.append(d)
    live.wait_for(f"{BASE}/m1/alarm", payload=b"ON", timeout=90)
    [new] = [m.json() for m in live.wait_for(f"{BASE}/events")]
    assert new["type"] == "new"
    d.proc.send_signal(signal.SIGKILL)  # mid-alarm: no `end`, the retained alarm stays ON
    d.proc.wait(timeout=10)
    killed = mqtt_collector([f"{BASE}/m1/alarm"])
    assert [m.payload for m in killed.wait_for(f"{BASE}/m1/alarm")] == [b"ON"]

    quiet = tmp_path / "quiet.wav"  # the next run does not even monitor m1 any more
    sf.write(quiet, machine_audio(3.0, 5), SR, subtype="FLOAT")
    d2 = start_daemon(tmp_path, "--bundle", str(bundle_dir), "--replay", str(quiet), "--speed", "0",
                      "--mqtt", mosquitto.url, config=ALARM_CONFIG)
    daemons.append(d2)
    assert d2.wait() == 0, d2.output()
    live.wait_for(f"{BASE}/availability", count=2, payload=b"offline")
    ends = [m.json() for m in live.on(f"{BASE}/events") if m.json()["type"] == "end"]
    assert [(e["id"], e["source"], e["reason"]) for e in ends] == [(new["id"], "m1", STALE_REASON)]
    assert ends[0]["end_time"] >= ends[0]["start_time"] == new["start_time"]
    late = mqtt_collector([f"{BASE}/m1/alarm"])
    assert [(m.payload, m.retain) for m in late.wait_for(f"{BASE}/m1/alarm")] == [(b"OFF", True)]
    assert "left open by the previous run" in d2.output()


@dataclass
class PersistentCollector:
    """A QoS 1 subscriber with a persistent session: a broker with persistence keeps its messages across a
    restart, so nothing the daemon sends while the subscriber reconnects can slip past it."""

    host: str
    port: int
    topic: str
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    client: Any = None

    def start(self) -> None:
        import paho.mqtt.client as paho

        ready = threading.Event()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="asd-itest-persistent", clean_session=False)
        c.on_connect = lambda cl, *_: cl.subscribe(self.topic, qos=1)
        c.on_subscribe = lambda *_: ready.set()
        c.on_message = lambda _c, _u, msg: self._add(msg.topic, bytes(msg.payload))
        c.reconnect_delay_set(0.1, 0.5)
        c.connect(self.host, self.port, keepalive=30)
        c.loop_start()
        self.client = c
        assert ready.wait(15), "persistent collector could not subscribe"

    def _add(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.messages.append((topic, payload))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.messages if t == topic]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_events_produced_while_the_broker_is_down_arrive_after_it_restarts_in_order(
    tmp_path, bundle_dir, mosquitto, daemons
):
    store = tmp_path / "mosquitto-data"
    store.mkdir()
    mosquitto.stop()
    user = pwd.getpwuid(os.getuid()).pw_name  # as root mosquitto would drop to a user that cannot write here
    mosquitto.conf.write_text(f"listener {mosquitto.port} {mosquitto.host}\nallow_anonymous true\nuser {user}\n"
                              f"persistence true\npersistence_location {store}/\nautosave_interval 1\n")
    mosquitto.start()
    collector = PersistentCollector(mosquitto.host, mosquitto.port, f"{BASE}/#")
    collector.start()
    journal = tmp_path / "events.jsonl"
    try:
        # fault from 4 s to 7 s of audio, in real time; the broker is down from the first status until the alarm
        # has ended (seen in the daemon's JSONL journal), then back while the replay still runs
        d = start_daemon(tmp_path, "--bundle", str(bundle_dir), "--mqtt", mosquitto.url,
                         "--replay", str(anomalous_wav(tmp_path / "m1.wav", normal_s=4.0, fault_s=3.0, after_s=40.0)),
                         config=ALARM_CONFIG + f"sinks:\n  jsonl:\n    path: {journal}\n"
                                               "  mqtt:\n    url: mqtt://x\n    reconnect_min: 0.2\n"
                                               "    reconnect_max: 0.5\n")
        daemons.append(d)
        wait_until(lambda: bool(collector.on(f"{BASE}/m1/status")), 60, "the daemon's first status")
        mosquitto.stop()
        wait_until(lambda: journal.exists() and '"type": "end"' in journal.read_text(), 60,
                   "the alarm to end while the broker is down")
        assert not collector.on(f"{BASE}/events")  # nothing alarm-related got through yet
        mosquitto.start()
        wait_until(lambda: len(collector.on(f"{BASE}/events")) >= 2 and len(collector.on(f"{BASE}/m1/alarm")) >= 2,
                   30, "the alarm events after the restart")
        d.proc.send_signal(signal.SIGTERM)
        assert d.wait(30) == 0, d.output()
    finally:
        collector.stop()
    journal_events = [json.loads(line) for line in journal.read_text().splitlines() if '"alarm"' in line]
    # delivery is at-least-once (a message unacknowledged when the link dropped is sent again, and a resubscribe
    # gets the retained alarm state again): compare without consecutive repeats
    events = collapse([json.loads(p) for p in collector.on(f"{BASE}/events")])
    types = [e["type"] for e in events]
    assert types[0] == "new" and types[-1] == "end" and set(types[1:-1]) <= {"update"}
    assert events == [{k: v for k, v in e.items() if k != "kind"} for e in journal_events]  # all, in order
    assert collapse(collector.on(f"{BASE}/m1/alarm")) == [b"OFF", b"ON", b"OFF"]  # OFF: the start-up state


def collapse(items: list) -> list:
    """The sequence without consecutive repeats."""
    return [x for i, x in enumerate(items) if i == 0 or x != items[i - 1]]


def test_sigterm_ends_open_alarms_and_goes_offline(tmp_path, bundle_dir, mosquitto, mqtt_collector, daemons):
    live = mqtt_collector([f"{BASE}/#"])
    # a long fault played in real time: the alarm is open when SIGTERM arrives
    d = start_daemon(tmp_path, "--bundle", str(bundle_dir), "--mqtt", mosquitto.url,
                     "--replay", str(anomalous_wav(tmp_path / "m1.wav", normal_s=1.0, fault_s=60.0, after_s=1.0)),
                     config=ALARM_CONFIG)
    daemons.append(d)
    live.wait_for(f"{BASE}/m1/alarm", payload=b"ON", timeout=60)
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait(30) == 0, d.output()
    live.wait_for(f"{BASE}/availability", payload=b"offline")
    types = [m.json()["type"] for m in live.on(f"{BASE}/events")]
    assert types[0] == "new" and types[-1] == "end"
    # OFF first: a run starts with no open alarm, which replaces any ON a killed run left retained
    assert [m.payload for m in live.on(f"{BASE}/m1/alarm")] == [b"OFF", b"ON", b"OFF"]
    assert "received SIGTERM" in d.output()


def test_each_sources_threshold_is_retained_with_a_configured_one_marked(tmp_path, bundle_dir, mosquitto,
                                                                         mqtt_collector, daemons):
    wav = tmp_path / "normal.wav"
    sf.write(wav, machine_audio(2.0, 1), SR, subtype="FLOAT")
    config = f"sources:\n  - name: own\n    replay: {wav}\n  - name: set\n    replay: {wav}\n    threshold: 0.125\n"
    d = start_daemon(tmp_path, "--bundle", str(bundle_dir), "--mqtt", mosquitto.url, "--speed", "0", config=config)
    daemons.append(d)
    assert d.wait() == 0, d.output()
    late = mqtt_collector([f"{BASE}/+/threshold"])  # after the daemon exited: what the broker retained
    own, configured = (late.wait_for(f"{BASE}/{name}/threshold")[0] for name in ("own", "set"))
    bundle = json.loads((bundle_dir / "bundle.json").read_text())
    assert own.retain and configured.retain
    assert own.json()["threshold"] == bundle["threshold"]["value"] and own.json()["method"] == "fixed"
    assert own.json()["false_alarm_rate"] is None  # the test bundle's hand-set threshold has no calibration
    assert (configured.json()["threshold"], configured.json()["method"]) == (0.125, "configured")
    assert "source set: threshold 0.125, set in the configuration" in d.output()
