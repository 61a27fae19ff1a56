"""The synthetic DCASE-layout generator: layout, format, determinism, streaming continuity, level calibration, CLI."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sklearn.metrics import roc_auc_score

from offline.cli import main as cli_main
from offline.synth import ALL_MACHINES, ANOMALIES, LEVEL, MachineVoice, synthesize

NAME = re.compile(r"^(normal|anomaly)_id_(\d{2})_(\d{8})\.wav$")
SR = 16000


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rms_db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2))))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    return synthesize(out, ["fan", "valve"], ids=2, train_clips=2, test_clips=3, duration=0.5, seed=1)


def test_layout_names_and_counts(small: Path) -> None:
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for path in small.rglob("*.wav"):
        machine, split = path.parent.parent.name, path.parent.name
        m = NAME.match(path.name)
        assert m, f"not a DCASE 2020 file name: {path}"
        counts[(machine, split, m.group(1), m.group(2))] += 1
    expected = Counter()
    for machine in ("fan", "valve"):
        for mid in ("00", "02"):
            expected[(machine, "train", "normal", mid)] = 2
            expected[(machine, "test", "normal", mid)] = 2  # 3 test clips: the odd one is normal
            expected[(machine, "test", "anomaly", mid)] = 1
    assert counts == expected
    assert sorted(p.name for p in (small / "fan" / "train").iterdir()) == [
        "normal_id_00_00000000.wav", "normal_id_00_00000001.wav", "normal_id_02_00000000.wav",
        "normal_id_02_00000001.wav"]
    manifest = json.loads((small / "synth.json").read_text())
    assert manifest["anomaly_kinds"]["valve/test/anomaly_id_02_00000000.wav"] == ANOMALIES["valve"][0]
    assert manifest["machines"]["fan"]["ids"] == ["id_00", "id_02"]


def test_wav_format(small: Path) -> None:
    for path in small.rglob("*.wav"):
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (SR, 1, "PCM_16", "WAV"), path
        assert info.frames == SR // 2, path
        x, _ = sf.read(path, dtype="float32")
        assert -30 < _rms_db(x) < -22, f"{path}: level {_rms_db(x):.1f} dBFS outside -26 +- 3 dB"
        assert np.max(np.abs(x)) < 0.99, f"{path} clips"


def test_same_seed_same_bytes_other_seed_other_bytes(small: Path, tmp_path: Path) -> None:
    again = synthesize(tmp_path / "again", ["fan", "valve"], ids=2, train_clips=2, test_clips=3, duration=0.5, seed=1)
    assert _files(again) == _files(small)
    other = _files(synthesize(tmp_path / "other", ["fan", "valve"], ids=2, train_clips=2, test_clips=3,
                              duration=0.5, seed=2))
    wavs = [k for k in other if k.endswith(".wav")]
    assert wavs and all(other[k] != _files(small)[k] for k in wavs)


def test_workers_do_not_change_output(small: Path, tmp_path: Path) -> None:
    parallel = synthesize(tmp_path / "par", ["fan", "valve"], ids=2, train_clips=2, test_clips=3, duration=0.5,
                          seed=1, workers=2)
    assert _files(parallel) == _files(small)


def test_refuses_to_mix_with_old_files_unless_overwrite(small: Path, tmp_path: Path) -> None:
    out = synthesize(tmp_path / "d", ["pump"], ids=1, train_clips=3, test_clips=0, duration=0.1)
    with pytest.raises(ValueError, match="already holds 3 wav files"):
        synthesize(out, ["pump"], ids=1, train_clips=1, test_clips=0, duration=0.1)
    synthesize(out, ["pump"], ids=1, train_clips=1, test_clips=0, duration=0.1, overwrite=True)
    assert [p.name for p in out.rglob("*.wav")] == ["normal_id_00_00000000.wav"]


@pytest.mark.parametrize("machine", ALL_MACHINES)
def test_voice_is_continuous_across_blocks(machine: str) -> None:
    """Cutting a stream into blocks (across noise tiles and internal blocks) changes no sample."""
    kind = ANOMALIES[machine][-1]
    for anomaly in (None, kind):
        whole = MachineVoice(machine, 2, seed=5, instance=3).generate(50000, anomaly)
        voice = MachineVoice(machine, 2, seed=5, instance=3)
        parts = [voice.generate(n, anomaly) for n in (1, 7, 0, 5000, 16384, 28608)]
        assert all(p.dtype == np.float32 for p in parts)
        np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("machine", ALL_MACHINES)
def test_switching_a_fault_does_not_click(machine: str) -> None:
    """A fault switched on or off mid-stream fades: right after the switch the stream is still the plain one."""
    n = SR
    for kind in ANOMALIES[machine]:
        plain = MachineVoice(machine, 0, instance=1)
        toggled = MachineVoice(machine, 0, instance=1)
        ref = plain.generate(3 * n)
        y = np.concatenate([toggled.generate(n), toggled.generate(n, kind), toggled.generate(n)])
        d = y - ref
        rms = np.sqrt(np.mean(ref**2))
        assert np.all(np.isfinite(y))
        assert np.max(np.abs(d[n : n + 32])) < 0.2 * rms, f"{machine}/{kind} jumps when switched on"


@pytest.mark.parametrize("machine", ALL_MACHINES)
def test_every_fault_changes_the_sound(machine: str) -> None:
    normal = MachineVoice(machine, 2, instance=4).generate(4 * SR)
    for kind in ANOMALIES[machine]:
        faulty = MachineVoice(machine, 2, instance=4).generate(4 * SR, kind)
        assert np.sqrt(np.mean((faulty - normal) ** 2)) > 0.05 * LEVEL, f"{machine}/{kind} is inaudible"


@pytest.mark.parametrize("machine", ALL_MACHINES)
def test_machine_and_background_levels_are_calibrated(machine: str) -> None:
    """With the background (or the machine) mixed 60 dB down, each part alone sits at LEVEL: snr_db means dB."""
    for snr in (60.0, -60.0):
        x = MachineVoice(machine, 4, seed=2, snr_db=snr, instance=7).generate(4 * SR)
        assert abs(_rms_db(x) - 20 * np.log10(LEVEL)) < 3.0, f"{machine} at snr {snr}: {_rms_db(x):.1f} dBFS"


def test_rms_level_does_not_reveal_anomalies(tmp_path: Path) -> None:
    """Clip loudness as an anomaly score is at chance on every machine type."""
    root = synthesize(tmp_path / "lvl", ALL_MACHINES, ids=2, train_clips=0, test_clips=20, duration=2.0, seed=3)
    for machine in ALL_MACHINES:
        labels, scores = [], []
        for path in sorted((root / machine / "test").glob("*.wav")):
            x, _ = sf.read(path, dtype="float64")
            labels.append(int(path.name.startswith("anomaly")))
            scores.append(float(np.sqrt(np.mean(x**2))))
        assert len(labels) == 40 and sum(labels) == 20
        auc = roc_auc_score(labels, scores)
        assert 0.4 <= auc <= 0.6, f"{machine}: RMS-level AUC {auc:.3f}"


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="unknown machine type 'drill'"):
        MachineVoice("drill", 0)
    with pytest.raises(ValueError, match="no fault 'leak' for fan"):
        MachineVoice("fan", 0).generate(10, "leak")
    with pytest.raises(ValueError, match="machine_id"):
        MachineVoice("fan", -1)
    with pytest.raises(ValueError, match="n_samples"):
        MachineVoice("fan", 0).generate(-5)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["synth", str(out), "--machines", "toycar,pump", "--ids", "1", "--train-clips", "1", "--test-clips", "2",
            "--duration", "0.25", "--seed", "4", "--snr", "-6"]
    assert cli_main(argv) == 0
    assert "wrote 6 clips" in capsys.readouterr().out
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.wav")) == [
        "ToyCar/test/anomaly_id_00_00000000.wav", "ToyCar/test/normal_id_00_00000000.wav",
        "ToyCar/train/normal_id_00_00000000.wav", "pump/test/anomaly_id_00_00000000.wav",
        "pump/test/normal_id_00_00000000.wav", "pump/train/normal_id_00_00000000.wav"]
    assert json.loads((out / "synth.json").read_text())["snr_db"] == -6.0
    assert cli_main(argv) == 2  # files exist and no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main([*argv, "--overwrite"]) == 0
    assert cli_main(["synth", str(tmp_path / "x"), "--machines", "fan,drill"]) == 2
    assert "unknown machine type 'drill'" in capsys.readouterr().err


def test_an_unwritable_output_is_a_message_and_exit_2(tmp_path: Path, capsys) -> None:
    from offline.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a file where the output folder's parent should be: fails for root too
    rc = main(["synth", str(blocker / "out"), "--machines", "fan", "--ids", "1", "--train-clips", "1",
               "--test-clips", "0"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "asd-offline synth: error:" in err and "a-file" in err and "Traceback" not in err
