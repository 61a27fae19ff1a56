"""The log sink's threshold line: what a headless daemon says about how sure each source's threshold is."""

from __future__ import annotations

import logging

from monitor.events import ThresholdInfo
from monitor.sinks.log import LogSink
from tests.helpers import calibrated_info


def test_a_threshold_that_may_alarm_often_is_a_warning_and_a_sure_one_is_info(caplog) -> None:
    caplog.set_level(logging.INFO, logger="monitor.sinks.log")
    sink = LogSink()
    sink.publish(calibrated_info("fan", [1.0, 2.0, 3.0, 4.0, 5.0], 4.5))  # 1 of 5 above: up to 72 %
    sink.publish(calibrated_info("pump", [float(i) for i in range(200)], 179.5))  # 20 of 200: up to 15 %
    sink.publish(ThresholdInfo("valve", "dcase_ae", 0.75, "configured"))
    by_source = {r.getMessage().split(":")[0]: r for r in caplog.records}
    fan, pump, valve = by_source["source fan"], by_source["source pump"], by_source["source valve"]
    assert fan.levelno == logging.WARNING and "may alarm often" in fan.getMessage()
    assert "(gamma on 5 cross-fitted scores): false alarms 20.0% [0.5%, 71.6%]" in fan.getMessage()
    assert pump.levelno == logging.INFO and "may alarm often" not in pump.getMessage()
    assert valve.levelno == logging.INFO
    assert valve.getMessage() == "source valve: threshold 0.75, set in the configuration"
