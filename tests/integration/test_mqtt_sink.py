"""The MQTT sink against a real mosquitto: topics, retain flags, payloads, Last Will, the outbox across a broker
restart, Home Assistant discovery, and that the password never reaches the logs."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import paho.mqtt.publish as paho_publish
import pytest

from monitor.events import EVENT_SCHEMA, AlarmEvent, CounterEvent, ScoreUpdate, SourceStatus
from monitor.config import MqttSettings, parse_mqtt_url
from monitor.sinks.mqtt import MqttSink, sanitize_topic_part

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

NODE = "testnode"
BASE = f"asd/{NODE}"


def alarm(kind: str, source: str = "fan", n: int = 1, score: float = 2.0) -> AlarmEvent:
    return AlarmEvent(kind, f"{source}-{n}", source, "dcase_ae", score, max(score, 2.5), 1.0, start_time=100.0 + n,
                      end_time=110.0 + n if kind == "end" else None)


def score(source: str = "fan", value: float = 0.5, t: float = 1.0) -> ScoreUpdate:
    return ScoreUpdate(source, "dcase_ae", value, 1.0, time=t, level_dbfs=-23.5, alarm_active=False)


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Let the event loop (and the sink's task) run until `predicate` holds."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}") from None


@pytest.fixture
async def make_sink(mosquitto):
    sinks: list[MqttSink] = []

    async def make(sink_kwargs: dict | None = None, **overrides) -> MqttSink:
        settings = MqttSettings(url=mosquitto.url, reconnect_min=0.2, reconnect_max=0.5, **overrides)
        sink = MqttSink(settings, NODE, **(sink_kwargs or {}))
        await sink.start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.close()


async def test_topics_payloads_and_retain_flags(make_sink, mqtt_collector) -> None:
    live = mqtt_collector(["asd/#"])
    sink = await make_sink(score_interval=3600.0, ha_discovery=False)
    sink.publish(SourceStatus("fan", "online", "capturing", time=5.0))
    sink.publish(score(value=0.25))
    sink.publish(score(value=0.75))  # within score_interval: not published
    for kind in ("new", "update", "end"):
        sink.publish(alarm(kind))
    sink.publish(SourceStatus("pump", "silent", time=6.0))
    events = await live.await_for(f"{BASE}/events", count=3)
    await live.await_for(f"{BASE}/pump/status")

    assert [e.json()["type"] for e in events] == ["new", "update", "end"]
    first = events[0].json()
    assert first == {"type": "new", "id": "fan-1", "source": "fan", "model": "dcase_ae", "score": 2.0,
                     "peak_score": 2.5, "threshold": 1.0, "start_time": 101.0, "end_time": None,
                     "reason": "", "schema": EVENT_SCHEMA}
    assert events[2].json()["end_time"] == 111.0
    assert [m.payload for m in live.on(f"{BASE}/fan/alarm")] == [b"ON", b"OFF"]
    [status] = live.on(f"{BASE}/fan/status")
    assert status.json() == {"source": "fan", "state": "online", "detail": "capturing", "time": 5.0}
    [scored] = live.on(f"{BASE}/fan/score")
    assert scored.json()["score"] == 0.25 and scored.json()["level_dbfs"] == -23.5
    assert live.on(f"{BASE}/availability")[0].payload == b"online"

    late = mqtt_collector(["asd/#"])  # a late subscriber sees exactly the retained state
    await late.await_for(f"{BASE}/pump/status")
    retained = {m.topic: m.payload for m in late.messages if m.retain}
    assert retained[f"{BASE}/availability"] == b"online"
    assert retained[f"{BASE}/fan/alarm"] == b"OFF"
    assert f"{BASE}/events" not in retained and f"{BASE}/fan/score" not in retained


async def test_scores_rate_limited_per_source(make_sink, mqtt_collector) -> None:
    now = [0.0]
    live = mqtt_collector([f"{BASE}/+/score"])
    sink = await make_sink(score_interval=1.0, ha_discovery=False, sink_kwargs={"clock": lambda: now[0]})
    for t, source, value in [(0.0, "a", 1.0), (0.5, "a", 2.0), (0.6, "b", 3.0), (1.0, "a", 4.0), (1.2, "b", 5.0)]:
        now[0] = t
        sink.publish(score(source, value))
    await live.await_for(f"{BASE}/a/score", count=2)
    await live.await_for(f"{BASE}/b/score", count=1)
    await sink.close()
    assert [m.json()["score"] for m in live.messages] == [1.0, 3.0, 4.0]


async def test_source_names_are_sanitised_for_topics(make_sink, mqtt_collector) -> None:
    assert sanitize_topic_part("line 1/fan#+") == "line_1_fan"
    live = mqtt_collector(["asd/#"])
    sink = await make_sink(ha_discovery=False)
    sink.publish(SourceStatus("line 1/fan#+", "online"))
    [status] = await live.await_for(f"{BASE}/line_1_fan/status")
    assert status.retain is False and status.json()["state"] == "online"


async def test_close_publishes_offline_retained(make_sink, mqtt_collector) -> None:
    sink = await make_sink(ha_discovery=False)
    await until(lambda: sink.connected, 10, "connect")
    await sink.close()
    late = mqtt_collector([f"{BASE}/availability"])
    [message] = await late.await_for(f"{BASE}/availability")
    assert (message.payload, message.retain) == (b"offline", True)


def test_last_will_when_the_process_is_killed(mosquitto, mqtt_collector, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio
        from monitor.events import SourceStatus
        from monitor.config import parse_mqtt_url
        from monitor.sinks.mqtt import MqttSink

        async def main():
            sink = MqttSink(parse_mqtt_url("{mosquitto.url}", keepalive=5), "{NODE}")
            await sink.start()
            sink.publish(SourceStatus("fan", "online"))
            await asyncio.sleep(3600)

        asyncio.run(main())
    """)
    live = mqtt_collector([f"{BASE}/#"])
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    try:
        live.wait_for(f"{BASE}/fan/status", timeout=30)
        assert live.on(f"{BASE}/availability")[-1].payload == b"online"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        live.wait_for(f"{BASE}/availability", payload=b"offline")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    late = mqtt_collector([f"{BASE}/availability"])
    [message] = late.wait_for(f"{BASE}/availability")
    assert (message.payload, message.retain) == (b"offline", True)


