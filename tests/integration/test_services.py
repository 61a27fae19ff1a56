"""Each service fixture on its own, so that a broken fixture shows up here and not as a mystery elsewhere."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_mosquitto_retained_message_survives_for_late_subscriber(mosquitto, mqtt_collector) -> None:
    import paho.mqtt.publish as publish

    publish.single("t/retained", b"kept", qos=1, retain=True, hostname=mosquitto.host, port=mosquitto.port)
    late = mqtt_collector(["t/#"])
    [message] = late.wait_for("t/retained")
    assert (message.payload, message.retain) == (b"kept", True)


def test_mosquitto_restarts_on_the_same_port(mosquitto, mqtt_collector) -> None:
    import paho.mqtt.publish as publish

    port = mosquitto.port
    mosquitto.stop()
    mosquitto.start()
    assert mosquitto.port == port
    collector = mqtt_collector(["t/#"])
    publish.single("t/live", b"1", qos=1, hostname=mosquitto.host, port=mosquitto.port)
    assert collector.wait_for("t/live")[0].retain is False


def _tone_wav(path: Path, seconds: float = 0.5, rate: int = 48000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def test_pulse_mics_are_portaudio_inputs_and_survive_restart(pulse_mics, tmp_path: Path) -> None:
    import sounddevice as sd

    names = {d["name"] for d in sd.query_devices() if d["max_input_channels"] > 0}
    assert set(pulse_mics.devices) <= names
    player = pulse_mics.play("asd_mic0", _tone_wav(tmp_path / "tone.wav"))
    assert player.wait(timeout=15) == 0, player.stderr.read()
    pulse_mics.restart()
    sinks = subprocess.run(["pactl", "list", "short", "sinks"], env=pulse_mics.env, capture_output=True,
                           text=True, timeout=10).stdout
    assert "asd_mic0" in sinks and "asd_mic1" in sinks


def test_prometheus_scrapes_a_target(prometheus_server) -> None:
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    registry = CollectorRegistry()
    Gauge("fixture_probe", "A value the fixture test reads back.", registry=registry).set(42)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        prometheus = prometheus_server([f"127.0.0.1:{server.server_address[1]}"])
        [sample] = prometheus.query("fixture_probe")
        assert float(sample["value"][1]) == 42.0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
