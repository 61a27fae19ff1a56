"""The MQTT sink against a real mosquitto: topics, retain flags, payloads, Last Will, the outbox across a broker
restart, Home Assistant discovery, and that the password never reaches the logs."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import paho.mqtt.publish as paho_publish
import pytest

from monitor.events import EVENT_SCHEMA, AlarmEvent, CounterEvent, ScoreUpdate, SourceStatus, ThresholdInfo
from monitor.config import MqttSettings, parse_mqtt_url
from monitor.sinks.mqtt import MqttSink, ha_id, sanitize_topic_part
from tests.helpers import calibrated_info

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

NODE = "testnode"
BASE = f"asd/{NODE}"


def alarm(kind: str, source: str = "fan", n: int = 1, score: float = 2.0) -> AlarmEvent:
    return AlarmEvent(kind, f"{source}-{n}", source, "dcase_ae", score, max(score, 2.5), 1.0, start_time=100.0 + n,
                      end_time=110.0 + n if kind == "end" else None)


def score(source: str = "fan", value: float = 0.5, t: float = 1.0, noise: float | None = None) -> ScoreUpdate:
    return ScoreUpdate(source, "dcase_ae", value, 1.0, time=t, level_dbfs=-23.5, alarm_active=False, noise=noise)


def threshold_info(source: str = "fan") -> ThresholdInfo:
    """A threshold calibrated on 5 cross-fitted scores (one above it), as a bundle trained on few clips records it."""
    return calibrated_info(source, [0.8, 1.1, 0.9, 1.6, 1.2], 1.4)


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
    assert scored.json()["noise"] is None  # no noise classifier
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
    assert sanitize_topic_part("line 1/fan#+") == "line_1_fan_"
    assert sanitize_topic_part("fan_") != sanitize_topic_part("fan")  # names the config accepts stay as they are
    live = mqtt_collector(["asd/#"])
    sink = await make_sink(ha_discovery=False)
    sink.publish(SourceStatus("line 1/fan#+", "online"))
    [status] = await live.await_for(f"{BASE}/line_1_fan_/status")
    assert status.retain is False and status.json()["state"] == "online"


async def test_the_threshold_and_how_sure_it_is_are_retained(make_sink, mqtt_collector) -> None:
    sink = await make_sink(ha_discovery=False)
    info = threshold_info()
    sink.publish(info)
    sink.publish(ThresholdInfo("pump", "dcase_ae", 0.75, "configured"))
    await until(lambda: sink.connected and not sink.queued and sink.stats.published >= 3, 10, "delivery")
    late = mqtt_collector([f"{BASE}/+/threshold"])  # subscribed after the publish: only retained ones arrive
    [fan] = await late.await_for(f"{BASE}/fan/threshold")
    [pump] = await late.await_for(f"{BASE}/pump/threshold")
    assert fan.retain and pump.retain
    payload = fan.json()
    assert payload == json.loads(json.dumps(info.to_dict()))  # intervals as JSON lists, an open bound as null
    assert payload["false_alarm_rate"] == 0.2 and payload["n_scores"] == 5 and payload["scores"] == "cross-fitted"
    low, high = payload["false_alarm_rate_interval"]
    assert 0.0 < low < 0.2 < high < 1.0 and payload["quantile_interval"][1] is None  # 5 scores bound little
    assert {k: pump.json()[k] for k in ("threshold", "method", "n_scores", "false_alarm_rate")} == {
        "threshold": 0.75, "method": "configured", "n_scores": None, "false_alarm_rate": None}


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
    sink.publish(threshold_info())
    sink.publish(alarm("new", n=1))
    first = mqtt_collector([f"{BASE}/#"])
    await first.await_for(f"{BASE}/fan/alarm", payload=b"ON")
    await first.await_for(f"{BASE}/pump/alarm", payload=b"OFF")  # configured, no alarm: OFF from the start
    mosquitto.stop()
    await until(lambda: not sink.connected, 10, "the sink to notice the broker is gone")
    mosquitto.start()  # `persistence false`: the broker has forgotten every retained message
    await until(lambda: sink.connected and sink.stats.connects == 2, 30, "the sink to reconnect")
    expected = {f"{BASE}/fan/alarm": b"ON", f"{BASE}/pump/alarm": b"OFF", f"{BASE}/availability": b"online"}
    topics = [*expected, f"{BASE}/fan/status", f"{BASE}/fan/threshold", ha_topic("binary_sensor", "pump_alarm"),
              ha_topic("sensor", "fan_score")]
    seen = mqtt_collector(topics)
    for topic in topics:
        await seen.await_for(topic, payload=expected.get(topic))
    late = mqtt_collector(topics)  # everything seen is now retained by the broker, not only passing by
    for topic in topics:
        [m] = await late.await_for(topic)
        assert m.retain and m.payload == expected.get(topic, m.payload), topic
    assert late.on(f"{BASE}/fan/status")[0].json()["state"] == "online"
    assert late.on(f"{BASE}/fan/threshold")[0].json()["n_scores"] == 5
    assert sink.stats.dropped == 0


class CuttingRelay:
    """A TCP relay in front of the real broker that cuts the first connection when the client sends its first
    PUBLISH (MQTT packet type 3, after CONNACK): the broker vanishes while the sink is starting its session, with a
    QoS 1 publish in flight. Later connections pass through untouched."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.connections = 0
        self.server: asyncio.base_events.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"mqtt://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        cut = self.connections == 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.broker_port)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
            first = True
            while data := await src.read(65536):
                if upstream and cut and not first and data[0] >> 4 == 3:  # the first PUBLISH after CONNECT
                    break
                first = False
                dst.write(data)
                await dst.drain()
            for w in (writer, up_writer):
                w.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False),
                             return_exceptions=True)

    async def close(self) -> None:
        for w in self.writers:  # ends the relay's pipes
            w.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.mark.timeout(60)
