"""The one clip record that every dataset reader yields, so training and evaluation never care about layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Split = Literal["train", "test"]
Label = Literal["normal", "anomaly"]


class DatasetError(ValueError):
    """A dataset problem a user can fix (bad layout, unparsable name, unreadable file); the message names the file."""


@dataclass(frozen=True)
class Clip:
    """One recording: where it is and what it is. `snr` is None when the source does not say."""

    path: Path
    machine: str
    id: str  # "id_00" style, as in the DCASE file names
    split: Split
    label: Label | None  # None: not known (DCASE 2020 eval test clips ship without labels)
    snr: str | None = None  # e.g. "6dB", "0dB", "-6dB" for MIMII

    @property
    def is_anomaly(self) -> bool:
        return self.label == "anomaly"
