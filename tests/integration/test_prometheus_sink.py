"""The Prometheus sink on a real HTTP port: exposition content, `promtool check metrics`, a real scrape."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from monitor.events import AlarmEvent, CounterEvent, ScoreUpdate, SourceStatus
from monitor.sinks.prometheus import PrometheusSink
from tests.conftest import skip_or_fail

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def feed(sink: PrometheusSink, source: str, scores: list[float], threshold: float = 1.0) -> None:
    """Events for one source covering every metric family: status, scores, an alarm's life, each counter."""
    sink.publish(SourceStatus(source, "online", time=1.0))
    for i, score in enumerate(scores):
        sink.publish(ScoreUpdate(source, "dcase_ae", score, threshold, time=2.0 + i, level_dbfs=-20.0 - i,
                                 alarm_active=score > threshold, inference_seconds=0.004 * (i + 1),
                                 lag_seconds=0.05))
    for kind in ("new", "update", "end"):
        sink.publish(AlarmEvent(kind, f"{source}-1", source, "dcase_ae", 2.0, 2.5, threshold, start_time=3.0,
                                end_time=5.0 if kind == "end" else None))
    for name in ("dropped_blocks", "overflows", "input_errors", "source_restarts"):
        sink.publish(CounterEvent(name, source, amount=2))
    sink.publish(CounterEvent("sink_errors", "mqtt", labels={"sink": "mqtt"}))


def scrape(sink: PrometheusSink) -> str:
    with urllib.request.urlopen(sink.url, timeout=5) as response:
        return response.read().decode()


def sample(text: str, line_prefix: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith(line_prefix + " ")]
    return float(line.rsplit(" ", 1)[1])


@pytest.fixture
async def sink():
    sink = PrometheusSink(0, model="dcase_ae", device="cpu")
    await sink.start()
    yield sink
    await sink.close()


async def test_port_zero_binds_loopback_and_close_frees_it() -> None:
    sink = PrometheusSink(0)
    await sink.start()
    port = sink.port
    assert port > 0 and sink.host == "127.0.0.1"
    assert "asd_build_info" in scrape(sink)
    await sink.close()
    again = PrometheusSink(port)  # the port is free again
    await again.start()
    await again.close()


async def test_exposition_values_follow_events(sink: PrometheusSink) -> None:
    feed(sink, "fan 1", [0.5, 3.0])
    text = scrape(sink)
    labels = '{model="dcase_ae",source="fan 1"}'
    assert sample(text, f"asd_anomaly_score{labels}") == 3.0
    assert sample(text, f"asd_anomaly_threshold{labels}") == 1.0
    assert sample(text, f"asd_alarm_active{labels}") == 0.0  # the alarm ended
    assert sample(text, f"asd_alarms_total{labels}") == 1.0  # new counts, update/end do not
    assert sample(text, f"asd_windows_scored_total{labels}") == 2.0
    assert sample(text, f"asd_inference_duration_seconds_count{labels}") == 2.0
    assert sample(text, 'asd_audio_level_dbfs{source="fan 1"}') == -21.0
    assert sample(text, 'asd_audio_dropped_blocks_total{source="fan 1"}') == 2.0
    assert sample(text, 'asd_source_restarts_total{source="fan 1"}') == 2.0
    assert sample(text, 'asd_sink_errors_total{sink="mqtt"}') == 1.0
    sink.publish(SourceStatus("fan 1", "error", "device lost", time=9.0))
    assert sample(scrape(sink), 'asd_source_up{source="fan 1"}') == 0.0
    assert 'device="cpu"' in text and 'model="dcase_ae"' in text


async def test_promtool_check_metrics_has_no_complaint(sink: PrometheusSink) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("`promtool` is not installed")
    feed(sink, "pump", [0.2, 0.9, 1.4])
    feed(sink, "valve", [0.1])
    exposition = scrape(sink)
    result = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


async def test_real_prometheus_scrapes_the_sink(sink: PrometheusSink, prometheus_server) -> None:
    feed(sink, "pump", [0.2, 1.7])
    prometheus = prometheus_server([f"127.0.0.1:{sink.port}"])
    [series] = prometheus.query('asd_anomaly_score{source="pump"}')
    assert float(series["value"][1]) == 1.7
    assert series["metric"]["model"] == "dcase_ae"


def test_deploy_scrape_config_and_rules_are_valid_and_use_real_metrics() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("`promtool` is not installed")
    deploy = Path(__file__).resolve().parents[2] / "deploy"
    result = subprocess.run([promtool, "check", "config", str(deploy / "prometheus.yml")], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    exposed = set(re.findall(r"^# TYPE (\w+)", generate_latest(PrometheusSink(0).registry).decode(), re.M))
    rules = (deploy / "asd-monitor.rules.yml").read_text()
    used = set(re.findall(r"\basd_\w+", rules))
    assert used and used <= {name for base in exposed for name in (base, f"{base}_total")}, used - exposed