async def test_a_connection_lost_while_the_session_starts_leaves_no_unretrieved_future(mosquitto) -> None:
    """The broker going away with a publish in flight: aiomqtt records the loss in a future that nobody awaits
    there, and asyncio printed "Future exception was never retrieved" whenever that client was collected. The sink
    counts the loss, reconnects and delivers, and has marked every recorded loss as seen."""
    relay = CuttingRelay(mosquitto.port)
    url = await relay.start()
    sink = MqttSink(MqttSettings(url=url, reconnect_min=0.2, reconnect_max=0.5), NODE, sources=["fan"])
    clients: list = []
    make_client = sink._client
    sink._client = lambda: clients.append(make_client()) or clients[-1]  # keep each connection's client to inspect
    try:
        await sink.start()
        await until(lambda: sink.stats.connects == 2 and sink.connected, 40, "the sink to reconnect")
        sink.publish(alarm("new", n=1))
        await until(lambda: sink.queued == 0, 10, "the alarm to be delivered")
    finally:
        await sink.close()
        await relay.close()
    assert relay.connections >= 2 and sink.stats.errors >= 1
    lost = clients[0]._disconnected  # the first connection's loss, as aiomqtt recorded it
    assert lost.done() and not lost.cancelled()
    # asyncio's flag behind the "never retrieved" message: set when an exception is stored, cleared once it is read
    assert not lost._log_traceback
    assert lost.exception() is not None


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


def ha_topic(component: str, object_id: str) -> str:
    return f"homeassistant/{component}/asd-{NODE}/{object_id}/config"


async def test_home_assistant_devices_per_source_and_republish_on_ha_online(mosquitto, make_sink,
                                                                          mqtt_collector) -> None:
    live = mqtt_collector(["homeassistant/#"])
    await make_sink(sink_kwargs={"sources": ["fan"]})
    node, alarm, audio, score = (ha_topic("binary_sensor", "online"), ha_topic("binary_sensor", "fan_alarm"),
                                 ha_topic("binary_sensor", "fan_audio"), ha_topic("sensor", "fan_score"))
    configs = {t: (await live.await_for(t))[0].json() for t in (node, alarm, audio, score)}
    assert configs[node]["state_topic"] == f"{BASE}/availability" and configs[node]["device_class"] == "connectivity"
    node_device = configs[node]["device"]
    for topic in (alarm, audio, score):  # one device per machine, linked to the node's device
        device = configs[topic]["device"]
        assert device["name"] == "fan" and device["via_device"] == node_device["identifiers"][0]
        assert device["identifiers"] != node_device["identifiers"]
        assert configs[topic]["availability_topic"] == f"{BASE}/availability"
        assert configs[topic]["origin"]["name"] == "asd-monitor"
    assert configs[alarm]["device_class"] == "problem" and configs[alarm]["state_topic"] == f"{BASE}/fan/alarm"
    assert configs[audio]["device_class"] == "connectivity" and configs[audio]["state_topic"] == f"{BASE}/fan/status"
    assert configs[score]["expire_after"] == MqttSettings().ha_expire_after
    # the threshold's metadata as the score's attributes: a retained topic sent once per run, not one per score
    assert configs[score]["json_attributes_topic"] == f"{BASE}/fan/threshold"
    assert "sw_version" in node_device
    before = len(live.on(alarm))
    paho_publish.single("homeassistant/status", b"online", hostname=mosquitto.host, port=mosquitto.port)
    await live.await_for(alarm, count=before + 1)
    late = mqtt_collector(["homeassistant/#"])
    assert (await late.await_for(score))[0].retain


