"""The MIMII layout: `<snr>_<machine>/<machine>/id_XX/{normal,abnormal}/NNNNNNNN.wav`.

The Zenodo zips `6_dB_fan.zip`, `0_dB_pump.zip`, `-6_dB_valve.zip`, ... each hold `<machine>/id_XX/...`; extracted
into a folder named after the zip this gives the layout above. Also accepted: `6dB_fan`, an SNR folder without the
machine suffix holding machine folders (`6dB/fan/id_00/...` or `min6dB/...`, as the MIMII baseline unpacks), a
folder of machine folders without SNR (`fan/id_00/...`), and a single machine folder (`id_00/...`). SNR is
normalised to "6dB", "0dB", "-6dB"; `abnormal` becomes the label "anomaly".

MIMII has no train/test split, so one is assigned, deterministically, following the MIMII paper's protocol: for
each (machine, SNR, id) group, every abnormal clip and as many normal clips as there are abnormal ones form the
test set; the remaining normal clips are the training set. Which normals go to test is decided by a seeded shuffle
of the group's normal paths sorted by name (numpy's default generator seeded with `seed` and a CRC32 of
"machine/snr/id"), so a clip's split is the same on every machine and never depends on which other machines, SNRs
or ids were loaded. At most half of a group's normals go to test (this never binds on the
real MIMII data, which has far more normal than abnormal clips, but keeps tiny samples trainable).
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from offline.datasets.records import Clip

_SNR_FOLDER = re.compile(r"^(min|-|\+)?(\d+)_?dB(?:_(.+))?$", re.IGNORECASE)
_SNR_VALUE = re.compile(r"^(min|-|\+)?(\d+)(?:_?dB)?$", re.IGNORECASE)
_ID_FOLDER = re.compile(r"^id_\d+$")
_FILE = re.compile(r"^\d+\.wav$", re.IGNORECASE)
_LABELS = {"normal": "normal", "abnormal": "anomaly"}


def normalize_snr(text: str) -> str | None:
    """"6", "6dB", "6_dB", "+6dB" -> "6dB"; "-6", "min6dB" -> "-6dB"; None when it is not an SNR."""
    match = _SNR_VALUE.match(text.strip())
    if match is None:
        return None
    sign, value = match.group(1), int(match.group(2))
    negative = sign is not None and sign.lower() in ("min", "-") and value != 0
    return f"{'-' if negative else ''}{value}dB"


def _snr_folder(name: str) -> tuple[str, str | None] | None:
    """("6dB", "fan") for "6_dB_fan", ("-6dB", None) for "-6dB"; None when `name` is no SNR folder."""
    match = _SNR_FOLDER.match(name)
    if match is None:
        return None
    snr = normalize_snr(f"{match.group(1) or ''}{match.group(2)}dB")
    assert snr is not None  # the folder pattern only matches valid SNRs
    return snr, match.group(3)


def _subdirs(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]


def _layout(root: Path) -> str | None:
    """Which level of the MIMII tree `root` is: "dataset", "snr", "machines", "machine", or None."""
    children = _subdirs(root)
    has_machine_folders = any(_ID_FOLDER.match(g.name) for c in children for g in _subdirs(c))
    if _snr_folder(root.name) is not None and has_machine_folders:
        return "snr"
    if any(_snr_folder(c.name) is not None for c in children):
        return "dataset"
    if any(_ID_FOLDER.match(c.name) for c in children):
        return "machine"
    return "machines" if has_machine_folders else None


def looks_like_mimii(root: Path) -> bool:
    """True when `root` is some level of a MIMII tree (see the module docstring)."""
    return _layout(root) is not None


def clips_from_files(
    root: Path, files: list[Path], on_bad: Callable[[Path, str], None], seed: int = 0
) -> list[Clip]:
    """Turn the wav files under `root` into clips with the split rule above; unparsable files go to `on_bad`."""
    layout = _layout(root)
    if layout is None:
        raise ValueError(f"{root} is not a MIMII folder")
    root_snr = _snr_folder(root.name)
    groups: dict[tuple[str, str | None, str], dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for path in files:
        parts = path.relative_to(root).parts
        snr: str | None = None
        machine = root.name
        if layout == "dataset":
            if len(parts) != 5:
                on_bad(path, f"expected <snr>_<machine>/<machine>/id_XX/{{normal,abnormal}}/NNNNNNNN.wav under {root}")
                continue
            folder = _snr_folder(parts[0])
            if folder is None:
                on_bad(path, f"'{parts[0]}' is not an SNR folder such as 6_dB_fan, 0_dB_pump or -6_dB_valve")
                continue
            snr, folder_machine = folder
            if folder_machine is not None and folder_machine != parts[1]:
                on_bad(path, f"machine folder '{parts[1]}' inside '{parts[0]}' (expected '{folder_machine}')")
                continue
            machine, rest = parts[1], parts[2:]
        elif layout == "snr":
            assert root_snr is not None
            snr, folder_machine = root_snr
            if len(parts) != 4 or (folder_machine is not None and parts[0] != folder_machine):
                inner = folder_machine or "<machine>"
                on_bad(path, f"expected {inner}/id_XX/{{normal,abnormal}}/NNNNNNNN.wav under {root}")
                continue
            machine, rest = parts[0], parts[1:]
        elif layout == "machines":
            if len(parts) != 4:
                on_bad(path, f"expected <machine>/id_XX/{{normal,abnormal}}/NNNNNNNN.wav under {root}")
                continue
            machine, rest = parts[0], parts[1:]
        else:
            rest = parts
        if len(rest) != 3 or not _ID_FOLDER.match(rest[0]) or rest[1] not in _LABELS or not _FILE.match(rest[2]):
            on_bad(path, "expected id_XX/{normal,abnormal}/NNNNNNNN.wav at the end of the path")
            continue
        groups[(machine, snr, rest[0])][_LABELS[rest[1]]].append(path)
    return [clip for key, by_label in sorted(groups.items(), key=_group_order) for clip in _split(key, by_label, seed)]


def _group_order(item: tuple[tuple[str, str | None, str], object]) -> tuple[str, str, str]:
    machine, snr, id_ = item[0]
    return machine, snr or "", id_


def _split(key: tuple[str, str | None, str], by_label: dict[str, list[Path]], seed: int) -> list[Clip]:
    machine, snr, id_ = key
    normals = sorted(by_label.get("normal", []))
    anomalies = sorted(by_label.get("anomaly", []))
    n_test = min(len(anomalies), len(normals) // 2)
    rng = np.random.default_rng([seed, zlib.crc32(f"{machine}/{snr}/{id_}".encode())])
    test_normals = {normals[i] for i in rng.permutation(len(normals))[:n_test]}
    clips = [
        Clip(path=p, machine=machine, id=id_, split="test" if p in test_normals else "train", label="normal", snr=snr)
        for p in normals
    ]
    clips += [Clip(path=p, machine=machine, id=id_, split="test", label="anomaly", snr=snr) for p in anomalies]
    return clips