async def test_outbox_delivers_in_order_across_a_broker_restart(mosquitto, make_sink, mqtt_collector) -> None:
    sink = await make_sink(ha_discovery=False)
    await until(lambda: sink.connected, 10, "connect")
    mosquitto.stop()
    sink.publish(alarm("new", n=0))  # before the sink has noticed the loss
    await until(lambda: not sink.connected, 10, "the sink to notice the broker is gone")
    for n in range(1, 20):
        sink.publish(alarm("new" if n % 2 == 0 else "end", n=n))
    # Broker start and subscription are synchronous: the sink's task cannot reconnect before we listen.
    mosquitto.start()
    live = mqtt_collector([f"{BASE}/fan/alarm", f"{BASE}/events"])
    await live.await_for(f"{BASE}/events", count=20, timeout=30)
    received = [m.payload.decode() if m.topic.endswith("alarm") else m.json()["id"] for m in live.messages]
    expected = [x for n in range(20) for x in ("ON" if n % 2 == 0 else "OFF", f"fan-{n}")]
    assert received == expected
    assert sink.stats.connects == 2 and sink.stats.errors >= 1 and sink.stats.dropped == 0


async def test_retained_state_is_republished_after_a_broker_restart_without_persistence(
    mosquitto, make_sink, mqtt_collector
) -> None:
    sink = await make_sink(sink_kwargs={"sources": ["fan", "pump"]})
    sink.publish(SourceStatus("fan", "online", "", 1.0))
    sink.publish(alarm("new", n=1))
    first = mqtt_collector([f"{BASE}/#"])
    await first.await_for(f"{BASE}/fan/alarm", payload=b"ON")
    await first.await_for(f"{BASE}/pump/alarm", payload=b"OFF")  # configured, no alarm: OFF from the start
    mosquitto.stop()
    await until(lambda: not sink.connected, 10, "the sink to notice the broker is gone")
    mosquitto.start()  # `persistence false`: the broker has forgotten every retained message
    await until(lambda: sink.connected and sink.stats.connects == 2, 30, "the sink to reconnect")
    expected = {f"{BASE}/fan/alarm": b"ON", f"{BASE}/pump/alarm": b"OFF", f"{BASE}/availability": b"online"}
    topics = [*expected, f"{BASE}/fan/status", f"homeassistant/binary_sensor/asd_{NODE}/pump_alarm/config",
              f"homeassistant/sensor/asd_{NODE}/fan_score/config"]
    seen = mqtt_collector(topics)
    for topic in topics:
        await seen.await_for(topic, payload=expected.get(topic))
    late = mqtt_collector(topics)  # everything seen is now retained by the broker, not only passing by
    for topic in topics:
        [m] = await late.await_for(topic)
        assert m.retain and m.payload == expected.get(topic, m.payload), topic
    assert late.on(f"{BASE}/fan/status")[0].json()["state"] == "online"
    assert sink.stats.dropped == 0


