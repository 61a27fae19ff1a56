"""`asd-monitor` end to end in-process: flags over the config file, replays to a JSONL log, errors, the demo."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from monitor import cli, demo
from monitor.config import ConfigError, load_config
from tests.helpers import SR, machine_audio, make_noise_classifier_bundle, make_tiny_bundle, noisy_pair_audio


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("cli") / "bundle")


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_noise_classifier_bundle(tmp_path_factory.mktemp("cli") / "noise")


def wav(path: Path, x: np.ndarray, rate: int = SR) -> Path:
    sf.write(path, x, rate, subtype="FLOAT")
    return path


def run_cli(tmp_path: Path, *argv: str, config: str = "") -> tuple[int, list[dict]]:
    """Run the CLI with a JSONL sink (scores included) and return (exit code, events)."""
    log = tmp_path / "events.jsonl"
    cfg = tmp_path / "monitor.yaml"
    cfg.write_text(f"sinks:\n  jsonl:\n    path: {log}\n    include_scores: true\n    include_counters: true\n"
                   + config)
    rc = cli.main(["--no-tui", "--config", str(cfg), "--node", "t1", *argv])
    events = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return rc, events


def test_flags_override_the_file(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("node: filenode\nbundle: b\nsources:\n  - device: mic0\nreplay:\n  speed: 2\n"
                 "sinks:\n  mqtt:\n    url: mqtt://old:1883\n    base_topic: plant\n    username: u\n")
    args = cli.build_parser().parse_args(
        ["--node", "n2", "--bundle", "/x", "--device", "asd_mic1", "--replay", "a.wav", "--speed", "0", "--loop",
         "--duration", "5", "--prometheus-port", "9200", "--no-tui", "--mqtt", "mqtts://broker:8884",
         "--noise-bundle", "/n"])
    cfg = cli.apply_args(load_config(f), args)
    assert cfg.node == "n2" and cfg.bundle == Path("/x") and cfg.noise.bundle == Path("/n")
    assert [(s.device, s.replay) for s in cfg.sources] == [("mic0", None), ("asd_mic1", None), (None, ["a.wav"])]
    assert (cfg.replay.speed, cfg.replay.loop, cfg.replay.duration_seconds) == (0, True, 5)
    assert cfg.sinks.prometheus.enabled and cfg.sinks.prometheus.port == 9200
    assert not cfg.sinks.tui.enabled
    m = cfg.sinks.mqtt
    assert (m.url, m.base_topic, m.username) == ("mqtts://broker:8884", "plant", "u")  # the rest kept from the file
    args = cli.build_parser().parse_args(["--mqtt", "mqtt://me:pw@broker"])
    assert cli.apply_args(load_config(f), args).sinks.mqtt.username == "me"  # URL credentials win


def test_bad_flag_values_are_config_errors():
    args = cli.build_parser().parse_args(["--speed", "-2"])
    with pytest.raises(ConfigError, match="speed"):
        cli.apply_args(load_config(None), args)


def test_a_malformed_mqtt_url_error_does_not_show_its_password():
    args = cli.build_parser().parse_args(["--mqtt", "mqtt://alice:s3cr3t-pw@broker:notaport"])
    with pytest.raises(ConfigError, match="bad port") as exc:
        cli.apply_args(load_config(None), args)
    assert "s3cr3t-pw" not in str(exc.value)


def test_version_flags(capsys):
    from offline.cli import main as offline_main

    for run in (cli.main, offline_main):
        with pytest.raises(SystemExit) as exc:
            run(["--version"])
        assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "asd-monitor " in out and "asd-offline " in out


def test_replay_of_an_anomalous_file_gives_one_alarm_sequence_and_exits_0(tmp_path, bundle_dir, caplog):
    caplog.set_level(logging.INFO, logger="monitor.sinks.log")
    x = np.concatenate([machine_audio(3.0, 1), machine_audio(4.0, 2, anomalous=True), machine_audio(6.0, 3)])
    rc, events = run_cli(tmp_path, "--bundle", str(bundle_dir), "--speed", "0",
                         "--replay", str(wav(tmp_path / "m1.wav", x)),
                         config="alarms:\n  hold_seconds: 1.0\n  cooldown_seconds: 30\n")
    assert rc == 0
    alarms = [e for e in events if e["kind"] == "alarm"]
    types = [a["type"] for a in alarms]
    assert types[0] == "new" and types[-1] == "end" and set(types[1:-1]) <= {"update"}
    assert len({a["id"] for a in alarms}) == 1
    start = alarms[0]["start_time"] - min(e["time"] for e in events if e["kind"] == "score")
    assert 2.0 < start < 6.0  # raised inside the anomalous stretch (audio clock), not at the start
    assert alarms[-1]["end_time"] > alarms[0]["start_time"]
    statuses = [(e["source"], e["state"]) for e in events if e["kind"] == "status"]
    assert statuses[0] == ("m1", "online") and statuses[-1] == ("m1", "ended")
    # the log (what a headless daemon leaves in its journal) tells the same story
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [m.split(":")[0] for m in warnings] == ["ALARM m1", "alarm cleared m1"]
    assert alarms[0]["id"] in warnings[0] and f"{alarms[0]['threshold']:.4g}" in warnings[0]
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert info[0].startswith("source m1: threshold") and "the bundle records no calibration" in info[0]
    assert info[1].startswith("source m1: online") and info[-1].startswith("source m1: ended")
    [threshold] = [e for e in events if e["kind"] == "threshold"]  # announced once, before the first score
    assert events.index(threshold) < min(i for i, e in enumerate(events) if e["kind"] == "score")
    assert threshold["threshold"] == alarms[0]["threshold"] and threshold["method"] == "fixed"


def test_a_bad_file_among_good_ones_is_reported_and_the_others_go_on(tmp_path, bundle_dir, caplog):
    caplog.set_level(logging.WARNING, logger="monitor.sinks.log")
    good = wav(tmp_path / "good.wav", machine_audio(2.0, 1))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt junk")
    wrong_rate = wav(tmp_path / "rate.wav", machine_audio(1.0, 1, sr=16000), 16000)
    rc, events = run_cli(tmp_path, "--bundle", str(bundle_dir), "--speed", "0",
                         "--replay", str(good), "--replay", str(bad), "--replay", str(wrong_rate))
    assert rc == 0
    errors = {e["source"]: e["detail"] for e in events if e["kind"] == "status" and e["state"] == "error"}
    assert set(errors) == {"bad", "rate"}
    assert "bad.wav" in errors["bad"] and "16000 Hz" in errors["rate"]
    assert any(e["kind"] == "score" and e["source"] == "good" for e in events)
    counters = [e for e in events if e["kind"] == "counter" and e["name"] == "input_errors"]
    assert {c["source"] for c in counters} == {"bad", "rate"}
    logged = {r.getMessage().split(":")[0]: r.getMessage() for r in caplog.records if r.name == "monitor.sinks.log"}
    assert set(logged) == {"source bad", "source rate"} and "bad.wav" in logged["source bad"]


def test_missing_bundle_is_a_clear_error(tmp_path, capsys):
    rc, _ = run_cli(tmp_path, "--bundle", str(tmp_path / "nope"), "--replay", str(tmp_path / "x.wav"))
    assert rc == 2
    assert "cannot load bundle" in capsys.readouterr().err


def test_a_sources_own_missing_bundle_stops_only_that_source(tmp_path, bundle_dir):
    good = wav(tmp_path / "good.wav", machine_audio(2.0, 1))
    rc, events = run_cli(tmp_path, "--bundle", str(bundle_dir), "--speed", "0", "--replay", str(good),
                         config=f"sources:\n  - name: other\n    replay: {good}\n    bundle: {tmp_path / 'missing'}\n")
    assert rc == 0
    err = [e for e in events if e["kind"] == "status" and e["source"] == "other"]
    assert err and err[0]["state"] == "error" and "missing" in err[0]["detail"]
    assert any(e["kind"] == "score" and e["source"] == "good" for e in events)


@pytest.mark.parametrize("argv, needle", [([], "nothing to monitor"), (["--replay", "/no/such/*.wav"], "no wav files")])
def test_usage_errors(tmp_path, bundle_dir, capsys, argv, needle):
    rc, _ = run_cli(tmp_path, "--bundle", str(bundle_dir), *argv)
    assert rc == 2 and needle in capsys.readouterr().err


def test_unknown_config_key_exits_2_naming_it(tmp_path, capsys):
    rc, _ = run_cli(tmp_path, config="alarms:\n  kk: 1\n")
    assert rc == 2 and "alarms.kk: unknown key" in capsys.readouterr().err


def test_list_devices_prints_a_table(capsys):
    assert cli.main(["--list-devices"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[:3] == ["alias", "index", "ch"]


@pytest.mark.slow
def test_demo_runs_headless_and_raises_one_alarm_for_the_faulty_machine(tmp_path, monkeypatch):
    """The shipped recipe (first-run training included) with the fault moved to 5-12 s to keep the run short."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "FAULT_START", 5.0)
    monkeypatch.setattr(demo, "FAULT_SECONDS", 7.0)
    rc, events = run_cli(tmp_path, "--demo", "--speed", "0", "--duration", "22", "--prometheus-port", "0",
                         config="alarms:\n  hold_seconds: 1.0\n")
    assert rc == 0
    alarms = [e for e in events if e["kind"] == "alarm"]
    assert {a["source"] for a in alarms} == {"fan"}
    assert [a["type"] for a in alarms][0] == "new" and [a["type"] for a in alarms][-1] == "end"
    assert len({a["id"] for a in alarms}) == 1
    assert (demo.cache_dir() / "bundle.json").exists()  # cached for the next run
    ended = {e["source"] for e in events if e["kind"] == "status" and e["state"] == "ended"}
    assert ended == {"fan", "pump", "valve"}


