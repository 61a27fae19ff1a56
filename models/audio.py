"""Audio file loading with validation, shared by training, evaluation and the monitor's wav replay.

libsndfile is forgiving in ways that would silently corrupt a dataset: a file whose header promises more samples
than it holds is read up to where it stops, a float wav may carry NaN, a multi-channel file is not mono. Every such
case here is an `AudioError` whose message names the file, so a bad clip stops a run instead of skewing it.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf

from models.levels import MAX_SAMPLE

_UNKNOWN_DATA_SIZE = 0xFFFFFFFF  # streaming writers leave this in the header when the length is not known yet


class AudioError(ValueError):
    """An audio file that cannot be used as asked (unreadable, truncated, wrong rate/channels, empty, NaN/inf)."""


class WavReader:
    """One channel of a validated audio file, read whole (`read`) or block by block (`blocks`), so that a replay's
    memory does not grow with the file's length.

    Opening checks everything the header can tell (the file exists, is not truncated, is readable, holds samples,
    has the channel, has the rate); NaN/inf can only be found in the samples, so `blocks` checks each block as it
    comes and names the second where it found one.
    """

    def __init__(self, path: str | os.PathLike[str], sample_rate: int | None = None, channel: int | None = 0, *,
                 resample: bool = False) -> None:
        self.path = path = Path(path)
        if sample_rate is not None and sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if path.is_dir():
            raise AudioError(f"{path}: a folder, not an audio file")
        if not path.is_file():
            raise AudioError(f"{path}: no such file")
        _check_wav_not_truncated(path)
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
            raise AudioError(f"{path}: not a readable audio file ({exc})") from exc
        if channel is None:
            if info.channels != 1:
                raise AudioError(f"{path}: expected a mono file, it has {info.channels} channels "
                                 "(pick one with channel=k)")
            channel = 0
        elif not 0 <= channel < info.channels:
            raise AudioError(f"{path}: channel {channel} requested, the file has {info.channels} channel(s)")
        if info.frames == 0:
            raise AudioError(f"{path}: the file holds no samples")
        if sample_rate is not None and info.samplerate != sample_rate and not resample:
            raise AudioError(
                f"{path}: sample rate is {info.samplerate} Hz, {sample_rate} Hz is required (resample=True converts it)"
            )
        self.channel, self.file_rate, self.frames = channel, int(info.samplerate), int(info.frames)
        self.channels = int(info.channels)
        self.sample_rate = int(sample_rate or info.samplerate)

    def read(self) -> np.ndarray:
        """All samples as float32, resampled to `sample_rate` where the reader was opened with `resample`."""
        try:
            data, _ = sf.read(self.path, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
            raise AudioError(f"{self.path}: not a readable audio file ({exc})") from exc
        x = self._checked(np.ascontiguousarray(data[:, self.channel]), 0)
        return x if self.file_rate == self.sample_rate else _resample(x, self.file_rate, self.sample_rate)

    def blocks(self, size: int, read_frames: int = 0) -> Iterator[np.ndarray]:
        """Consecutive float32 blocks of `size` samples (the last may be shorter), at the file's own rate, decoded
        `max(size, read_frames)` frames at a time: one libsndfile call costs about as much for a second of audio
        as for a tenth, and hundreds of replays at 0.25 s blocks spent a third of a core on the calls alone."""
        chunk = max(size, read_frames)
        start = 0
        try:
            with sf.SoundFile(self.path) as f:
                while True:
                    data = f.read(chunk, dtype="float32", always_2d=f.channels > 1)
                    if data.shape[0] == 0:
                        return
                    x = self._checked(data if data.ndim == 1 else np.ascontiguousarray(data[:, self.channel]),
                                      start)
                    for i in range(0, x.size, size):
                        yield x[i : i + size]
                    start += x.size
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(f"{self.path}: read failed ({exc})") from exc

    def _checked(self, x: np.ndarray, start: int) -> np.ndarray:
        """Samples must be finite and near full scale (`MAX_SAMPLE`); the error says where the first bad one is."""
        peak = float(np.abs(x).max()) if x.size else 0.0
        if not np.isfinite(peak):
            bad = int(np.count_nonzero(~np.isfinite(x)))
            at = (start + int(np.flatnonzero(~np.isfinite(x))[0])) / self.file_rate
            raise AudioError(f"{self.path}: {bad} NaN/inf sample(s) in channel {self.channel}, the first at {at:.3f} s")
        if peak > MAX_SAMPLE:
            at = (start + int(np.flatnonzero(np.abs(x) > MAX_SAMPLE)[0])) / self.file_rate
            raise AudioError(f"{self.path}: samples up to {peak:.3g} in channel {self.channel}, the first at "
                             f"{at:.3f} s: not audio in [-1, 1]")
        return x


def load_wav(
    path: str | os.PathLike[str],
    sample_rate: int | None = None,
    channel: int | None = 0,
    *,
    resample: bool = False,
) -> tuple[np.ndarray, int]:
    """Read one channel of an audio file as float32 in [-1, 1] and return `(samples, sample_rate)`.

    `sample_rate`: the rate the caller needs. A file at another rate is an error unless `resample=True`, in which
    case it is converted with `scipy.signal.resample_poly` (a polyphase filter, exact for integer ratios).
    `channel`: which channel to take (MIMII originals have 8; the DCASE 2020 data uses channel 0). `None` demands a
    mono file, for callers that must not silently drop channels. Long files: `WavReader(...).blocks(n)`.
    """
    reader = WavReader(path, sample_rate, channel, resample=resample)
    return reader.read(), reader.sample_rate


def _resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    from scipy.signal import resample_poly

    g = math.gcd(rate_in, rate_out)
    return resample_poly(x, rate_out // g, rate_in // g).astype(np.float32)


def _check_wav_not_truncated(path: Path) -> None:
    """Compare the RIFF `data` chunk's declared size with the bytes the file really holds.

    libsndfile reads a truncated wav up to its end without an error (the cut-off tail simply vanishes), so a copy
    interrupted mid-way would train on a shorter clip. Non-RIFF files are left to libsndfile.
    """
    file_size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return
        endian = "<" if head[:4] == b"RIFF" else ">"
        pos = 12
        while pos + 8 <= file_size:
            f.seek(pos)
            chunk_id, size = struct.unpack(endian + "4sI", f.read(8))
            if chunk_id == b"data":
                available = file_size - pos - 8
                if size != _UNKNOWN_DATA_SIZE and size > available:
                    raise AudioError(
                        f"{path}: truncated: the header declares {size} bytes of audio, the file holds {available}"
                    )
                return
            pos += 8 + size + (size & 1)  # chunks are padded to an even length
    raise AudioError(f"{path}: truncated or malformed wav: no complete 'data' chunk")


def level_dbfs(x: np.ndarray) -> float:
    """RMS level in dB relative to full scale (amplitude 1.0): a full-scale square wave is 0, a full-scale sine
    about -3.01. An empty or all-zero signal has no level: -inf. Computed in float64 so int-like peaks do not
    overflow."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return float("-inf")
    ms = float(np.mean(np.square(x)))
    return 10.0 * math.log10(ms) if ms > 0.0 else float("-inf")


def is_silent(x: np.ndarray, floor_dbfs: float = -90.0) -> bool:
    """True when the RMS level is at or below `floor_dbfs`: a dead microphone or a muted replay, which the monitor
    reports instead of scoring (silence is not 'normal machine sound')."""
    return level_dbfs(x) <= floor_dbfs
