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

import numpy as np
import soundfile as sf

_UNKNOWN_DATA_SIZE = 0xFFFFFFFF  # streaming writers leave this in the header when the length is not known yet


class AudioError(ValueError):
    """An audio file that cannot be used as asked (unreadable, truncated, wrong rate/channels, empty, NaN/inf)."""


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
    mono file, for callers that must not silently drop channels.
    """
    path = Path(path)
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    _check_wav_not_truncated(path)
    try:
        data, file_rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({exc})") from exc

    n_frames, n_channels = data.shape
    if channel is None:
        if n_channels != 1:
            raise AudioError(f"{path}: expected a mono file, it has {n_channels} channels (pick one with channel=k)")
        channel = 0
    elif not 0 <= channel < n_channels:
        raise AudioError(f"{path}: channel {channel} requested, the file has {n_channels} channel(s)")
    if n_frames == 0:
        raise AudioError(f"{path}: the file holds no samples")
    x = np.ascontiguousarray(data[:, channel])
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise AudioError(f"{path}: {bad} NaN/inf sample(s) in channel {channel}")

    if sample_rate is not None and file_rate != sample_rate:
        if not resample:
            raise AudioError(
                f"{path}: sample rate is {file_rate} Hz, {sample_rate} Hz is required (resample=True converts it)"
            )
        x = _resample(x, file_rate, sample_rate)
        file_rate = sample_rate
    return x, int(file_rate)


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
