"""`asd-offline score`: one JSON line per file, errors per file, exit status 0 / 1 / 2, bundle alone suffices."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from models.audio import load_wav
from models.bundle import load_bundle
from offline.cli import main
from test_evaluate import SR, tone_clip, train_tiny, write_dcase_dataset  # the same tiny generated data
from tests.bad_audio import CASES


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A fan bundle trained by the real training code, then the dataset deleted: scoring must need only the bundle."""
    tmp = tmp_path_factory.mktemp("score")
    data = write_dcase_dataset(tmp / "data")
    bundle = train_tiny(data, "fan", tmp / "bundle")
    for wav in data.rglob("*.wav"):
        wav.unlink()
    rng = np.random.default_rng(1)
    files = tmp / "files"
    files.mkdir()
    good = [files / "normal.wav", files / "anomaly.wav"]
    sf.write(good[0], tone_clip(440.0, rng), SR)
    sf.write(good[1], tone_clip(440.0, rng, "loud"), SR)
    corrupt = files / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk that is not audio")
    wrong_rate = files / "rate8k.wav"
    sf.write(wrong_rate, tone_clip(440.0, rng)[:8000], 8000)
    too_short = files / "short.wav"
    sf.write(too_short, tone_clip(440.0, rng)[:500], SR)
    return {"bundle": bundle, "good": good, "corrupt": corrupt, "wrong_rate": wrong_rate, "short": too_short,
            "missing": files / "missing.wav"}


def _lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_scores_match_the_bundle(setup: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    rc = main(["score", "--bundle", str(setup["bundle"]), "--device", "cpu", *map(str, setup["good"])])
    assert rc == 0
    lines = _lines(capsys.readouterr().out)
    bundle = load_bundle(setup["bundle"], device="cpu")
    expected = bundle.score_wavs([load_wav(p, SR)[0] for p in setup["good"]])
    assert [line["path"] for line in lines] == [str(p) for p in setup["good"]]
    for line, score in zip(lines, expected):
        assert set(line) == {"path", "score", "threshold", "anomalous"}
        assert line["score"] == pytest.approx(float(score), rel=1e-5)
        assert line["threshold"] == pytest.approx(bundle.threshold)
        assert line["anomalous"] == (line["score"] > line["threshold"])


def test_bad_files_get_error_lines_and_exit_1(setup: dict[str, Any]) -> None:
    """Through the installed entry point in a fresh process: real stdout, real exit status."""
    files = [setup["corrupt"], setup["good"][0], setup["wrong_rate"], setup["short"], setup["missing"],
             setup["good"][1]]
    proc = subprocess.run(
        [sys.executable, "-m", "offline.cli", "score", "--bundle", str(setup["bundle"]), "--device", "cpu",
         "--batch-size", "4", *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    lines = _lines(proc.stdout)
    assert [line["path"] for line in lines] == [str(p) for p in files]  # one line per file, input order
    by_name = {Path(line["path"]).name: line for line in lines}
    for name, words in (("corrupt.wav", "corrupt.wav"), ("rate8k.wav", "8000 Hz"), ("short.wav", "short.wav"),
                        ("missing.wav", "no such file")):
        assert set(by_name[name]) == {"path", "error"}, name
        assert words in by_name[name]["error"], by_name[name]
    assert "shorter than one feature vector" in by_name["short.wav"]["error"]
    for name in ("normal.wav", "anomaly.wav"):  # the good files in the same batches were still scored
        assert isinstance(by_name[name]["score"], float)


def test_every_bad_recording_gets_its_error_line_and_the_good_ones_are_scored(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The shared table of bad recordings (tests/bad_audio.py), in one call between good files."""
    bad = [case.make(tmp_path, SR) for case in CASES]
    files = [setup["good"][0], *bad, setup["good"][1]]
    rc = main(["score", "--bundle", str(setup["bundle"]), "--device", "cpu", *map(str, files)])
    assert rc == 1
    captured = capsys.readouterr()
    lines = _lines(captured.out)
    assert [line["path"] for line in lines] == [str(p) for p in files]
    for case, path, line in zip(CASES, bad, lines[1:-1]):
        assert set(line) == {"path", "error"}, (case.name, line)
        assert str(path) in line["error"] and case.error_words(SR) in line["error"], (case.name, line)
    assert all(isinstance(line["score"], float) for line in (lines[0], lines[-1]))
    assert "Traceback" not in captured.err


def test_unloadable_bundle_exits_2(tmp_path: Path, setup: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    rc = main(["score", "--bundle", str(tmp_path), str(setup["good"][0])])
    assert rc == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(tmp_path) in captured.err


def test_a_long_recording_is_scored_in_windows_as_the_monitor_scores_it(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rng = np.random.default_rng(7)
    x = np.concatenate([tone_clip(440.0, rng) for _ in range(12)] + [tone_clip(440.0, rng, "loud")] * 3)
    path = tmp_path / "long.wav"
    sf.write(path, x, SR)
    bundle = load_bundle(setup["bundle"], device="cpu")
    rc = main(["score", "--bundle", str(setup["bundle"]), "--device", "cpu", "--long-seconds", "2",
               "--window-scores", str(path)])
    assert rc == 0
    [line] = _lines(capsys.readouterr().out)
    scorer = bundle.stream_scorer(1, bundle.window_seconds, bundle.hop_seconds)  # the monitor's path, at once
    expected = [(end / SR, score) for end, score in scorer.accept([load_wav(path, SR)[0]])[0]]
    assert line["windows"] == len(expected) > 1
    got = line["window_scores"]
    assert [e for e, _ in got] == pytest.approx([e for e, _ in expected], abs=1e-3)
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=1e-5)
    assert line["score"] == pytest.approx(max(s for _, s in expected), rel=1e-5)
    above = [e for e, s in expected if s > line["threshold"]]
    assert line["anomalous_windows"] == len(above)
    assert line["first_anomalous_s"] == (pytest.approx(above[0], abs=1e-3) if above else None)
    assert line["anomalous"] == bool(above)
    rc = main(["score", "--bundle", str(setup["bundle"]), "--device", "cpu", str(path)])  # under the default limit
    assert rc == 0 and "windows" not in _lines(capsys.readouterr().out)[0]