# Home Assistant's MQTT discovery schema for the two platforms used, from homeassistant/components/mqtt
# (schemas.py: device and origin; binary_sensor.py, sensor.py and the entity schema shared by both):
# every key we send must be one of these (full names: we send no abbreviations), the required ones present.
HA_ENTITY_KEYS = {"availability_topic", "payload_available", "payload_not_available", "availability_mode",
                  "availability_template", "device", "enabled_by_default", "entity_category", "icon",
                  "json_attributes_topic", "json_attributes_template", "name", "object_id", "unique_id", "qos",
                  "encoding", "origin", "state_topic", "value_template", "device_class", "expire_after",
                  "force_update"}
HA_PLATFORM_KEYS = {"binary_sensor": HA_ENTITY_KEYS | {"off_delay", "payload_on", "payload_off"},
                    "sensor": HA_ENTITY_KEYS | {"state_class", "unit_of_measurement", "suggested_display_precision",
                                                "last_reset_value_template", "options"}}
HA_DEVICE_KEYS = {"identifiers", "connections", "manufacturer", "model", "name", "hw_version", "serial_number",
                  "sw_version", "via_device", "suggested_area", "configuration_url"}
HA_ORIGIN_KEYS = {"name", "sw_version", "support_url"}
HA_DEVICE_CLASSES = {"binary_sensor": {"problem", "connectivity"}, "sensor": set()}  # the ones we may use
HA_ID = re.compile(r"^[a-zA-Z0-9_-]+$")  # node_id and object_id in discovery topics


def check_discovery(topic: str, config: dict) -> str:
    """AssertionError naming the offending key unless `config` is valid discovery for its topic's platform;
    returns the platform."""
    prefix, platform, node_id, object_id, leaf = topic.split("/")
    assert prefix == "homeassistant" and leaf == "config" and platform in HA_PLATFORM_KEYS, topic
    assert HA_ID.match(node_id) and HA_ID.match(object_id), topic
    assert set(config) <= HA_PLATFORM_KEYS[platform], (topic, set(config) - HA_PLATFORM_KEYS[platform])
    assert isinstance(config["state_topic"], str) and "#" not in config["state_topic"], topic
    assert isinstance(config["unique_id"], str) and config["name"], topic
    device, origin = config["device"], config["origin"]
    assert set(device) <= HA_DEVICE_KEYS and device["identifiers"], (topic, device)
    assert all(isinstance(v, str) for k, v in device.items() if k != "identifiers"), device
    assert set(origin) <= HA_ORIGIN_KEYS and origin["name"], origin
    if "device_class" in config:
        assert config["device_class"] in HA_DEVICE_CLASSES[platform], config["device_class"]
    if "expire_after" in config:
        assert isinstance(config["expire_after"], int) and config["expire_after"] > 0
    if "state_class" in config:
        assert config["state_class"] in {"measurement", "total", "total_increasing"}
    if "entity_category" in config:
        assert config["entity_category"] in {"config", "diagnostic"}
    return platform


