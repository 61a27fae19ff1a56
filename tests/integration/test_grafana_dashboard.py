"""Every PromQL query of the shipped Grafana dashboard returns data from a real Prometheus scraping the sink."""

from __future__ import annotations

import json
import math
import re
import threading
from pathlib import Path

import pytest

from monitor.events import AlarmEvent, CounterEvent, ScoreUpdate, SourceStatus
from monitor.sinks.prometheus import PrometheusSink

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "asd-monitor.json"
SOURCES = ("fan", "pump")
# Grafana's built-in intervals, as Grafana would expand them for a short range and a 1 s scrape.
BUILTINS = {"$__rate_interval": "15s", "$__range": "5m", "$__interval": "1s"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, rows included."""
    def walk(panels: list[dict]):
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))
    return [(p["title"], t["expr"]) for p in walk(dashboard()["panels"]) for t in p.get("targets", [])]


def expand(expr: str, source: str) -> str:
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)
    expr = expr.replace("$source", source).replace("${source}", source)
    assert "$" not in expr, f"unexpanded template variable in {expr!r}"
    return expr


def feed_forever(sink: PrometheusSink, stop: threading.Event) -> None:
    """What a running daemon would emit for two sources, ten times a second, until stopped."""
    for source in SOURCES:
        sink.publish(SourceStatus(source, "online"))
        sink.publish(AlarmEvent("new", f"{source}-1", source, "dcase_ae", 2.0, 2.0, 1.0, start_time=0.0))
    tick = 0
    while not stop.wait(0.1):
        tick += 1
        for i, source in enumerate(SOURCES):
            sink.publish(ScoreUpdate(source, "dcase_ae", 0.5 + 0.1 * ((tick + i) % 10), 1.0, time=float(tick),
                                     level_dbfs=-30.0 + i, alarm_active=True,
                                     inference_seconds=0.002 * (1 + tick % 20), lag_seconds=0.05))
            for name in ("dropped_blocks", "overflows", "input_errors", "source_restarts"):
                sink.publish(CounterEvent(name, source))
        sink.publish(CounterEvent("sink_errors", "mqtt", labels={"sink": "mqtt"}))


def test_dashboard_structure() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["source"]["includeAll"] and variables["source"]["allValue"] == ".*"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    exprs = " ".join(expr for _, expr in panel_queries())
    for needed in ("asd_anomaly_score", "asd_anomaly_threshold", "asd_alarm_active", "asd_audio_level_dbfs",
                   "asd_audio_dropped_blocks_total", "histogram_quantile(0.99", "histogram_quantile(0.5",
                   "asd_processing_lag_seconds"):
        assert needed in exprs, needed


async def test_every_panel_query_returns_data(prometheus_server) -> None:
    sink = PrometheusSink(0, model="dcase_ae", device="cpu")
    await sink.start()
    stop = threading.Event()
    feeder = threading.Thread(target=feed_forever, args=(sink, stop), daemon=True)
    feeder.start()
    try:
        prometheus = prometheus_server([f"127.0.0.1:{sink.port}"])
        variable = dashboard()["templating"]["list"][1]["definition"]
        metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable).groups()
        assert prometheus.query(metric)  # wait for the first scrape
        assert sorted(prometheus.api(f"label/{label}/values", **{"match[]": metric})) == sorted(SOURCES)

        for title, expr in panel_queries():
            for source in (".*", "pump"):
                result = prometheus.query(expand(expr, source))
                values = [float(r["value"][1]) for r in result]
                assert any(math.isfinite(v) for v in values), (title, expr, result)
                seen = {r["metric"].get("source") for r in result} - {None}
                if "by (source)" in expr or expr.startswith("asd_anomaly") or expr.startswith("asd_audio"):
                    expected = set(SOURCES) if source == ".*" else {source}
                    assert seen == expected, (title, expr, seen)
    finally:
        stop.set()
        feeder.join(timeout=5)
        await sink.close()
