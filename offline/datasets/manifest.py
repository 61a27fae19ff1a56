"""Manifest CSV: `path,machine,id,split,label` (+ optional `snr`), one clip per row.

For data in no standard layout. Relative paths are relative to the CSV's folder, so a dataset and its manifest
can move together. Every row is validated; a bad row is reported with its line number (through `on_bad`, which
the caller turns into an error or a counted skip), never guessed. An empty `label` means "unknown" and is
accepted only for test clips, like the DCASE evaluation set. Extra columns are ignored.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path
from typing import cast

from offline.datasets.dcase import SPLITS
from offline.datasets.mimii import normalize_snr
from offline.datasets.records import Clip, DatasetError, Label, Split

REQUIRED_COLUMNS = ("path", "machine", "id", "split", "label")
LABELS = ("normal", "anomaly")
_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


def _clip_id(text: str) -> str | None:
    """"id_00" stays; bare digits become "id_NN" so manifests match the DCASE naming; None when unusable."""
    if text.isdigit():
        return f"id_{int(text):02d}"
    return text if _ID.match(text) else None


def read_manifest(csv_path: Path, on_bad: Callable[[Path, str], None]) -> list[Clip]:
    """Read and validate a manifest. A missing column or an empty file is always an error (`DatasetError`);
    row problems (bad split/label/id/snr, missing audio file, duplicate path) go to `on_bad(csv_path, reason)`."""
    base = csv_path.parent
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise DatasetError(
                    f"{csv_path}: manifest lacks column(s) {', '.join(missing)} "
                    f"(needs {','.join(REQUIRED_COLUMNS)}; found {','.join(columns) or 'nothing'})"
                )
            reader.fieldnames = columns
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{csv_path}: not a UTF-8 text CSV ({exc})") from exc
    if not rows:
        raise DatasetError(f"{csv_path}: manifest has a header but no rows")

    clips: list[Clip] = []
    seen: dict[Path, int] = {}
    for line, row in rows:
        values = {k: (v or "").strip() for k, v in row.items() if k is not None}
        problem, clip = _parse_row(values, base)
        if clip is not None and clip.path in seen:
            problem, clip = f"{clip.path} is already listed on line {seen[clip.path]}", None
        if clip is None:
            on_bad(csv_path, f"line {line}: {problem}")
            continue
        seen[clip.path] = line
        clips.append(clip)
    return clips


def _parse_row(row: dict[str, str], base: Path) -> tuple[str, Clip | None]:
    """(problem, None) for a bad row, ("", clip) for a good one."""
    split, label, machine = row["split"], row["label"], row["machine"]
    if split not in SPLITS:
        return f"unknown split '{split}' (expected {' or '.join(SPLITS)})", None
    if label and label not in LABELS:
        return f"unknown label '{label}' (expected {' or '.join(LABELS)}, or empty for an unlabeled test clip)", None
    if not label and split != "test":
        return "empty label on a training clip (only test clips may be unlabeled)", None
    if not machine:
        return "empty machine", None
    clip_id = _clip_id(row["id"])
    if clip_id is None:
        return f"unusable id '{row['id']}' (expected e.g. id_00 or 0)", None
    snr = None
    if row.get("snr"):
        snr = normalize_snr(row["snr"])
        if snr is None:
            return f"unusable snr '{row['snr']}' (expected e.g. 6dB, 0dB, -6dB)", None
    if not row["path"]:
        return "empty path", None
    path = Path(row["path"]).expanduser()
    if not path.is_absolute():
        path = base / path
    if not path.is_file():
        return f"audio file {path} does not exist", None
    split_ = cast(Split, split)
    label_ = cast(Label, label) if label else None
    return "", Clip(path=path, machine=machine, id=clip_id, split=split_, label=label_, snr=snr)