def render(template: str, payload: bytes) -> str:
    """A value template rendered as Home Assistant renders it for a JSON payload (`value`, `value_json`)."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return env.from_string(template).render(value=payload.decode(), value_json=json.loads(payload)).strip()


async def test_every_discovery_payload_follows_home_assistant_schema(mosquitto, make_sink, mqtt_collector) -> None:
    live = mqtt_collector(["homeassistant/#", f"{BASE}/#"])
    sink = await make_sink(sink_kwargs={"sources": ["fan", "fan.1", "fan_1", "fan-1", "Ölpumpe"], "noise": True},
                           score_interval=0.0)
    states = ("online", "silent", "clipping", "noisy", "offline", "error", "ended")
    for i, state in enumerate(states):
        sink.publish(SourceStatus("fan", state, f"detail {i}", float(i)))
    sink.publish(score("fan", 0.75))  # before the classifier's first window
    sink.publish(score("fan", 0.5, noise=0.375))
    await live.await_for(f"{BASE}/fan/status", count=len(states))
    await live.await_for(f"{BASE}/fan/score", count=2)
    configs = {}
    for source in ("fan", "fan.1", "fan_1", "fan-1", "Ölpumpe"):
        await live.await_for(ha_topic("sensor", f"{ha_id(source)}_noise"))
    for m in live.messages:
        if m.topic.startswith("homeassistant/") and m.payload:
            configs[m.topic] = m.json()
    assert len(configs) == 1 + 5 * 4  # the node's entity, four per source (with the noise score)
    unique_ids = [c["unique_id"] for c in configs.values()]
    assert len(set(unique_ids)) == len(unique_ids)  # fan.1, fan_1 and fan-1 do not collide
    assert len({tuple(c["device"]["identifiers"]) for c in configs.values()}) == 1 + 5
    for topic, config in configs.items():
        platform = check_discovery(topic, config)
        if config["name"] == "anomaly score":  # attributes: the threshold's metadata; the noise score has none
            assert config["json_attributes_topic"] == config["state_topic"].removesuffix("/score") + "/threshold"
        elif config["name"] == "noise score":
            assert "json_attributes_topic" not in config
        template = config.get("value_template")
        if template is None:
            continue
        [state_topic] = [config["state_topic"]]
        for m in live.on(state_topic):
            out = render(template, m.payload)
            if platform == "binary_sensor":
                expected = "ON" if m.json()["state"] in ("online", "silent", "clipping", "noisy") else "OFF"
                assert out == expected, (topic, m.payload, out)
            elif config["name"] == "noise score":  # "None" (no window yet) is what HA takes as unknown
                assert out == str(m.json()["noise"]), (topic, out)
            else:
                assert float(out) == m.json()["score"], (topic, out)
        assert live.on(state_topic) or state_topic.endswith(("fan.1/status", "fan_1/status", "fan-1/status",
                                                             "Ölpumpe/status", "/score"))


async def test_configs_of_sources_no_longer_configured_are_removed(mosquitto, make_sink, mqtt_collector) -> None:
    legacy = "homeassistant/binary_sensor/asd_testnode/pump_alarm/config"  # the one-device-per-node scheme
    paho_publish.single(legacy, b'{"name": "pump anomaly"}', retain=True, hostname=mosquitto.host,
                        port=mosquitto.port)
    first = await make_sink(sink_kwargs={"sources": ["fan", "pump"], "noise": True})
    seen = mqtt_collector(["homeassistant/#"])
    await seen.await_for(ha_topic("sensor", "pump_score"))
    await seen.await_for(ha_topic("sensor", "fan_noise"))
    await seen.await_for(legacy, payload=b"")  # the old scheme's config is emptied at the first connect
    await first.close()
    await make_sink(sink_kwargs={"sources": ["fan"]})  # pump removed from the configuration, and the classifier
    for object_id in ("pump_alarm", "pump_audio"):
        await seen.await_for(ha_topic("binary_sensor", object_id), payload=b"")
    for object_id in ("pump_score", "pump_noise", "fan_noise"):
        await seen.await_for(ha_topic("sensor", object_id), payload=b"")
    late = mqtt_collector(["homeassistant/#"])
    await late.await_for(ha_topic("sensor", "fan_score"))
    await asyncio.sleep(0.5)  # retained messages arrive together at subscription
    left = {m.topic for m in late.messages}
    assert not any("pump" in t or "noise" in t for t in left), left
    assert ha_topic("binary_sensor", "fan_alarm") in left and ha_topic("binary_sensor", "online") in left


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