def test_bundles_that_cannot_score_the_sources_are_start_up_errors(tmp_path, capsys):
    """A per-id model without --id, and a bundle of pre-computed vectors (no audio to give it), are refused at
    start-up with what to do; with --id the per-id model runs."""
    from models.training.recipe import build_spec, fit_bundle
    from tests import plugins

    x = wav(tmp_path / "m.wav", machine_audio(2.0, 1))
    feature = {"kind": "logmel", "sample_rate": SR, "n_fft": 256, "hop_length": 128, "n_mels": 16}
    with plugins.plugins_registered():
        spec = build_spec("test_per_id_gaussian", {"feature": feature, "threshold": "percentile:90",
                                                   "window_seconds": 1.0, "hop_seconds": 0.5})
        feats = spec.feature.extract_batch([machine_audio(2.0, s) for s in range(6)])
        per_id = fit_bundle(tmp_path / "per_id", spec, feats[:4], ["id_00", "id_01"] * 2, feats[4:],
                            ["id_00", "id_01"], machine="hum")
        rc, _ = run_cli(tmp_path, "--bundle", str(per_id), "--replay", str(x), "--speed", "0")
        assert rc == 2 and "scores per machine id" in capsys.readouterr().err
        rc, events = run_cli(tmp_path, "--bundle", str(per_id), "--replay", str(x), "--speed", "0", "--id", "id_01")
        assert rc == 0 and any(e["kind"] == "score" for e in events)
    vec = build_spec("dcase_ae", {"params": {"epochs": 1, "progress": False}, "feature": {"kind": "vectors", "dim": 4},
                                  "threshold": "percentile:90"})
    rows = [torch.randn(1, 4) for _ in range(8)]
    vectors = fit_bundle(tmp_path / "vec", vec, rows[:6], None, rows[6:], None, machine="v")
    rc, _ = run_cli(tmp_path, "--bundle", str(vectors), "--replay", str(x))
    assert rc == 2 and "not audio" in capsys.readouterr().err
    # a noise model where a detector belongs says where it goes instead
    from tests.helpers import make_denoiser_bundle

    for path, needle in ((make_denoiser_bundle(tmp_path / "den"), "a denoiser scores nothing"),
                         (make_noise_classifier_bundle(tmp_path / "cls"), "goes to --noise-bundle")):
        rc, _ = run_cli(tmp_path, "--bundle", str(path), "--replay", str(x))
        err = capsys.readouterr().err
        assert rc == 2 and "not a detector" in err and needle in err


