"""The bad recordings every consumer of audio must refuse clearly, as one table (the adversarial sweep of issue #9,
kept as tests): `load_wav` and the block reader (tests/offline/test_audio.py), `asd-offline score`
(tests/offline/test_score_cli.py) and the monitor's replays (tests/integration/test_daemon_errors.py) each run every
case, so a new case is covered by all of them and a fixed one stays fixed.

Each case writes one file for a consumer working at `sr` and names the words its error must contain besides the
file's path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from tests.helpers import machine_audio


@dataclass(frozen=True)
class BadAudio:
    name: str  # the case id, and the file's stem
    write: Callable[[Path, int], None]  # writes the file at a path, for a consumer at a sample rate
    words: str  # in the error besides the path; "{wrong_rate}" stands for twice the consumer's rate

    def make(self, folder: Path, sr: int) -> Path:
        path = folder / f"{self.name}.wav"
        self.write(path, sr)
        return path

    def error_words(self, sr: int) -> str:
        return self.words.format(wrong_rate=2 * sr)


def _float(samples: Callable[[int], np.ndarray], rate: Callable[[int], int] = lambda sr: sr):
    return lambda p, sr: sf.write(p, samples(sr), rate(sr), subtype="FLOAT")


def _with(value: float, at: int = 500) -> Callable[[int], np.ndarray]:
    def samples(sr: int) -> np.ndarray:
        x = machine_audio(1.0, 1, sr=sr)
        x[at : at + 3] = value
        return x

    return samples


def _truncated(keep: Callable[[int], int]) -> Callable[[Path, int], None]:
    def write(p: Path, sr: int) -> None:
        sf.write(p, machine_audio(1.0, 1, sr=sr), sr, subtype="PCM_16")
        data = p.read_bytes()
        p.write_bytes(data[: keep(len(data))])

    return write


CASES: list[BadAudio] = [
    BadAudio("corrupt", lambda p, sr: p.write_bytes(b"RIFF\xff\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\x00" * 7),
             "truncated or malformed"),
    BadAudio("not_audio", lambda p, sr: p.write_text("sensor,value\n1,2\n"), "not a readable audio file"),
    BadAudio("empty", lambda p, sr: p.write_bytes(b""), "not a readable audio file"),
    BadAudio("truncated_header", _truncated(lambda n: 30), "truncated or malformed"),
    BadAudio("truncated_data", _truncated(lambda n: n // 2), "truncated: the header declares"),  # header: all frames
    BadAudio("no_samples", _float(lambda sr: np.zeros(0, dtype=np.float32)), "no samples"),
    BadAudio("wrong_rate", _float(lambda sr: machine_audio(1.0, 1, sr=2 * sr), lambda sr: 2 * sr),
             "{wrong_rate} Hz"),
    BadAudio("nan", _float(_with(np.nan)), "NaN"),
    BadAudio("inf", _float(_with(np.inf)), "NaN/inf"),
    BadAudio("huge", _float(_with(3e19, at=800)), "not audio in [-1, 1]"),  # its square overflows float32
]
