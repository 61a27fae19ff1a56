"""The DCASE 2020 Task 2 folder layout: `<machine>/{train,test}/{normal,anomaly}_id_XX_NNNNNNNN.wav`.

The development set, the additional training set and the evaluation test set all use it; evaluation test files
carry no label (`id_XX_NNNNNNNN.wav`) and become clips with `label=None`. The root may be the dataset root (one
folder per machine type) or a single machine folder. The label comes only from the file name, never from a guess:
a name that does not parse is reported through `on_bad`, which the caller turns into an error or a counted skip.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import cast

from offline.datasets.records import Clip, Label, Split

SPLITS = ("train", "test")
_NAME = re.compile(r"^(?:(normal|anomaly)_)?(id_\d+)_(\d+)\.wav$", re.IGNORECASE)


def _is_machine_folder(path: Path) -> bool:
    return any((path / split).is_dir() for split in SPLITS)


def looks_like_dcase(root: Path) -> bool:
    """True when `root` is a machine folder (has train/ or test/) or holds such folders."""
    if _is_machine_folder(root):
        return True
    return any(child.is_dir() and _is_machine_folder(child) for child in root.iterdir())


def clips_from_files(root: Path, files: list[Path], on_bad: Callable[[Path, str], None]) -> list[Clip]:
    """Turn the wav files found under `root` into clips; every file either parses or goes to `on_bad`."""
    single_machine = _is_machine_folder(root)
    clips = []
    for path in files:
        parts = path.relative_to(root).parts
        if single_machine:
            expected = "train/<name>.wav or test/<name>.wav"
            machine, rest = root.name, parts
        else:
            expected = "<machine>/train/<name>.wav or <machine>/test/<name>.wav"
            machine, rest = (parts[0], parts[1:]) if len(parts) > 1 else ("", parts)
        if len(rest) != 2 or rest[0] not in SPLITS:
            on_bad(path, f"not where the DCASE 2020 layout puts clips (expected {expected} under {root})")
            continue
        split, name = rest
        match = _NAME.match(name)
        if match is None:
            on_bad(path, "file name is not {normal,anomaly}_id_XX_NNNNNNNN.wav nor id_XX_NNNNNNNN.wav")
            continue
        label = cast(Label, match.group(1).lower()) if match.group(1) else None
        if label is None and split == "train":
            on_bad(path, "a training clip without normal_/anomaly_ in its name: its label is unknown")
            continue
        clips.append(Clip(path=path, machine=machine, id=match.group(2).lower(), split=cast(Split, split), label=label))
    return clips
