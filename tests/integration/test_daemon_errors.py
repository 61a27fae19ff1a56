"""Bad inputs to the daemon subprocess: each bad source gets a clear error status on MQTT while a good source is
still scored; a missing default bundle stops the daemon with a message that names it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from tests.helpers import SR, machine_audio
from tests.integration.conftest import BASE, start_daemon

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_bad_sources_report_errors_and_the_good_one_goes_on(tmp_path, bundle_dir, mosquitto, mqtt_collector,
                                                            daemons):
    good = tmp_path / "good.wav"
    sf.write(good, machine_audio(3.0, 1), SR, subtype="FLOAT")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\xff\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\x00" * 7)
    rate = tmp_path / "rate.wav"
    sf.write(rate, machine_audio(1.0, 1, sr=2 * SR), 2 * SR, subtype="FLOAT")
    nan = tmp_path / "nan.wav"
    x = machine_audio(1.0, 1)
    x[500:510] = np.nan
    sf.write(nan, x, SR, subtype="FLOAT")
    huge = tmp_path / "huge.wav"  # finite, but its square overflows float32: it used to stop every source
    x = machine_audio(2.0, 1)
    x[8000] = 3e19
    sf.write(huge, x, SR, subtype="FLOAT")
    loop = tmp_path / "loop-bundle"
    loop.symlink_to(loop)  # a bundle directory that is a symlink loop: only its source stops
    config = (f"sources:\n  - name: nobundle\n    replay: {good}\n    bundle: {tmp_path / 'missing-bundle'}\n"
              f"  - name: loopbundle\n    replay: {good}\n    bundle: {loop}\n")
    live = mqtt_collector([f"{BASE}/#"])
    d = start_daemon(tmp_path, "--bundle", str(bundle_dir), "--speed", "0", "--mqtt", mosquitto.url,
                     *[a for p in (good, corrupt, rate, nan, huge) for a in ("--replay", str(p))], config=config)
    daemons.append(d)
    assert d.wait() == 0, d.output()
    live.wait_for(f"{BASE}/availability", payload=b"offline")

    def states(source: str) -> list[tuple[str, str]]:
        return [(m.json()["state"], m.json()["detail"]) for m in live.on(f"{BASE}/{source}/status")]

    expected = {"corrupt": "corrupt.wav", "rate": f"{2 * SR} Hz", "nan": "NaN", "nobundle": "missing-bundle",
                "huge": "not audio in [-1, 1]", "loopbundle": "loop-bundle"}
    for source, needle in expected.items():
        errors = [detail for state, detail in states(source) if state == "error"]
        assert errors and needle in errors[0], (source, states(source))
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