async def test_close_waits_for_the_broker_to_deliver_the_outbox(mosquitto, make_sink, mqtt_collector) -> None:
    sink = await make_sink(ha_discovery=False, close_timeout=30.0)
    await until(lambda: sink.connected, 10, "connect")
    mosquitto.stop()
    await until(lambda: not sink.connected, 10, "the sink to notice the broker is gone")
    for n in range(6):
        sink.publish(alarm("new" if n % 2 == 0 else "end", n=n))
    errors = sink.stats.errors
    closing = asyncio.create_task(sink.close())
    await until(lambda: sink.stats.errors >= errors + 2, 15, "reconnect attempts while closing")
    assert not closing.done()  # still trying, not given up at the first refused connection
    # Broker start and subscription are synchronous: the sink's task cannot reconnect before we listen.
    mosquitto.start()
    live = mqtt_collector([f"{BASE}/#"])
    await closing
    await live.await_for(f"{BASE}/availability", payload=b"offline")  # acknowledged by the broker != received
    received = [(m.topic, m.payload) for m in live.messages]
    expected = [x for n in range(6) for x in ((f"{BASE}/fan/alarm", b"ON" if n % 2 == 0 else b"OFF"),
                                              (f"{BASE}/events", alarm("new", n=n).id.encode()))]
    got = [(t, p if t.endswith("alarm") else json.loads(p)["id"].encode()) for t, p in received
           if not t.endswith("availability")]
    assert got == expected
    assert received[-1] == (f"{BASE}/availability", b"offline")
    assert sink.stats.dropped == 0 and sink.queued == 0
    late = mqtt_collector([f"{BASE}/availability"])
    [message] = await late.await_for(f"{BASE}/availability")
    assert (message.payload, message.retain) == (b"offline", True)


@pytest.mark.timeout(20)  # close() must give up after close_timeout, not hang on the dead broker
async def test_close_gives_up_after_close_timeout_and_counts_the_loss(mosquitto, make_sink, caplog) -> None:
    counted: list[CounterEvent] = []
    sink = await make_sink(ha_discovery=False, close_timeout=1.0, sink_kwargs={"on_counter": counted.append})
    await until(lambda: sink.connected, 10, "connect")
    mosquitto.stop()
    await until(lambda: not sink.connected, 10, "the sink to notice the broker is gone")
    for kind in ("new", "update", "end"):  # 2 + 1 + 2 messages
        sink.publish(alarm(kind))
    caplog.set_level(logging.WARNING, logger="monitor.sinks.mqtt")
    await sink.close()
    assert "5 message(s) not delivered" in caplog.text
    assert sink.stats.dropped == 5 and sink.queued == 0
    assert [c.amount for c in counted if c.detail == "undelivered at shutdown"] == [5]


async def test_full_outbox_drops_oldest_scores_first(mosquitto, make_sink, mqtt_collector) -> None:
    counted: list[CounterEvent] = []
    sink = await make_sink(ha_discovery=False, outbox_size=6, score_interval=0.0,
                           sink_kwargs={"on_counter": counted.append})
    await until(lambda: sink.connected, 10, "connect")
    mosquitto.stop()
    await until(lambda: not sink.connected, 10, "the sink to notice the broker is gone")
    for value in range(5):
        sink.publish(score(value=float(value)))
    sink.publish(alarm("new"))  # alarm + event: one score must go
    sink.publish(alarm("end"))  # two more scores go
    assert sink.stats.dropped == 3 and sink.queued == 6
    mosquitto.start()
    live = mqtt_collector([f"{BASE}/#"])
    await live.await_for(f"{BASE}/events", count=2)
    assert [m.json()["score"] for m in live.on(f"{BASE}/fan/score")] == [3.0, 4.0]
    assert [m.payload for m in live.on(f"{BASE}/fan/alarm")] == [b"ON", b"OFF"]
    drops = [c for c in counted if "outbox full" in c.detail]
    assert len(drops) == 3 and all(c.name == "sink_errors" and c.labels == {"sink": "mqtt"} for c in drops)


