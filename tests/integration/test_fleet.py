"""A fleet: two daemons (`--node a`, `--node b`, each with a noise classifier) monitoring a source of the same name,
one mosquitto, one Prometheus. Their MQTT topics, retained state and alarms stay apart, and so does every query of
the Grafana dashboard (the noise score panel's included)."""

from __future__ import annotations

import math
import signal

import pytest

from tests.integration.conftest import ALARM_CONFIG, free_port, start_daemon, wait_until
from tests.integration.test_daemon_mqtt import anomalous_wav
from tests.integration.test_grafana_dashboard import expand, panel_queries

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_two_nodes_with_same_source_names_stay_apart(tmp_path, calibrated_bundle_dir, noise_bundle_dir, mosquitto,
                                                      mqtt_collector, prometheus_server, daemons):
    live = mqtt_collector(["asd/#"])
    wav = anomalous_wav(tmp_path / "fan.wav", normal_s=2.0, fault_s=30.0, after_s=2.0)
    ports = {node: free_port() for node in ("a", "b")}
    for node, port in ports.items():
        state = tmp_path / f"state-{node}"
        daemons.append(start_daemon(tmp_path, "--node", node, "--bundle", str(calibrated_bundle_dir),
                                    "--noise-bundle", str(noise_bundle_dir), "--replay", str(wav),
                                    "--loop", "--mqtt", mosquitto.url, "--prometheus-port", str(port),
                                    "--state-dir", str(state), config=ALARM_CONFIG))
    for node in ports:
        live.wait_for(f"asd/{node}/fan/alarm", payload=b"ON", timeout=120)
    instances = {node: f"127.0.0.1:{port}" for node, port in ports.items()}
    prometheus = prometheus_server(list(instances.values()))
    wait_until(lambda: len(prometheus.query("count_over_time(asd_alarm_active[1m]) >= 4")) == 2, 90,
               "a few scrapes of both nodes")

    # MQTT: each node's events, alarm and status are under its own base topic and name its own alarm ids
    ids = {node: {m.json()["id"] for m in live.on(f"asd/{node}/events")} for node in ports}
    assert all(ids.values()) and not ids["a"] & ids["b"], ids
    for node in ports:
        assert live.on(f"asd/{node}/fan/status")[-1].json()["source"] == "fan"
    assert {m.topic.split("/")[1] for m in live.messages} == {"a", "b"}

    # Prometheus: every dashboard query, for one node, answers for that node only
    for title, expr in panel_queries():
        for node, instance in instances.items():
            result = prometheus.query(expand(expr, instance))
            assert any(math.isfinite(float(r["value"][1])) for r in result), (title, node, result)
            assert {r["metric"].get("instance") for r in result} == {instance}, (title, node, result)
    both = prometheus.query('max by (instance, source) (asd_alarm_active{source="fan"})')
    assert {r["metric"]["instance"] for r in both} == set(instances.values())
    noise = prometheus.query('asd_noise_score{source="fan"}')  # the daemon's own scrape, 0..1
    assert {r["metric"]["instance"] for r in noise} == set(instances.values())
    assert all(0.0 <= float(r["value"][1]) <= 1.0 for r in noise)
    for d in daemons:
        d.proc.send_signal(signal.SIGTERM)
    for d in daemons:
        assert d.wait(30) == 0, d.output()
