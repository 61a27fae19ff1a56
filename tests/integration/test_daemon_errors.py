"""Bad inputs to the daemon subprocess: each bad source (every case of the shared bad-audio table, bad bundles) gets
a clear error status on MQTT while a good source is still scored; a missing default bundle stops the daemon with a
message that names it."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from tests.bad_audio import CASES
from tests.helpers import SR, machine_audio
from tests.integration.conftest import BASE, start_daemon

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_bad_sources_report_errors_and_the_good_one_goes_on(tmp_path, bundle_dir, mosquitto, mqtt_collector,
                                                            daemons):
    """Every recording of the shared bad-audio table (tests/bad_audio.py) replayed beside a good one, plus two bad
    bundles: each bad source reports an error naming what is wrong, the good one is scored to its end."""
    good = tmp_path / "good.wav"
    sf.write(good, machine_audio(3.0, 1), SR, subtype="FLOAT")
    bad = {case.name: (case.make(tmp_path, SR), case.error_words(SR)) for case in CASES}
    loop = tmp_path / "loop-bundle"
    loop.symlink_to(loop)  # a bundle directory that is a symlink loop: only its source stops
    config = (f"sources:\n  - name: nobundle\n    replay: {good}\n    bundle: {tmp_path / 'missing-bundle'}\n"
              f"  - name: loopbundle\n    replay: {good}\n    bundle: {loop}\n")
    live = mqtt_collector([f"{BASE}/#"])
    d = start_daemon(tmp_path, "--bundle", str(bundle_dir), "--speed", "0", "--mqtt", mosquitto.url,
                     *[a for p in (good, *(path for path, _ in bad.values())) for a in ("--replay", str(p))],
                     config=config)
    daemons.append(d)
    assert d.wait() == 0, d.output()
    live.wait_for(f"{BASE}/availability", payload=b"offline")

    def states(source: str) -> list[tuple[str, str]]:
        return [(m.json()["state"], m.json()["detail"]) for m in live.on(f"{BASE}/{source}/status")]

    expected = {name: [path.name, words] for name, (path, words) in bad.items()}
    expected |= {"nobundle": ["missing-bundle"], "loopbundle": ["loop-bundle"]}
    for source, needles in expected.items():
        errors = [detail for state, detail in states(source) if state == "error"]
        assert errors and all(n in errors[0] for n in needles), (source, states(source))
    assert ("online", states("good")[0][1]) == states("good")[0]
    assert states("good")[-1][0] == "ended"
    scores = [json.loads(m.payload) for m in live.on(f"{BASE}/good/score")]
    assert scores and all(s["source"] == "good" for s in scores)
    assert "Traceback" not in d.output()


def test_a_metrics_port_in_use_is_a_message_and_exit_2(tmp_path, bundle_dir, daemons):
    import socket

    good = tmp_path / "good.wav"
    sf.write(good, machine_audio(1.0, 1), SR, subtype="FLOAT")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        d = start_daemon(tmp_path, "--bundle", str(bundle_dir), "--replay", str(good), "--speed", "0",
                         "--prometheus-port", str(taken.getsockname()[1]))
        daemons.append(d)
        assert d.wait() == 2
    out = d.output()
    assert "asd-monitor: error: Prometheus sink cannot listen on 127.0.0.1" in out and "Traceback" not in out


def test_missing_default_bundle_exits_2_naming_it(tmp_path, daemons):
    good = tmp_path / "good.wav"
    sf.write(good, machine_audio(1.0, 1), SR, subtype="FLOAT")
    d = start_daemon(tmp_path, "--bundle", str(tmp_path / "no-such-bundle"), "--replay", str(good))
    daemons.append(d)
    assert d.wait() == 2
    out = d.output()
    assert "asd-monitor: error: cannot load bundle" in out and "no-such-bundle" in out
    assert "Traceback" not in out
