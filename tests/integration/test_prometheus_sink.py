"""The Prometheus sink on a real HTTP port: exposition content, `promtool check metrics`, a real scrape; the deploy
files: the scrape config's port, `promtool check`/`test rules` on the alert rules."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest

import yaml

from monitor.config import PrometheusConfig
from monitor.events import AlarmEvent, CounterEvent, ScoreUpdate, SourceStatus, ThresholdInfo
from monitor.sinks.prometheus import STATES, PrometheusSink
from tests.conftest import skip_or_fail
from tests.helpers import calibrated_info

CALIBRATION_SCORES = [0.8, 1.1, 0.9, 1.6, 1.2]  # the normal scores a source's threshold is calibrated on

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def feed(sink: PrometheusSink, source: str, scores: list[float], threshold: float = 1.0,
         noise: bool = True) -> None:
    """Events for one source covering every metric family: its threshold's calibration, status, scores (with noise
    scores unless `noise` is false), an alarm's life, each counter."""
    sink.publish(calibrated_info(source, CALIBRATION_SCORES, threshold))
    sink.publish(SourceStatus(source, "online", time=1.0))
    for i, score in enumerate(scores):
        sink.publish(ScoreUpdate(source, "dcase_ae", score, threshold, time=2.0 + i, level_dbfs=-20.0 - i,
                                 alarm_active=score > threshold, inference_seconds=0.004 * (i + 1),
                                 lag_seconds=0.05, noise=0.25 * (i + 1) if noise else None))
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
    assert sample(text, 'asd_noise_score{source="fan 1"}') == 0.5  # the latest window's
    assert sample(text, 'asd_audio_dropped_blocks_total{source="fan 1"}') == 2.0
    assert sample(text, 'asd_source_restarts_total{source="fan 1"}') == 2.0
    assert sample(text, 'asd_sink_errors_total{sink="mqtt"}') == 1.0
    sink.publish(SourceStatus("fan 1", "noisy", "noise score 0.9 above 0.8", time=8.0))
    assert sample(scrape(sink), 'asd_source_up{source="fan 1"}') == 1.0  # noisy audio is still audio
    sink.publish(SourceStatus("fan 1", "error", "device lost", time=9.0))
    assert sample(scrape(sink), 'asd_source_up{source="fan 1"}') == 0.0
    feed(sink, "pump", [0.5], noise=False)  # no classifier: no noise series (not a made-up 0)
    assert "asd_noise_score{source=\"pump\"}" not in scrape(sink)
    assert 'device="cpu"' in text and 'model="dcase_ae"' in text


async def test_threshold_calibration_gauges(sink: PrometheusSink) -> None:
    info = calibrated_info("fan", CALIBRATION_SCORES, 1.4)  # one of the five above it
    sink.publish(info)
    sink.publish(ThresholdInfo("pump", "dcase_ae", 0.75, "configured"))  # set in the config: nothing to say
    sink.publish(ThresholdInfo("valve", "dcase_ae", 2.0, "fixed"))  # a bundle without calibration
    text = scrape(sink)
    low, high = info.false_alarm_rate_interval
    for bound, value in (("estimate", 0.2), ("low", low), ("high", high)):
        assert sample(text, f'asd_threshold_false_alarm_rate{{bound="{bound}",model="dcase_ae",source="fan"}}') == (
            pytest.approx(value))
    assert 0.0 < low < 0.2 < high < 1.0
    assert sample(text, 'asd_threshold_calibration_scores{model="dcase_ae",source="fan"}') == 5.0
    assert sample(text, 'asd_anomaly_threshold{model="dcase_ae",source="pump"}') == 0.75  # known before a score
    for source in ("pump", "valve"):  # no made-up calibration
        assert f'source="{source}"' not in "".join(line for line in text.splitlines()
                                                   if line.startswith("asd_threshold_"))


async def test_configured_sources_have_their_series_before_any_event() -> None:
    sink = PrometheusSink(0, model="dcase_ae", sources=[("fan", "dcase_ae"), ("pump", None)])
    await sink.start()
    try:
        text = scrape(sink)
        assert sample(text, 'asd_alarms_total{model="dcase_ae",source="fan"}') == 0.0  # increase() sees alarm 1
        assert sample(text, 'asd_alarm_active{model="dcase_ae",source="fan"}') == 0.0
        for source in ("fan", "pump"):  # pump's bundle failed: its source-level series exist, no model series
            assert sample(text, f'asd_source_up{{source="{source}"}}') == 0.0
            assert sample(text, f'asd_input_errors_total{{source="{source}"}}') == 0.0
            assert [sample(text, f'asd_source_state{{source="{source}",state="{st}"}}') for st in STATES] == [
                0.0] * len(STATES)
        assert 'source="pump"' not in "".join(line for line in text.splitlines() if line.startswith("asd_alarms"))
        assert set(STATES) == {"online", "offline", "silent", "clipping", "noisy", "error", "ended"}
        assert "process_resident_memory_bytes" in text and "process_start_time_seconds" in text
        sink.publish(SourceStatus("fan", "silent", "level -80 dBFS", time=2.0))
        text = scrape(sink)
        assert {st: sample(text, f'asd_source_state{{source="fan",state="{st}"}}') for st in STATES} == {
            st: float(st == "silent") for st in STATES}
    finally:
        await sink.close()


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
    [noise] = prometheus.query('asd_noise_score{source="pump"}')
    assert float(noise["value"][1]) == 0.5
    [high] = prometheus.query('asd_threshold_false_alarm_rate{source="pump",bound="high"}')
    assert float(high["value"][1]) == pytest.approx(calibrated_info("pump", CALIBRATION_SCORES, 1.0)
                                                    .false_alarm_rate_interval[1])
    [n] = prometheus.query('asd_threshold_calibration_scores{source="pump"}')
    assert float(n["value"][1]) == len(CALIBRATION_SCORES)


def test_deploy_scrape_config_and_rules_are_valid_and_use_real_metrics() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("`promtool` is not installed")
    deploy = Path(__file__).resolve().parents[2] / "deploy"
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "asd-monitor.rules.yml"],
                 ["test", "rules", "asd-monitor.rules.test.yml"]):  # the last: every rule's unit tests
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=deploy)
        assert result.returncode == 0, result.stdout + result.stderr
    scrape_config = yaml.safe_load((deploy / "prometheus.yml").read_text())
    targets = [t for job in scrape_config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets and all(t.rsplit(":", 1)[1] == str(PrometheusConfig().port) for t in targets)
    tested = set(re.findall(r"alertname: (\w+)", (deploy / "asd-monitor.rules.test.yml").read_text()))
    alerts = set(re.findall(r"alert: (\w+)", (deploy / "asd-monitor.rules.yml").read_text()))
    assert alerts and tested == alerts  # a unit test for every rule
    exposed = set(re.findall(r"^# TYPE (\w+)", generate_latest(PrometheusSink(0).registry).decode(), re.M))
    rules = (deploy / "asd-monitor.rules.yml").read_text()
    used = set(re.findall(r"\basd_\w+", rules))
    assert used and used <= {name for base in exposed for name in (base, f"{base}_total")}, used - exposed
