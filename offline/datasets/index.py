"""`load_clips`: one entry point for every dataset source `--data` accepts, and `summarize` for logs and bundles.

The layout is detected, not configured: a `.csv` file is a manifest; a folder is DCASE 2020 (`train/`/`test/`
folders) or MIMII (SNR / `id_XX` folders). Every `.wav` under a folder must fit its layout; folders and files
whose name starts with "." are ignored (download staging, editor and notebook droppings). A file that does not
fit is an error naming it, or with `lenient=True` a logged and counted skip: a clip never gets a guessed label.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from offline.datasets import dcase, manifest, mimii
from offline.datasets.records import Clip, DatasetError

log = logging.getLogger(__name__)
_EXAMPLES = 5  # skipped files named in the summary warning; the rest are logged at debug level


class _BadFiles:
    """The policy for files that do not parse: raise at once (strict), or collect, count and report (lenient)."""

    def __init__(self, lenient: bool) -> None:
        self.lenient = lenient
        self.skipped: list[str] = []

    def __call__(self, path: Path, reason: str) -> None:
        message = f"{path}: {reason}"
        if not self.lenient:
            raise DatasetError(message + " (lenient mode skips such files)")
        log.debug("skipping %s", message)
        self.skipped.append(message)

    def report(self, source: Path) -> None:
        if self.skipped:
            log.warning(
                "%s: skipped %d file(s)/row(s) that do not parse, e.g.:\n  %s",
                source, len(self.skipped), "\n  ".join(self.skipped[:_EXAMPLES]),
            )


def _wav_files(root: Path) -> list[Path]:
    """All .wav files under `root`, skipping hidden folders and files, in a stable order."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder, n) for n in names if n.lower().endswith(".wav") and not n.startswith(".")]
    return sorted(found)


def _read_folder(root: Path, on_bad: _BadFiles) -> list[Clip]:
    files = _wav_files(root)
    if not files:
        raise DatasetError(f"{root}: no .wav files in this folder or below it")
    is_dcase, is_mimii = dcase.looks_like_dcase(root), mimii.looks_like_mimii(root)
    if is_dcase and is_mimii:
        raise DatasetError(
            f"{root}: holds both DCASE (train/, test/) and MIMII (SNR or id_XX) folders; point --data at one of them"
        )
    if is_dcase:
        return dcase.clips_from_files(root, files, on_bad)
    if is_mimii:
        return mimii.clips_from_files(root, files, on_bad)
    raise DatasetError(
        f"{root}: neither the DCASE 2020 layout (<machine>/{{train,test}}/*.wav) nor the MIMII layout "
        f"(<snr>_<machine>/<machine>/id_XX/{{normal,abnormal}}/*.wav); for other data write a manifest CSV "
        f"with columns {','.join(manifest.REQUIRED_COLUMNS)}"
    )


def _sort_key(clip: Clip) -> tuple[str, str, str, str, str]:
    return clip.machine, clip.snr or "", clip.id, clip.split, str(clip.path)


def load_clips(
    root_or_manifest: str | os.PathLike[str], machine: str | None = None, lenient: bool = False
) -> list[Clip]:
    """Every clip of a dataset root or manifest CSV (optionally one machine type), sorted by machine, SNR, id,
    split and path. Raises `DatasetError` naming the file or folder for anything that does not fit."""
    source = Path(root_or_manifest)
    if not source.exists():
        raise DatasetError(f"{source}: no such file or folder")
    on_bad = _BadFiles(lenient)
    if source.is_dir():
        clips = _read_folder(source, on_bad)
    elif source.suffix.lower() == ".csv":
        clips = manifest.read_manifest(source, on_bad)
    else:
        raise DatasetError(f"{source}: not a dataset folder nor a manifest .csv")
    on_bad.report(source)
    if machine is not None:
        available = sorted({c.machine for c in clips})
        clips = [c for c in clips if c.machine == machine]
        if not clips:
            raise DatasetError(f"{source}: no clips of machine '{machine}' (found: {', '.join(available) or 'none'})")
    if not clips:
        raise DatasetError(f"{source}: no usable clips ({len(on_bad.skipped)} skipped)")
    return sorted(clips, key=_sort_key)


def _split_label_counts(clips: list[Clip]) -> dict[str, dict[str, int]]:
    counts = Counter((c.split, c.label or "unlabeled") for c in clips)
    out: dict[str, dict[str, int]] = {}
    for (split, label), n in sorted(counts.items()):
        out.setdefault(split, {})[label] = n
    return out


def summarize(clips: list[Clip]) -> dict[str, Any]:
    """Counts for logs and bundle metadata (JSON-ready, keys sorted):

    `{"clips": N, "splits": {split: {label: n}}, "machines": {machine: {"clips": n, "splits": {...},
    "snr": {snr: n}, "ids": {id: {split: {label: n}}}}}}`; unlabeled clips count under "unlabeled", and "snr"
    is empty when the source does not give one.
    """
    machines: dict[str, Any] = {}
    for name in sorted({c.machine for c in clips}):
        mine = [c for c in clips if c.machine == name]
        machines[name] = {
            "clips": len(mine),
            "splits": _split_label_counts(mine),
            "snr": dict(sorted(Counter(c.snr for c in mine if c.snr is not None).items())),
            "ids": {i: _split_label_counts([c for c in mine if c.id == i]) for i in sorted({c.id for c in mine})},
        }
    return {"clips": len(clips), "splits": _split_label_counts(clips), "machines": machines}