def test_a_noise_bundle_puts_the_noise_score_on_every_score_and_marks_noisy_sources(tmp_path, bundle_dir, noise_dir,
                                                                                      caplog):
    caplog.set_level(logging.WARNING, logger="monitor.sinks.log")
    clean, noisy = noisy_pair_audio(3.0, seed=11)
    rc, events = run_cli(tmp_path, "--bundle", str(bundle_dir), "--noise-bundle", str(noise_dir), "--speed", "0",
                         "--replay", str(wav(tmp_path / "clean.wav", clean)),
                         "--replay", str(wav(tmp_path / "noisy.wav", noisy)), config="noise:\n  noisy_above: 0.5\n")
    assert rc == 0
    scores = [e for e in events if e["kind"] == "score"]
    assert {e["source"] for e in scores} == {"clean", "noisy"}
    assert all(0.0 <= e["noise"] <= 1.0 for e in scores)
    states = {s: [e["state"] for e in events if e["kind"] == "status" and e["source"] == s] for s in ("clean", "noisy")}
    assert states == {"clean": ["online", "ended"], "noisy": ["online", "noisy", "ended"]}
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings[0].startswith("source noisy: noisy (noise score") and "decisions are unreliable" in warnings[0]
    # the background noise alone looks anomalous to the AE: the alarm is raised, and the status says not to trust it
    assert any(w.startswith("ALARM noisy") for w in warnings) and not any("clean" in w for w in warnings)


@pytest.mark.parametrize("which, needle", [
    ("detector", "is a detector bundle (dcase_ae), not a noise classifier"),
    ("missing", "cannot load noise bundle"),
    ("level only", "no noise classifier"),
    ("other rate", "takes 8000 Hz audio, but"),
])
def test_a_noise_bundle_that_cannot_serve_is_a_start_up_error(tmp_path, bundle_dir, noise_dir, capsys, which,
                                                              needle):
    x, sr, bundle, noise = machine_audio(1.0, 1), SR, bundle_dir, ["--noise-bundle", str(noise_dir)]
    config = ""
    if which == "detector":
        noise = ["--noise-bundle", str(bundle_dir)]
    elif which == "missing":
        noise = ["--noise-bundle", str(tmp_path / "no-such-classifier")]
    elif which == "level only":
        noise, config = [], "noise:\n  noisy_above: 0.5\n"
    else:  # the classifier is fed the detector's audio: a 16 kHz detector cannot use an 8 kHz classifier
        sr = 16000
        x, bundle = machine_audio(1.0, 1, sr=sr), make_tiny_bundle(tmp_path / "b16k", sr=sr)
    rc, _ = run_cli(tmp_path, "--bundle", str(bundle), *noise, "--replay", str(wav(tmp_path / "m.wav", x, sr)),
                    "--speed", "0", config=config)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err, err
