"""models.audio: every way a wav can be unusable gives an AudioError naming the file; good files load exactly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from models.audio import AudioError, WavReader, is_silent, level_dbfs, load_wav
from tests.bad_audio import CASES, BadAudio

SR = 16000


def _write(path: Path, x: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> Path:
    sf.write(path, x, sr, subtype=subtype)
    return path


def _tone(n: int = SR // 5, channels: int = 1) -> np.ndarray:
    t = np.arange(n) / SR
    x = 0.5 * np.sin(2 * math.pi * 440 * t)
    return np.stack([x * (c + 1) / channels for c in range(channels)], axis=1) if channels > 1 else x


def test_loads_mono_float32(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.wav", _tone(), subtype="FLOAT")
    x, sr = load_wav(path, sample_rate=SR)
    assert sr == SR and x.dtype == np.float32 and x.ndim == 1 and x.size == SR // 5
    np.testing.assert_allclose(x, _tone(), atol=1e-7)


def test_picks_the_requested_channel(tmp_path: Path) -> None:
    stereo = _tone(channels=3)
    path = _write(tmp_path / "multi.wav", stereo, subtype="FLOAT")
    x, _ = load_wav(path, channel=2)
    np.testing.assert_allclose(x, stereo[:, 2], atol=1e-7)
    with pytest.raises(AudioError, match=r"multi\.wav: channel 3 requested, the file has 3"):
        load_wav(path, channel=3)
    with pytest.raises(AudioError, match=r"multi\.wav: expected a mono file, it has 3 channels"):
        load_wav(path, channel=None)


def test_mono_demand_accepts_mono(tmp_path: Path) -> None:
    x, _ = load_wav(_write(tmp_path / "m.wav", _tone()), channel=None)
    assert x.shape == (SR // 5,)


def test_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not a wav file\n" * 20)
    with pytest.raises(AudioError, match=r"notes\.wav: not a readable audio file"):
        load_wav(path)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_bad_recording_is_an_audio_error_naming_the_file(case: BadAudio, tmp_path: Path) -> None:
    """The shared table of bad recordings, read whole (training, `score`) and block by block (replays)."""
    path = case.make(tmp_path, SR)
    with pytest.raises(AudioError) as whole:
        load_wav(path, sample_rate=SR)
    with pytest.raises(AudioError) as blocks:
        for _ in WavReader(path, SR).blocks(SR // 10):
            pass
    for error in (whole, blocks):
        assert str(path) in str(error.value) and case.error_words(SR) in str(error.value), str(error.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"nothere\.wav: no such file"):
        load_wav(tmp_path / "nothere.wav")


def test_truncated_file_is_detected(tmp_path: Path) -> None:
    path = _write(tmp_path / "cut.wav", _tone())
    full = path.read_bytes()
    # soundfile alone would read the shorter clip without complaint; the loader must not
    path.write_bytes(full[: len(full) - 1000])
    assert sf.info(path).frames < SR // 5
    message = r"cut\.wav: truncated: the header declares 6400 bytes of audio, the file holds 5400"
    with pytest.raises(AudioError, match=message):
        load_wav(path)


def test_truncated_inside_the_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "stub.wav", _tone())
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(AudioError, match=r"stub\.wav: truncated or malformed"):
        load_wav(path)


def test_wrong_sample_rate_is_an_error_by_default(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.wav", _tone(), sr=48000)
    with pytest.raises(AudioError, match=r"r\.wav: sample rate is 48000 Hz, 16000 Hz is required"):
        load_wav(path, sample_rate=SR)
    x, sr = load_wav(path)  # no requirement: the file's own rate
    assert sr == 48000 and x.size == SR // 5


def test_resample_opt_in(tmp_path: Path) -> None:
    n = 48000 // 4
    t = np.arange(n) / 48000
    path = _write(tmp_path / "r48.wav", 0.5 * np.sin(2 * math.pi * 440 * t), sr=48000, subtype="FLOAT")
    x, sr = load_wav(path, sample_rate=SR, resample=True)
    assert sr == SR and x.dtype == np.float32 and x.size == n // 3
    expected = 0.5 * np.sin(2 * math.pi * 440 * np.arange(n // 3) / SR)
    # the polyphase filter's edge transients aside, the tone survives unchanged
    np.testing.assert_allclose(x[200:-200], expected[200:-200], atol=2e-3)


def test_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.wav", np.zeros(0))
    with pytest.raises(AudioError, match=r"empty\.wav: the file holds no samples"):
        load_wav(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path: Path, bad: float) -> None:
    x = _tone()
    x[[10, 20]] = bad
    path = _write(tmp_path / "nan.wav", x, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: 2 NaN/inf sample"):
        load_wav(path)


def test_bad_sample_rate_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sample_rate must be positive"):
        load_wav(_write(tmp_path / "a.wav", _tone()), sample_rate=0)


def test_level_dbfs_reference_points() -> None:
    assert level_dbfs(np.ones(100)) == pytest.approx(0.0)
    sine = np.sin(2 * math.pi * np.arange(16000) / 160)
    assert level_dbfs(sine) == pytest.approx(-3.0103, abs=1e-3)
    assert level_dbfs(0.01 * sine) == pytest.approx(-43.0103, abs=1e-3)
    assert level_dbfs(np.zeros(10)) == float("-inf")
    assert level_dbfs(np.zeros(0)) == float("-inf")


def test_is_silent_floor() -> None:
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(16000)
    assert is_silent(np.zeros(100))
    assert is_silent(1e-6 * noise)  # about -120 dBFS
    assert not is_silent(1e-3 * noise)  # about -60 dBFS
    assert is_silent(1e-3 * noise, floor_dbfs=-50)