async def test_home_assistant_discovery_and_republish_on_ha_online(mosquitto, make_sink, mqtt_collector) -> None:
    live = mqtt_collector(["homeassistant/#"])
    sink = await make_sink(sink_kwargs={"sources": ["fan"]})
    binary = f"homeassistant/binary_sensor/asd_{NODE}/fan_alarm/config"
    sensor = f"homeassistant/sensor/asd_{NODE}/fan_score/config"
    await live.await_for(binary)
    [config] = await live.await_for(sensor)
    alarm_config = live.on(binary)[0].json()
    assert alarm_config["device_class"] == "problem"
    assert alarm_config["state_topic"] == f"{BASE}/fan/alarm"
    assert alarm_config["availability_topic"] == f"{BASE}/availability"
    assert config.json()["state_topic"] == f"{BASE}/fan/score"
    assert config.json()["device"]["identifiers"] == alarm_config["device"]["identifiers"]
    sink.publish(SourceStatus("pump", "online"))  # a new source is announced when first seen
    await live.await_for(f"homeassistant/binary_sensor/asd_{NODE}/pump_alarm/config")
    before = len(live.on(binary))
    paho_publish.single("homeassistant/status", b"online", hostname=mosquitto.host, port=mosquitto.port)
    await live.await_for(binary, count=before + 1)
    await live.await_for(f"homeassistant/binary_sensor/asd_{NODE}/pump_alarm/config", count=2)
    late = mqtt_collector(["homeassistant/#"])
    assert (await late.await_for(sensor))[0].retain


async def test_password_never_logged(mosquitto, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-pw"
    settings = parse_mqtt_url(f"mqtt://alice:{secret}@{mosquitto.host}:{mosquitto.port}", reconnect_min=0.2)
    assert settings.username == "alice" and settings.password.get_secret_value() == secret
    assert secret not in settings.url and secret not in repr(settings) and secret not in str(settings.model_dump())
    sink = MqttSink(settings, NODE)
    await sink.start()
    await until(lambda: sink.connected, 10, "connect with credentials")
    mosquitto.stop()  # a connection loss and failed reconnects log the URL and errors
    await until(lambda: sink.stats.errors >= 2, 15, "reconnect attempts")
    await sink.close()
    logging.getLogger("test").info("settings: %s sink: %r", settings, sink)
    assert caplog.records and secret not in caplog.text


def test_url_parsing_and_validation() -> None:
    s = parse_mqtt_url("mqtts://broker.example:8884")
    assert (s.host, s.port, s.use_tls) == ("broker.example", 8884, True)
    assert parse_mqtt_url("mqtts://broker.example").port == 8883
    assert parse_mqtt_url("mqtt://broker.example").port == 1883
    encoded = parse_mqtt_url("mqtt://bob:p%40ss@h:1")
    assert encoded.password.get_secret_value() == "p@ss" and encoded.url == "mqtt://h:1"
    with pytest.raises(ValueError, match="mqtt:// or mqtts://"):
        parse_mqtt_url("http://h:1")
    with pytest.raises(ValueError, match="bad port"):
        parse_mqtt_url("mqtt://h:port")
    with pytest.raises(ValueError, match="ca_file '/nonexistent/ca.pem' is not a readable file"):
        parse_mqtt_url("mqtts://h", tls={"ca_file": "/nonexistent/ca.pem"})


async def test_tls_broker_verified_with_its_ca(mosquitto_tls) -> None:
    import paho.mqtt.subscribe as paho_subscribe

    settings = parse_mqtt_url(mosquitto_tls.url, tls={"ca_file": str(mosquitto_tls.tls.ca)}, ha_discovery=False)
    sink = MqttSink(settings, NODE)
    await sink.start()
    sink.publish(SourceStatus("fan", "online"))
    await until(lambda: sink.queued == 0 and sink.stats.published >= 2, 15, "delivery over TLS")
    await sink.close()
    retained = await asyncio.to_thread(
        paho_subscribe.simple, f"{BASE}/fan/status", hostname=mosquitto_tls.host, port=mosquitto_tls.port,
        tls={"ca_certs": str(mosquitto_tls.tls.ca)}, retained=True)
    assert retained.retain and b'"online"' in retained.payload

    unverified = MqttSink(parse_mqtt_url(mosquitto_tls.url, reconnect_min=0.1), NODE)  # system CAs only
    await unverified.start()
    await until(lambda: unverified.stats.errors >= 1, 15, "a certificate error")
    assert not unverified.connected
    await unverified.close()
