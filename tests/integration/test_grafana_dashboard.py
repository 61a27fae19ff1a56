"""Every PromQL query of the shipped Grafana dashboard (panels, variables, alarm annotations) returns data from a real
Prometheus scraping two sinks, two nodes whose sources share names, and keeps the nodes apart."""

from __future__ import annotations

import json
import math
import re
import threading
from pathlib import Path

import pytest

from monitor.events import AlarmEvent, CounterEvent, ScoreUpdate, SourceStatus
from monitor.sinks.prometheus import PrometheusSink
from tests.helpers import calibrated_info
from tests.integration.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "asd-monitor.json"
SOURCES = ("fan", "pump")
# Grafana's built-in intervals, as Grafana would expand them for a short range and a 1 s scrape.
BUILTINS = {"$__rate_interval": "15s", "$__range": "5m", "$__interval": "1s"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, rows included, and every annotation query."""
    def walk(panels: list[dict]):
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))
    board = dashboard()
    return [(p["title"], t["expr"]) for p in walk(board["panels"]) for t in p.get("targets", [])] + [
        (f"annotation {a['name']}", a["expr"]) for a in board["annotations"]["list"]]


def expand(expr: str, node: str, source: str = ".*") -> str:
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)
    for name, value in (("node", node), ("source", source)):
        expr = expr.replace(f"${name}", value).replace(f"${{{name}}}", value)
    assert "$" not in expr, f"unexpanded template variable in {expr!r}"
    return expr


def feed_forever(sink: PrometheusSink, stop: threading.Event) -> None:
    """What a running daemon (with a noise classifier) would emit for two sources, ten times a second, until
    stopped."""
    for source in SOURCES:
        sink.publish(calibrated_info(source, [1.0, 1.2, 0.9, 1.4, 1.1], 1.3))  # at start: 1 of 5 above
        sink.publish(SourceStatus(source, "online"))
        sink.publish(AlarmEvent("new", f"{source}-1", source, "dcase_ae", 2.0, 2.0, 1.0, start_time=0.0))
    tick = 0
    while not stop.wait(0.1):
        tick += 1
        for i, source in enumerate(SOURCES):
            sink.publish(ScoreUpdate(source, "dcase_ae", 0.5 + 0.1 * ((tick + i) % 10), 1.0, time=float(tick),
                                     level_dbfs=-30.0 + i, alarm_active=True,
                                     inference_seconds=0.002 * (1 + tick % 20), lag_seconds=0.05,
                                     noise=0.05 * ((tick + i) % 20)))
            for name in ("dropped_blocks", "overflows", "input_errors", "source_restarts"):
                sink.publish(CounterEvent(name, source))
        sink.publish(CounterEvent("sink_errors", "mqtt", labels={"sink": "mqtt"}))


def test_dashboard_structure() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert list(variables) == ["datasource", "node", "source"]  # source values depend on the chosen nodes
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("node", "source"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*" and variables[name]["multi"]
    [annotation] = board["annotations"]["list"]
    assert annotation["datasource"]["uid"] == "${datasource}" and "asd_alarm_active" in annotation["expr"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    exprs = " ".join(expr for _, expr in panel_queries())
    for needed in ("asd_anomaly_score", "asd_anomaly_threshold", "asd_alarm_active", "asd_audio_level_dbfs",
                   "asd_audio_dropped_blocks_total", "histogram_quantile(0.99", "histogram_quantile(0.5",
                   "asd_processing_lag_seconds", "asd_noise_score", "asd_threshold_false_alarm_rate",
                   "asd_threshold_calibration_scores"):
        assert needed in exprs, needed


async def test_every_query_returns_data_and_keeps_the_nodes_apart(prometheus_server) -> None:
    sinks = [PrometheusSink(0, model="dcase_ae", device="cpu", sources=[(s, "dcase_ae") for s in SOURCES])
             for _ in range(2)]  # two nodes, both with a `fan` and a `pump`
    stop = threading.Event()
    feeders = []
    for sink in sinks:
        await sink.start()
        feeders.append(threading.Thread(target=feed_forever, args=(sink, stop), daemon=True))
        feeders[-1].start()
    try:
        nodes = [f"127.0.0.1:{sink.port}" for sink in sinks]
        prometheus = prometheus_server(nodes)
        variables = {v["name"]: v["definition"] for v in dashboard()["templating"]["list"][1:]}
        # rates and increases need a few scrapes of each node
        wait_until(lambda: len(prometheus.query("count_over_time(up[1m]) >= 4")) == 2, 60, "both nodes scraped")
        for name, definition in variables.items():
            metric, label = re.fullmatch(r"label_values\((.+), (\w+)\)", expand(definition, nodes[1])).groups()
            assert sorted(prometheus.api(f"label/{label}/values", **{"match[]": metric})) == sorted(
                nodes if name == "node" else SOURCES), name

        for title, expr in panel_queries():
            for node in (".*", nodes[1]):
                for source in (".*", "pump"):
                    result = prometheus.query(expand(expr, node, source))
                    values = [float(r["value"][1]) for r in result]
                    assert any(math.isfinite(v) for v in values), (title, expr, result)
                    instances = {r["metric"].get("instance") for r in result}
                    assert instances == (set(nodes) if node == ".*" else {node}), (title, expr, node, instances)
                    if 'source=~"$source"' in expr and ("by (instance, source)" in expr or expr.startswith("asd_")):
                        seen = {(r["metric"]["instance"], r["metric"]["source"]) for r in result}
                        want = {(n, s) for n in (nodes if node == ".*" else [node])
                                for s in (SOURCES if source == ".*" else [source])}
                        assert seen == want, (title, expr, seen)
    finally:
        stop.set()
        for feeder in feeders:
            feeder.join(timeout=5)
        for sink in sinks:
            await sink.close()
