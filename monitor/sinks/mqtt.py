"""MQTT sink: alarms, events, source health and rate-limited scores on `<base_topic>/<node>/...`, plus Home
Assistant discovery.

Topics (base `asd/<node>`):
  availability        `online` (retained, on every connect) / `offline` (retained; also the Last Will)
  <source>/status     JSON {source, state, detail, time} from SourceStatus (retained)
  <source>/alarm      `ON` / `OFF` from AlarmEvent new / end (retained)
  events              JSON of AlarmEvent.to_dict() (qos 1, not retained)
  <source>/score      JSON of ScoreUpdate.to_dict() (with `noise`, the noise classifier's score, null without one), at
                      most once per `score_interval` per source
  <source>/threshold  JSON of ThresholdInfo.to_dict(): the threshold and how sure it is, once at start (retained)

Retained state survives the daemon and the broker: on every connect (the first, and each reconnect after a broker
restart, which without persistence forgets retained messages) the sink publishes `online`, the discovery configs
and the last retained `status`, `alarm` and `threshold` of every source, as Frigate republishes its state topics.
Configured sources start as alarm `OFF`: no alarm is open when a run starts, so a retained `ON` left by a killed run
is replaced on the first connect (`monitor.journal` also sends that alarm's `end` event).

Home Assistant discovery (`ha_discovery`): the node is a device with a `monitor` connectivity entity (from
`availability`); each source is a device of its own (so machines can sit in their own areas), linked to the node
with `via_device`, with an `anomaly` problem entity, an `audio input` connectivity entity from `<source>/status`
and an `anomaly score` sensor that expires after `ha_expire_after` seconds without a score, with the threshold's
metadata (`<source>/threshold`) as its attributes (with a noise classifier, `noise=True`, also a `noise score`
sensor from the score topic). Ids are `ha_id` encodings, one to one. On every connect the sink subscribes to this
node's retained configs and empties those no configured source publishes (removed sources, and the
one-device-per-node scheme before this one).

`publish()` only appends to a bounded outbox; one task owns the connection, reconnects with back-off and drains
the outbox in order. A message leaves the outbox only once the broker has acknowledged it, so a broker restart
loses nothing (delivery is at-least-once). When the outbox is full the oldest score is dropped first: alarms and
events matter more than a gauge that the next update replaces. `close()` keeps reconnecting for up to
`close_timeout` seconds, so events queued during an outage still leave if the broker comes back before the daemon
exits; whatever is left then is counted as dropped.

Counters: `stats` (published, dropped, errors, connects) can be read at any time; when `on_counter` is given,
each drop or connection error is also reported as a `CounterEvent(name="sink_errors", source="mqtt", ...)`,
which the daemon forwards to the Prometheus sink (`asd_sink_errors_total{sink="mqtt"}`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import aiomqtt
from models.runtime import own_version
from monitor.config import MqttSettings
from monitor.events import AlarmEvent, CounterEvent, Event, ScoreUpdate, SourceStatus, ThresholdInfo
from monitor.sinks.jsonl import json_safe

log = logging.getLogger(__name__)

SINK_NAME = "mqtt"
_TOPIC_UNSAFE = re.compile(r"[+#/\s\x00-\x1f\x7f]+")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_ACK_TIMEOUT_S = 10.0


def sanitize_topic_part(name: str) -> str:
    """A source name as one topic level: MQTT wildcards, separators and whitespace would change the topic tree.
    Names the configuration accepts are already safe and come out unchanged (so `fan` and `fan_` stay apart)."""
    return _TOPIC_UNSAFE.sub("_", name) or "_"


def ha_id(name: str) -> str:
    """`name` in the characters Home Assistant allows in discovery ids, one to one: letters and digits stay, every
    other character (`_` and `-` included) becomes `_` and its UTF-8 bytes in hex, so `fan.1` and `fan_1` cannot
    share an id, and `-` is free to separate the parts of a unique id."""
    return "".join(c if c.isascii() and c.isalnum() else "".join(f"_{b:02x}" for b in c.encode()) for c in name)


@dataclass
class MqttStats:
    """What the sink has done since it started; read by tests and available to the daemon."""

    published: int = 0
    dropped: int = 0
    errors: int = 0
    connects: int = 0


@dataclass(frozen=True)
class _Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    is_score: bool = False


class MqttSink:
    """Publishes monitor events to an MQTT broker without ever blocking the caller (see the module docstring)."""

    name = SINK_NAME

    def __init__(
        self,
        settings: MqttSettings,
        node: str,
        *,
        sources: Iterable[str] = (),
        on_counter: Callable[[CounterEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        noise: bool = False,
    ) -> None:
        """`noise`: a noise classifier scores the sources (their discovery then lists a noise sensor)."""
        self.settings = settings
        self.noise = noise
        self.node = sanitize_topic_part(node)
        self.base = f"{settings.base_topic.rstrip('/')}/{self.node}"
        self.availability_topic = f"{self.base}/availability"
        self.stats = MqttStats()
        self._on_counter = on_counter
        self._clock = clock
        self._outbox: collections.deque[_Message] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closing = asyncio.Event()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sources: dict[str, str] = {}  # topic-safe name -> original name, in order of appearance
        self._last_score: dict[str, float] = {}
        self._retained: dict[str, _Message] = {}  # topic -> the last retained status/alarm/threshold message queued
        self._node_uid = f"asd-{ha_id(self.node)}"  # HA node id and unique-id prefix
        self._legacy_node_id = _ID_UNSAFE.sub("_", f"asd_{self.node}").strip("_")  # before 0.2: removed on sight
        self._origin = {"name": "asd-monitor", "sw_version": own_version()}
        self._expected_topics: set[str] = set()  # discovery config topics of the known sources
        for source in sources:
            if not self._known(source):
                raise ValueError(f"sources {self._sources[sanitize_topic_part(source)]!r} and {source!r} would "
                                 f"publish to the same MQTT topics ({self.topic(source, '...')}): rename one")
            topic = self.topic(source, "alarm")
            self._retained[topic] = _Message(topic, b"OFF", settings.qos, True)

    def __repr__(self) -> str:
        return f"MqttSink(url={self.settings.url!r}, node={self.node!r}, queued={len(self._outbox)})"

    # ---- topics -------------------------------------------------------------------------------------------

    def topic(self, source: str, leaf: str) -> str:
        """`<base>/<node>/<source>/<leaf>` with the source name made topic-safe."""
        return f"{self.base}/{sanitize_topic_part(source)}/{leaf}"

    @property
    def events_topic(self) -> str:
        return f"{self.base}/events"

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def queued(self) -> int:
        return len(self._outbox)

    # ---- Sink protocol ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the connection task; returns at once (the broker may be down: the outbox keeps events)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="mqtt-sink")

    def publish(self, event: Event) -> None:
        """Queue the MQTT messages for one event; never blocks, never raises on broker trouble."""
        if isinstance(event, AlarmEvent):
            if event.type != "end":  # an `end` may close a previous run's alarm of a source no longer configured
                self._announce(event.source)
            if event.type in ("new", "end"):
                state = b"ON" if event.type == "new" else b"OFF"
                self._enqueue(_Message(self.topic(event.source, "alarm"), state, self.settings.qos, True))
            self._enqueue(_Message(self.events_topic, _json(event.to_dict()), 1, False))
        elif isinstance(event, SourceStatus):
            self._announce(event.source)
            payload = _json({"source": event.source, "state": event.state, "detail": event.detail,
                             "time": event.time})
            self._enqueue(_Message(self.topic(event.source, "status"), payload, self.settings.qos, True))
        elif isinstance(event, ScoreUpdate):
            self._announce(event.source)
            now = self._clock()
            last = self._last_score.get(event.source)
            if last is not None and now - last < self.settings.score_interval:
                return
            self._last_score[event.source] = now
            topic = self.topic(event.source, "score")
            self._enqueue(_Message(topic, _json(event.to_dict()), 0, False, is_score=True))
        elif isinstance(event, ThresholdInfo):
            self._announce(event.source)
            self._enqueue(_Message(self.topic(event.source, "threshold"), _json(event.to_dict()), self.settings.qos,
                                   True))

    async def close(self) -> None:
        """Deliver what is queued, publish `offline` retained, then disconnect. A broker that is down is retried
        for up to `close_timeout` seconds (events from an outage are worth a short wait at exit); what is still
        queued after that is counted as dropped."""
        self._closing.set()
        self._wakeup.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=self.settings.close_timeout)
        except asyncio.TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            lost = len(self._outbox)
            log.warning("MQTT sink: broker %s not reachable within %.1f s at shutdown: %d message(s) not delivered",
                        self.settings.url, self.settings.close_timeout, lost)
            if lost:
                self._outbox.clear()
                self.stats.dropped += lost
                self._count_error("undelivered at shutdown", amount=lost)
        self._task = None

    # ---- outbox -------------------------------------------------------------------------------------------

    def _enqueue(self, message: _Message) -> None:
        if message.retain and message.topic.startswith(self.base + "/") and message.topic != self.availability_topic:
            self._retained[message.topic] = message
        if len(self._outbox) >= self.settings.outbox_size and not self._make_room(message):
            return
        self._outbox.append(message)
        self._wakeup.set()

    def _make_room(self, incoming: _Message) -> bool:
        """Drop one message to fit `incoming`: the oldest score, else (for a non-score) the oldest message."""
        victim = next((m for m in self._outbox if m.is_score), None)
        if victim is None and incoming.is_score:
            self._count_drop("outbox full: dropped a score")
            return False
        if victim is None:
            victim = self._outbox[0]
        self._outbox.remove(victim)
        self._count_drop(f"outbox full: dropped {'a score' if victim.is_score else victim.topic}")
        return True

    def _count_drop(self, detail: str) -> None:
        self.stats.dropped += 1
        if self.stats.dropped == 1 or self.stats.dropped % 100 == 0:
            log.warning("MQTT sink: %s (%d dropped so far)", detail, self.stats.dropped)
        self._count_error(detail)

    def _count_error(self, detail: str, amount: int = 1) -> None:
        if self._on_counter is not None:
            self._on_counter(CounterEvent("sink_errors", SINK_NAME, amount=amount, detail=detail,
                                          labels={"sink": SINK_NAME}))

    # ---- Home Assistant discovery -------------------------------------------------------------------------

    def _known(self, source: str) -> bool:
        """Remember a source; True the first time it is seen."""
        key = sanitize_topic_part(source)
        if key in self._sources:
            return False
        self._sources[key] = source
        self._expected_topics.update(self._discovery_topics(source))
        return True

    def _announce(self, source: str) -> None:
        if self._known(source) and self.settings.ha_discovery:
            for message in self._discovery_messages(source):
                self._enqueue(message)

    @property
    def _discovery_prefix(self) -> str:
        return self.settings.ha_prefix.rstrip("/")

    def _node_device(self) -> dict[str, Any]:
        return {"identifiers": [self._node_uid], "name": f"asd-monitor {self.node}", "manufacturer": "asd-monitor",
                "model": "anomalous sound monitor", "sw_version": self._origin["sw_version"]}

    def _node_discovery(self) -> list[_Message]:
        """The node's own device, with one connectivity entity from `availability`: the device each source's
        device is linked to (`via_device`), and what says the monitor itself is down."""
        config = {
            "name": "monitor",
            "unique_id": f"{self._node_uid}-online",
            "state_topic": self.availability_topic,
            "payload_on": "online",
            "payload_off": "offline",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "device": self._node_device(),
            "origin": self._origin,
        }
        return [_Message(self._node_topic, _json(config), 1, True)]

    @property
    def _node_topic(self) -> str:
        return f"{self._discovery_prefix}/binary_sensor/{self._node_uid}/online/config"

    def _discovery_topics(self, source: str) -> tuple[str, ...]:
        """The alarm, audio-input and score config topics of `source` (and the noise score's, with a classifier)."""
        prefix, source_id = self._discovery_prefix, ha_id(source)
        topics = (f"{prefix}/binary_sensor/{self._node_uid}/{source_id}_alarm/config",
                  f"{prefix}/binary_sensor/{self._node_uid}/{source_id}_audio/config",
                  f"{prefix}/sensor/{self._node_uid}/{source_id}_score/config")
        return topics + ((f"{prefix}/sensor/{self._node_uid}/{source_id}_noise/config",) if self.noise else ())

    def _discovery_messages(self, source: str) -> list[_Message]:
        """One HA device per monitored machine (source), linked to the node's device, with three entities: the
        alarm (problem), the audio input's health from `<source>/status` (connectivity: an unplugged microphone
        shows as disconnected, not as a quiet machine), and the score (expires when scores stop coming; its
        attributes are the threshold's metadata from `<source>/threshold`, retained and sent once per run, so they
        cost HA's recorder nothing per score); with a noise classifier a fourth, the noise score (0..1, from the
        same messages; `None`, HA's unknown, before the classifier's first window)."""
        source_id = ha_id(source)
        availability = {"availability_topic": self.availability_topic, "payload_available": "online",
                        "payload_not_available": "offline"}
        device = {"identifiers": [f"{self._node_uid}-{source_id}"], "name": source, "manufacturer": "asd-monitor",
                  "model": "monitored machine", "via_device": self._node_uid}
        common = {**availability, "device": device, "origin": self._origin}
        alarm = {
            **common,
            "name": "anomaly",
            "unique_id": f"{self._node_uid}-{source_id}-alarm",
            "state_topic": self.topic(source, "alarm"),
            "payload_on": "ON",
            "payload_off": "OFF",
            "device_class": "problem",
        }
        audio = {
            **common,
            "name": "audio input",
            "unique_id": f"{self._node_uid}-{source_id}-audio",
            "state_topic": self.topic(source, "status"),
            "value_template": "{{ 'ON' if value_json.state in ('online', 'silent', 'clipping', 'noisy') else 'OFF' }}",
            "json_attributes_topic": self.topic(source, "status"),  # state and detail; changes only on events
            "payload_on": "ON",
            "payload_off": "OFF",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
        }
        score = {
            **common,
            "name": "anomaly score",
            "unique_id": f"{self._node_uid}-{source_id}-score",
            "state_topic": self.topic(source, "score"),
            "value_template": "{{ value_json.score }}",
            "json_attributes_topic": self.topic(source, "threshold"),
            "state_class": "measurement",
            "expire_after": self.settings.ha_expire_after,
            "icon": "mdi:waveform",
        }
        noise = {
            **{k: v for k, v in score.items() if k != "json_attributes_topic"},  # the threshold is the score's
            "name": "noise score",
            "unique_id": f"{self._node_uid}-{source_id}-noise",
            "value_template": "{{ value_json.noise }}",
            "icon": "mdi:volume-high",
        }
        return [_Message(topic, _json(config), 1, True)
                for topic, config in zip(self._discovery_topics(source), (alarm, audio, score, noise))]

    def _all_discovery(self) -> list[_Message]:
        return self._node_discovery() + [m for source in self._sources.values()
                                         for m in self._discovery_messages(source)]

    async def _publish_discovery(self, client: aiomqtt.Client) -> None:
        for message in self._all_discovery():
            await self._send(client, message)

    async def _publish_retained(self, client: aiomqtt.Client) -> None:
        """Every source's last retained status, alarm and threshold, except where the outbox holds a newer one: the
        outbox is drained next and ends on the latest state."""
        pending = {m.topic for m in self._outbox if m.retain}
        for message in list(self._retained.values()):
            if message.topic not in pending:
                await self._send(client, message)

    async def _remove_stale_discovery(self, client: aiomqtt.Client, topic: str) -> None:
        """An empty retained config removes the entity: for configs of this node (this or an earlier scheme)
        that no configured source publishes any more."""
        # this node's configs come back once each on subscription: the set is kept, not rebuilt per message
        if topic != self._node_topic and topic not in self._expected_topics:
            log.info("Home Assistant: removing %s (its source is no longer configured)", topic)
            await self._send(client, _Message(topic, b"", 1, True))

    # ---- connection task ----------------------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        """A fresh client per connection attempt, so no stale in-flight state survives a reconnect."""
        s = self.settings
        tls_params = None
        if s.use_tls:
            tls_params = aiomqtt.TLSParameters(
                ca_certs=s.tls.ca_file,
                certfile=s.tls.cert_file,
                keyfile=s.tls.key_file,
                cert_reqs=ssl.CERT_NONE if s.tls.insecure else ssl.CERT_REQUIRED,
            )
        return aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password.get_secret_value() if s.password is not None else None,
            identifier=s.client_id,
            keepalive=s.keepalive,
            will=aiomqtt.Will(self.availability_topic, b"offline", qos=1, retain=True),
            tls_params=tls_params,
            tls_insecure=s.tls.insecure if s.use_tls else None,
            timeout=_ACK_TIMEOUT_S,
            logger=log,
        )

    async def _run(self) -> None:
        backoff = self.settings.reconnect_min
        while True:
            client: aiomqtt.Client | None = None
            try:
                client = self._client()  # inside the try: a TLS file that cannot be read is a retried error too
                async with client:
                    self.stats.connects += 1
                    backoff = self.settings.reconnect_min
                    log.info("MQTT sink connected to %s as node %r", self.settings.url, self.node)
                    self._connected.set()
                    await self._session(client)
                    return
            except (aiomqtt.MqttError, OSError) as exc:
                self.stats.errors += 1
                self._count_error(f"connection: {exc}")
                delay = self.settings.reconnect_min if self._closing.is_set() else backoff
                log.warning("MQTT sink: broker %s unreachable or lost (%s); retrying in %.1f s",
                            self.settings.url, exc, delay)
            finally:
                self._connected.clear()
                if client is not None:
                    _retrieve_loss(client)
            if self._closing.is_set():
                # close() bounds these retries; keep them frequent so a broker that comes back is not missed.
                await asyncio.sleep(self.settings.reconnect_min)
                continue
            with contextlib.suppress(asyncio.TimeoutError):  # close() cuts a long back-off short
                await asyncio.wait_for(self._closing.wait(), timeout=backoff)
            backoff = min(backoff * 2, self.settings.reconnect_max)

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection's life: announce, then drain and listen until closing (returns) or a loss (raises)."""
        await self._send(client, _Message(self.availability_topic, b"online", 1, True))
        if self.settings.ha_discovery:
            await self._publish_discovery(client)
            await client.subscribe(f"{self._discovery_prefix}/status", qos=1)
            for node_id in {self._node_uid, self._legacy_node_id}:  # retained configs of this node come back
                await client.subscribe(f"{self._discovery_prefix}/+/{node_id}/+/config", qos=1)
        await self._publish_retained(client)
        drain = asyncio.create_task(self._drain(client))
        listen = asyncio.create_task(self._listen(client))
        try:
            done, _ = await asyncio.wait((drain, listen), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (drain, listen):
                task.cancel()
            await asyncio.gather(drain, listen, return_exceptions=True)
        for task in done:
            task.result()  # re-raise a connection loss so that _run reconnects
        if drain not in done:
            raise aiomqtt.MqttError("incoming message stream ended")

    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            while self._outbox:
                message = self._outbox[0]
                await self._send(client, message)
                # The head stays queued until acknowledged; publish() may have dropped it meanwhile.
                if self._outbox and self._outbox[0] is message:
                    self._outbox.popleft()
            if self._closing.is_set():
                await self._send(client, _Message(self.availability_topic, b"offline", 1, True))
                return
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _listen(self, client: aiomqtt.Client) -> None:
        """Republish discovery when Home Assistant announces it has (re)started; remove this node's retained
        configs that no configured source publishes."""
        status = f"{self._discovery_prefix}/status"
        async for message in client.messages:
            topic = str(message.topic)
            if topic == status:
                if message.payload in (b"online", "online"):
                    log.info("Home Assistant is online: republishing discovery")
                    await self._publish_discovery(client)
            elif message.payload:
                await self._remove_stale_discovery(client, topic)

    async def _send(self, client: aiomqtt.Client, message: _Message) -> None:
        await client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
        self.stats.published += 1


def _retrieve_loss(client: aiomqtt.Client) -> None:
    """Mark the connection loss aiomqtt recorded as seen. aiomqtt sets it on a future that only its message iterator
    and a failing publish read; when the loss surfaced elsewhere (a publish that timed out waiting for its ack while
    the session was starting), asyncio printed "Future exception was never retrieved" once the client was dropped.
    Our own handling (counted, logged, reconnect) has already happened by now."""
    lost = getattr(client, "_disconnected", None)
    if isinstance(lost, asyncio.Future) and lost.done() and not lost.cancelled():
        lost.exception()


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(json_safe(data), separators=(",", ":"), allow_nan=False).encode()
