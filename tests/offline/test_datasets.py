"""Dataset readers: each layout, the MIMII split rule, the manifest, and every bad-input case naming its file."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from offline.datasets.index import load_clips, summarize
from offline.datasets.mimii import normalize_snr
from offline.datasets.records import Clip, DatasetError

SR = 16000


def _wav(path: Path, seconds: float = 0.1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(SR * seconds), dtype=np.float32), SR, subtype="PCM_16")
    return path


def _dcase_machine(root: Path, machine: str, train: int = 2, test: int = 1, ids: tuple[str, ...] = ("00", "02")
                   ) -> None:
    for i in ids:
        for n in range(train):
            _wav(root / machine / "train" / f"normal_id_{i}_{n:08d}.wav")
        for n in range(test):
            _wav(root / machine / "test" / f"normal_id_{i}_{n:08d}.wav")
            _wav(root / machine / "test" / f"anomaly_id_{i}_{n:08d}.wav")


def _mimii(root: Path, snr_dir: str, machine: str, ids: dict[str, tuple[int, int]]) -> None:
    for id_, (normal, abnormal) in ids.items():
        for n in range(normal):
            _wav(root / snr_dir / machine / id_ / "normal" / f"{n:08d}.wav")
        for n in range(abnormal):
            _wav(root / snr_dir / machine / id_ / "abnormal" / f"{n:08d}.wav")


def _key(c: Clip) -> tuple:
    return c.machine, c.id, c.split, c.label, c.snr, c.path.name


# ---------------------------------------------------------------- DCASE 2020


def test_dcase_dataset_root(tmp_path: Path) -> None:
    _dcase_machine(tmp_path, "fan")
    _dcase_machine(tmp_path, "ToyCar", ids=("01",))
    clips = load_clips(tmp_path)
    assert len(clips) == 12
    assert clips == sorted(clips, key=lambda c: (c.machine, c.snr or "", c.id, c.split, str(c.path)))
    first = clips[0]
    assert first == Clip(path=tmp_path / "ToyCar/test/anomaly_id_01_00000000.wav", machine="ToyCar", id="id_01",
                         split="test", label="anomaly")
    fan = [c for c in clips if c.machine == "fan"]
    assert Counter((c.id, c.split, c.label) for c in fan) == {
        ("id_00", "train", "normal"): 2, ("id_00", "test", "normal"): 1, ("id_00", "test", "anomaly"): 1,
        ("id_02", "train", "normal"): 2, ("id_02", "test", "normal"): 1, ("id_02", "test", "anomaly"): 1,
    }
    # each label comes from its own file name
    assert all(c.path.name.startswith(c.label + "_") for c in clips)


def test_dcase_machine_filter_and_single_machine_folder(tmp_path: Path) -> None:
    _dcase_machine(tmp_path, "fan")
    _dcase_machine(tmp_path, "pump")
    via_filter = load_clips(tmp_path, machine="pump")
    via_folder = load_clips(tmp_path / "pump")
    assert {c.machine for c in via_filter} == {"pump"} and len(via_filter) == 8
    assert via_folder == via_filter
    with pytest.raises(DatasetError, match=r"no clips of machine 'valve' \(found: fan, pump\)"):
        load_clips(tmp_path, machine="valve")


def test_dcase_eval_test_clips_are_unlabeled(tmp_path: Path) -> None:
    _wav(tmp_path / "fan/train/normal_id_01_00000000.wav")
    _wav(tmp_path / "fan/test/id_01_00000000.wav")
    _wav(tmp_path / "fan/test/id_01_00000001.wav")
    clips = load_clips(tmp_path)
    unlabeled = [c for c in clips if c.split == "test"]
    assert len(unlabeled) == 2 and all(c.label is None and not c.is_anomaly and c.id == "id_01" for c in unlabeled)


def test_dcase_unlabeled_training_clip_is_an_error(tmp_path: Path) -> None:
    _wav(tmp_path / "fan/train/normal_id_01_00000000.wav")
    bad = _wav(tmp_path / "fan/train/id_01_00000001.wav")
    with pytest.raises(DatasetError, match=rf"{bad}: a training clip without normal_/anomaly_"):
        load_clips(tmp_path)


@pytest.mark.parametrize("name", ["abnormal_id_00_00000000.wav", "normal_00_00000000.wav", "normal_id_00.wav",
                                  "recording.wav"])
def test_dcase_unparsable_name_is_an_error_naming_it(tmp_path: Path, name: str) -> None:
    _dcase_machine(tmp_path, "fan")
    bad = _wav(tmp_path / "fan" / "test" / name)
    with pytest.raises(DatasetError, match=rf"{bad}: file name is not"):
        load_clips(tmp_path)


def test_dcase_stray_wav_outside_the_layout(tmp_path: Path) -> None:
    _dcase_machine(tmp_path, "fan")
    stray = _wav(tmp_path / "fan" / "extra" / "normal_id_00_00000000.wav")
    with pytest.raises(DatasetError, match=rf"{stray}: not where the DCASE 2020 layout puts clips"):
        load_clips(tmp_path)


def test_lenient_skips_and_counts_bad_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _dcase_machine(tmp_path, "fan")
    _wav(tmp_path / "fan/test/abnormal_id_00_00000009.wav")
    _wav(tmp_path / "fan/train/id_00_00000009.wav")
    with caplog.at_level(logging.WARNING, logger="offline.datasets.index"):
        clips = load_clips(tmp_path, lenient=True)
    assert len(clips) == 8  # exactly the well-named files
    assert "skipped 2 file(s)/row(s)" in caplog.text and "abnormal_id_00_00000009.wav" in caplog.text


def test_lenient_with_nothing_usable_is_still_an_error(tmp_path: Path) -> None:
    _wav(tmp_path / "fan/train/whatever.wav")
    with pytest.raises(DatasetError, match=r"no usable clips \(1 skipped\)"):
        load_clips(tmp_path, lenient=True)


def test_hidden_folders_are_ignored(tmp_path: Path) -> None:
    _dcase_machine(tmp_path, "fan")
    _wav(tmp_path / ".downloads" / "staging-x" / "junk.wav")
    _wav(tmp_path / "fan" / "train" / ".ipynb_checkpoints" / "junk.wav")
    assert len(load_clips(tmp_path)) == 8


# ---------------------------------------------------------------- MIMII


def test_mimii_dataset_root_labels_snr_and_split_rule(tmp_path: Path) -> None:
    _mimii(tmp_path, "6_dB_fan", "fan", {"id_00": (10, 3), "id_02": (6, 2)})
    _mimii(tmp_path, "-6_dB_valve", "valve", {"id_00": (4, 1)})
    _mimii(tmp_path, "0dB_pump", "pump", {"id_04": (5, 5)})  # also the "6dB_fan" spelling
    clips = load_clips(tmp_path)
    assert {(c.machine, c.snr) for c in clips} == {("fan", "6dB"), ("valve", "-6dB"), ("pump", "0dB")}
    for c in clips:
        assert c.label == ("anomaly" if c.path.parent.name == "abnormal" else "normal")
    groups = Counter((c.machine, c.id, c.split, c.label) for c in clips)
    # every abnormal clip is a test clip, with as many normal test clips, the rest trains
    assert groups[("fan", "id_00", "test", "anomaly")] == 3 and groups[("fan", "id_00", "test", "normal")] == 3
    assert groups[("fan", "id_00", "train", "normal")] == 7
    assert groups[("fan", "id_02", "test", "normal")] == 2 and groups[("fan", "id_02", "train", "normal")] == 4
    assert groups[("valve", "id_00", "test", "normal")] == 1
    # never more than half the normals leave training (tiny samples stay trainable)
    assert groups[("pump", "id_04", "test", "normal")] == 2 and groups[("pump", "id_04", "train", "normal")] == 3
    assert not any(c.split == "train" and c.label == "anomaly" for c in clips)


def test_mimii_split_is_deterministic_and_independent_of_what_else_is_loaded(tmp_path: Path) -> None:
    _mimii(tmp_path, "6_dB_fan", "fan", {"id_00": (20, 5)})
    alone = load_clips(tmp_path / "6_dB_fan")
    _mimii(tmp_path, "6_dB_pump", "pump", {"id_00": (6, 2)})
    _mimii(tmp_path, "0_dB_fan", "fan", {"id_00": (20, 5)})
    together = load_clips(tmp_path, machine="fan")
    assert [_key(c) for c in alone] == [_key(c) for c in together if c.snr == "6dB"]
    assert load_clips(tmp_path, machine="fan") == together
    test_normals = {c.path.name for c in alone if c.split == "test" and c.label == "normal"}
    assert len(test_normals) == 5
    # a shuffle, not "the first five": the chosen names are not simply the lowest ones
    assert test_normals != {f"{n:08d}.wav" for n in range(5)}
    # the two SNR sets (different group keys) draw different normals
    other = {c.path.name for c in together if c.snr == "0dB" and c.split == "test" and c.label == "normal"}
    assert other != test_normals


@pytest.mark.parametrize("level", ["snr_folder", "baseline_snr_folder", "machines_folder", "machine_folder"])
def test_mimii_other_roots(tmp_path: Path, level: str) -> None:
    if level == "snr_folder":
        _mimii(tmp_path, "0_dB_pump", "pump", {"id_00": (4, 2)})
        root, snr = tmp_path / "0_dB_pump", "0dB"
    elif level == "baseline_snr_folder":  # the MIMII baseline unpacks into min6dB/<machine>/...
        _mimii(tmp_path, "min6dB", "pump", {"id_00": (4, 2)})
        root, snr = tmp_path / "min6dB", "-6dB"
    elif level == "machines_folder":
        _mimii(tmp_path, "sample", "pump", {"id_00": (4, 2)})
        root, snr = tmp_path / "sample", None
    else:
        _mimii(tmp_path, "sample", "pump", {"id_00": (4, 2)})
        root, snr = tmp_path / "sample" / "pump", None
    clips = load_clips(root)
    assert len(clips) == 6 and {(c.machine, c.id, c.snr) for c in clips} == {("pump", "id_00", snr)}
    assert Counter((c.split, c.label) for c in clips) == {("train", "normal"): 2, ("test", "normal"): 2,
                                                          ("test", "anomaly"): 2}


def test_mimii_unknown_label_folder_is_an_error(tmp_path: Path) -> None:
    _mimii(tmp_path, "6_dB_fan", "fan", {"id_00": (2, 1)})
    bad = _wav(tmp_path / "6_dB_fan/fan/id_00/broken/00000000.wav")
    with pytest.raises(DatasetError, match=rf"{bad}: expected id_XX/{{normal,abnormal}}"):
        load_clips(tmp_path)


def test_mimii_machine_folder_must_match_the_snr_folder(tmp_path: Path) -> None:
    _mimii(tmp_path, "6_dB_fan", "fan", {"id_00": (2, 1)})
    bad = _wav(tmp_path / "6_dB_fan/pump/id_00/normal/00000000.wav")
    with pytest.raises(DatasetError, match=rf"{bad}: machine folder 'pump' inside '6_dB_fan'"):
        load_clips(tmp_path)


def test_mimii_bad_file_name(tmp_path: Path) -> None:
    _mimii(tmp_path, "6_dB_fan", "fan", {"id_00": (2, 1)})
    bad = _wav(tmp_path / "6_dB_fan/fan/id_00/normal/take1.wav")
    with pytest.raises(DatasetError, match=rf"{bad}"):
        load_clips(tmp_path)
    assert len(load_clips(tmp_path, lenient=True)) == 3


@pytest.mark.parametrize(("text", "snr"), [("6", "6dB"), ("6dB", "6dB"), ("6_dB", "6dB"), ("+6dB", "6dB"),
                                           ("-6", "-6dB"), ("min6dB", "-6dB"), ("0", "0dB"), ("-0dB", "0dB"),
                                           ("six", None), ("6 dB", None), ("", None)])
def test_normalize_snr(text: str, snr: str | None) -> None:
    assert normalize_snr(text) == snr


# ---------------------------------------------------------------- folders that are neither


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'nope'}: no such file or folder"):
        load_clips(tmp_path / "nope")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "fan" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=rf"{tmp_path}: no \.wav files"):
        load_clips(tmp_path)


def test_folder_of_neither_layout(tmp_path: Path) -> None:
    _wav(tmp_path / "recordings" / "a.wav")
    with pytest.raises(DatasetError, match=rf"{tmp_path}: neither the DCASE 2020 layout .* nor the MIMII layout"):
        load_clips(tmp_path)


def test_dcase_data_in_a_folder_named_like_an_snr(tmp_path: Path) -> None:
    _dcase_machine(tmp_path / "0dB", "fan")
    assert len(load_clips(tmp_path / "0dB")) == 8


def test_mixed_layouts_are_refused(tmp_path: Path) -> None:
    _dcase_machine(tmp_path, "fan")
    _mimii(tmp_path, "6_dB_pump", "pump", {"id_00": (2, 1)})
    with pytest.raises(DatasetError, match="holds both DCASE"):
        load_clips(tmp_path)


def test_a_file_that_is_not_a_manifest(tmp_path: Path) -> None:
    wav = _wav(tmp_path / "a.wav")
    with pytest.raises(DatasetError, match=rf"{wav}: not a dataset folder nor a manifest"):
        load_clips(wav)


# ---------------------------------------------------------------- manifest CSV


def _manifest(tmp_path: Path, rows: list[str], header: str = "path,machine,id,split,label,snr") -> Path:
    path = tmp_path / "lists" / "manifest.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_manifest_relative_and_absolute_paths(tmp_path: Path) -> None:
    rel = _wav(tmp_path / "lists" / "audio" / "x1.wav")
    absolute = _wav(tmp_path / "elsewhere" / "x2.wav")
    unlabeled = _wav(tmp_path / "lists" / "audio" / "x3.wav")
    csv_path = _manifest(tmp_path, [
        "audio/x1.wav,fan,id_00,train,normal,6dB",
        f"{absolute},fan,3,test,anomaly,-6",
        "audio/x3.wav,fan,id_00,test,,",
    ])
    clips = load_clips(csv_path)
    assert clips == [  # sorted by machine, snr, id, split, path
        Clip(path=csv_path.parent / "audio/x3.wav", machine="fan", id="id_00", split="test", label=None),
        Clip(path=absolute, machine="fan", id="id_03", split="test", label="anomaly", snr="-6dB"),
        Clip(path=csv_path.parent / "audio/x1.wav", machine="fan", id="id_00", split="train", label="normal",
             snr="6dB"),
    ]
    assert clips[2].path.resolve() == rel.resolve() and clips[0].path.resolve() == unlabeled.resolve()


def test_manifest_snr_column_is_optional_and_extra_columns_are_ignored(tmp_path: Path) -> None:
    _wav(tmp_path / "lists" / "a.wav")
    csv_path = _manifest(tmp_path, ["a.wav,pump,id_02,train,normal,note"], header="path,machine,id,split,label,comment")
    assert load_clips(csv_path) == [Clip(path=csv_path.parent / "a.wav", machine="pump", id="id_02", split="train",
                                         label="normal")]


@pytest.mark.parametrize(("row", "message"), [
    ("a.wav,fan,id_00,val,normal,", r"line 3: unknown split 'val'"),
    ("a.wav,fan,id_00,test,abnormal,", r"line 3: unknown label 'abnormal'"),
    ("a.wav,fan,id_00,train,,", r"line 3: empty label on a training clip"),
    ("missing.wav,fan,id_00,train,normal,", r"line 3: audio file .*missing\.wav does not exist"),
    ("a.wav,fan,id 0,train,normal,", r"line 3: unusable id 'id 0'"),
    ("a.wav,fan,id_00,train,normal,loud", r"line 3: unusable snr 'loud'"),
    (",fan,id_00,train,normal,", r"line 3: empty path"),
    ("a.wav,,id_00,train,normal,", r"line 3: empty machine"),
    ("a.wav,fan,id_00,test,normal,", r"line 3: .*a\.wav is already listed on line 2"),
])
def test_manifest_bad_rows_name_the_line(tmp_path: Path, row: str, message: str) -> None:
    _wav(tmp_path / "lists" / "a.wav")
    csv_path = _manifest(tmp_path, ["a.wav,fan,id_00,train,normal,", row])
    with pytest.raises(DatasetError, match=rf"{csv_path}: {message}"):
        load_clips(csv_path)
    # lenient: the good row survives, the bad one is skipped
    assert [c.path.name for c in load_clips(csv_path, lenient=True)] == ["a.wav"]


def test_manifest_missing_column_is_always_an_error(tmp_path: Path) -> None:
    _wav(tmp_path / "lists" / "a.wav")
    csv_path = _manifest(tmp_path, ["a.wav,fan,id_00,normal"], header="path,machine,id,label")
    for lenient in (False, True):
        with pytest.raises(DatasetError, match=rf"{csv_path}: manifest lacks column\(s\) split"):
            load_clips(csv_path, lenient=lenient)


def test_manifest_without_rows(tmp_path: Path) -> None:
    csv_path = _manifest(tmp_path, [])
    with pytest.raises(DatasetError, match="header but no rows"):
        load_clips(csv_path)


def test_manifest_with_bom_and_spaces(tmp_path: Path) -> None:
    _wav(tmp_path / "lists" / "a.wav")
    csv_path = tmp_path / "lists" / "m.csv"
    csv_path.write_bytes("\ufeffpath, machine, id, split, label\n a.wav , fan , id_01 , test , anomaly \n".encode())
    assert load_clips(csv_path) == [Clip(path=csv_path.parent / "a.wav", machine="fan", id="id_01", split="test",
                                         label="anomaly")]


# ---------------------------------------------------------------- summary


def test_summarize_counts(tmp_path: Path) -> None:
    _mimii(tmp_path, "6_dB_fan", "fan", {"id_00": (6, 2), "id_02": (4, 1)})
    _mimii(tmp_path, "0_dB_fan", "fan", {"id_00": (4, 2)})
    _mimii(tmp_path, "6_dB_valve", "valve", {"id_00": (2, 1)})
    summary = summarize(load_clips(tmp_path))
    assert summary["clips"] == 22
    assert summary["splits"] == {"test": {"anomaly": 6, "normal": 6}, "train": {"normal": 10}}
    fan = summary["machines"]["fan"]
    assert fan["clips"] == 19 and fan["snr"] == {"0dB": 6, "6dB": 13}
    assert fan["ids"]["id_02"] == {"test": {"anomaly": 1, "normal": 1}, "train": {"normal": 3}}
    assert fan["ids"]["id_00"] == {"test": {"anomaly": 4, "normal": 4}, "train": {"normal": 6}}
    assert summary["machines"]["valve"]["splits"] == {"test": {"anomaly": 1, "normal": 1}, "train": {"normal": 1}}


def test_summarize_unlabeled_and_no_snr(tmp_path: Path) -> None:
    _wav(tmp_path / "fan/train/normal_id_01_00000000.wav")
    _wav(tmp_path / "fan/test/id_01_00000000.wav")
    summary = summarize(load_clips(tmp_path))
    assert summary["machines"]["fan"]["snr"] == {}
    assert summary["splits"] == {"test": {"unlabeled": 1}, "train": {"normal": 1}}


@pytest.mark.realdata
def test_real_mimii_sample_reads_and_loads(real_data_dir: Path) -> None:
    """The real MIMII fan id_00 sample (a folder of machine folders, no SNR) reads with the right labels."""
    from models.audio import load_wav

    clips = load_clips(real_data_dir / "mimii_mohxen_fan_id00" / "sample_dataset")
    assert len(clips) == 40 and {(c.machine, c.id, c.snr) for c in clips} == {("fan", "id_00", None)}
    assert Counter(c.label for c in clips) == {"normal": 20, "anomaly": 20}
    assert all((c.label == "anomaly") == (c.path.parent.name == "abnormal") for c in clips)
    x, sr = load_wav(clips[0].path, sample_rate=16000, channel=None)
    assert sr == 16000 and x.shape == (160000,)
