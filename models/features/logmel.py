"""Log-mel features in torch, computed incrementally for any number of streams at once.

The whole extractor is one state machine (`LogMelBatchStream`): per stream it keeps the samples that do not yet
fill a frame and the last `context - 1` log-mel frames for context stacking. Offline extraction is defined as a
stream fed the whole clip, so the monitor and the trainer cannot compute different features.

Framing follows `torch.stft(center=False)`: frame i covers samples [i*hop, i*hop + n_fft), a periodic Hann
window, a one-sided FFT. We frame by hand and call `torch.fft.rfft` on the stacked frames (which is what
`torch.stft` does inside) because frames from many streams, each with its own remainder, can then go through one
FFT + one mel matmul. dB is `20/power * log10(mel + eps)` as in the DCASE 2020 baseline.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from models.device import select_device

EPS = sys.float_info.epsilon
_ROW_BLOCK = 16


class FeatureInputError(ValueError):
    """Audio a feature stream cannot take (wrong shape, NaN/inf); the message says what was wrong."""


@dataclass(frozen=True)
class LogMelConfig:
    """Hyper-parameters of the log-mel front end; serialisable to JSON and stored in every bundle."""

    kind: ClassVar[str] = "logmel"

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    power: float = 2.0
    fmin: float = 0.0
    fmax: float | None = None
    context: int = 1  # consecutive frames concatenated into one vector (DCASE baseline: 5 -> 640 dims)

    def __post_init__(self) -> None:
        if self.n_fft <= 0 or self.hop_length <= 0 or self.n_mels <= 0 or self.context <= 0:
            raise ValueError(f"n_fft, hop_length, n_mels and context must be positive: {self}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")

    @property
    def dim(self) -> int:
        """Length of one output vector."""
        return self.n_mels * self.context

    def n_frames(self, n_samples: int) -> int:
        """How many whole frames `n_samples` hold (`center=False`: frame i is [i*hop, i*hop + n_fft))."""
        return 0 if n_samples < self.n_fft else (n_samples - self.n_fft) // self.hop_length + 1

    def n_vectors(self, n_samples: int) -> int:
        """How many vectors a clip of `n_samples` yields (0 when it is shorter than one context)."""
        return max(0, self.n_frames(n_samples) - self.context + 1)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LogMelConfig":
        d = dict(d)
        kind = d.pop("kind", cls.kind)
        if kind != cls.kind:
            raise ValueError(f"not a {cls.kind} feature config: kind={kind!r}")
        return cls(**d)

    def stream(self, device: str | torch.device | None = "cpu") -> "LogMelStream":
        """A single incremental stream."""
        return LogMelStream(self, device)

    def batch_stream(self, n_streams: int, device: str | torch.device | None = "cpu") -> "LogMelBatchStream":
        """`n_streams` independent streams whose new frames are computed together in one call."""
        return LogMelBatchStream(self, n_streams, device)

    def extract(self, wav: np.ndarray | torch.Tensor, device: str | torch.device | None = "cpu") -> torch.Tensor:
        """Offline features of one clip, [n_vectors, dim]: by definition one stream fed the whole clip."""
        s = self.stream(device)
        out = s.accept(wav)
        rest = s.flush()
        return out if rest.shape[0] == 0 else torch.cat([out, rest])

    @property
    def min_samples(self) -> int:
        """The shortest clip that yields one vector."""
        return self.n_fft + (self.context - 1) * self.hop_length

    def extract_batch(
        self,
        wavs: Sequence[np.ndarray] | np.ndarray | torch.Tensor,
        device: str | torch.device | None = "cpu",
        group: int = 64,
    ) -> list[torch.Tensor]:
        """Offline features of many clips (any lengths), equal to `extract` on each, `group` clips per FFT/matmul
        call (64 bounds the frame matrix to ~100 MB for 10 s clips).

        A clip too short for one vector is an error naming it: a clip without a score would silently misalign
        scores and labels downstream.
        """
        for i, w in enumerate(wavs):
            n = int(np.shape(w)[0]) if np.ndim(w) else 0
            if n < self.min_samples:
                raise FeatureInputError(
                    f"clip {i}: {n} samples is shorter than one feature vector ({self.min_samples} samples)"
                )
        out: list[torch.Tensor] = []
        for start in range(0, len(wavs), group):
            part = list(wavs[start : start + group])
            out += self.batch_stream(len(part), device).accept(part)
        return out


class _Kernel:
    """Window and mel filterbank of one config on one device, built once, and the arithmetic that uses them.

    The Slaney filterbank is banded: each FFT bin feeds at most two triangles. Instead of a dense
    [n_freq, n_mels] matmul we project each block of 16 consecutive filters from the contiguous bin range it
    covers, a quarter of the work or less for the usual sizes, with the same sums.
    """

    FILTERS_PER_BLOCK = 16
    FRAMES_PER_BLOCK = 512  # a multiple of _ROW_BLOCK, so every block keeps a whole number of row blocks

    def __init__(self, cfg: LogMelConfig, device: torch.device) -> None:
        import librosa

        self.cfg, self.device = cfg, device
        self.window = torch.hann_window(cfg.n_fft, periodic=True, dtype=torch.float32, device=device)
        mel = librosa.filters.mel(
            sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax
        ).astype(np.float32)
        self.blocks: list[tuple[int, int, int, torch.Tensor | None]] = []  # (first filter, bin lo, bin hi, weights)
        for f0 in range(0, cfg.n_mels, self.FILTERS_PER_BLOCK):
            sub = mel[f0 : f0 + self.FILTERS_PER_BLOCK]
            used = np.flatnonzero(sub.any(axis=0))
            if used.size == 0:  # filters narrower than a bin at very low frequencies: all-zero, as in librosa
                self.blocks.append((f0, 0, 0, None))
                continue
            lo, hi = int(used[0]), int(used[-1]) + 1
            weights = torch.from_numpy(np.ascontiguousarray(sub[:, lo:hi].T)).to(device)  # [hi-lo, n_filters]
            self.blocks.append((f0, lo, hi, weights))
        self.scale = 20.0 / cfg.power

    def frames(self, signals: Sequence[torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Windowed frames of 1-D CPU signals, all in one [rows, n_fft] matrix on the device, and the number of
        real frames in it (the rest are zero rows).

        Each signal yields `cfg.n_frames` frames. The row count is a multiple of 16:
        BLAS takes another code path for a row count that is not a multiple of its micro-kernel, which changes the
        last bit of a few values, so padding keeps every frame's features independent of how many frames were
        computed with it (the streaming == offline guarantee). On the CPU the window is applied while copying the
        frames out of the signal (one pass); for CUDA the raw frames go through pinned memory and are windowed there.
        """
        n_fft, hop = self.cfg.n_fft, self.cfg.hop_length
        views = [x.as_strided((self.cfg.n_frames(x.shape[0]), n_fft), (hop, 1)) for x in signals]
        total = sum(v.shape[0] for v in views)
        rows = total + (-total) % _ROW_BLOCK
        cuda = self.device.type == "cuda"
        out = torch.empty((rows, n_fft), dtype=torch.float32, pin_memory=cuda)
        r = 0
        for v in views:
            if cuda:
                out[r : r + v.shape[0]].copy_(v)
            else:
                torch.mul(v, self.window, out=out[r : r + v.shape[0]])
            r += v.shape[0]
        out[total:].zero_()
        if cuda:
            out = out.to(self.device, non_blocking=True).mul_(self.window)
        return out, total

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """[rows, n_fft] windowed frames (rows a multiple of 16) -> [rows, n_mels] dB, in blocks of
        `FRAMES_PER_BLOCK`: the intermediates of one block (spectrum, power) stay in cache, which made a
        256-stream batch two to three times faster than one big call on the 2-core CPU; 512 keeps a 10 s clip
        (313 frames) in one pass. `frames` is consumed: its memory is reused for the power spectrum."""
        if frames.shape[0] <= self.FRAMES_PER_BLOCK:
            return self._block(frames)
        return torch.cat([self._block(part) for part in torch.split(frames, self.FRAMES_PER_BLOCK)])

    def _block(self, frames: torch.Tensor) -> torch.Tensor:
        spec = torch.fft.rfft(frames, dim=-1)
        if self.cfg.power == 2.0:
            # |X|^2 as re^2 + im^2 from the interleaved view: two passes that leave a contiguous result, which the
            # slices of the mel projection need (a strided one costs a copy per block). The squares overwrite the
            # spectrum and the sum the frames, both dead by then: a smaller working set stays in cache.
            sq = torch.view_as_real(spec).square_()
            pw = torch.add(sq[..., 0], sq[..., 1], out=frames.view(-1)[: spec.numel()].view(spec.shape))
        else:
            pw = spec.abs().pow(self.cfg.power)
        mel = pw.new_empty((pw.shape[0], self.cfg.n_mels))
        for f0, lo, hi, weights in self.blocks:
            if weights is None:
                mel[:, f0 : f0 + self.FILTERS_PER_BLOCK] = 0.0
            else:  # straight into the output's columns: BLAS writes a row-strided result without a temporary
                torch.mm(pw[:, lo:hi], weights, out=mel[:, f0 : f0 + weights.shape[1]])
        # dB over all rows, padding included, so the vectorised log10 sees the same layout whatever the row count
        return mel.add_(EPS).log10_().mul_(self.scale)


@lru_cache(maxsize=32)
def _kernel(cfg: LogMelConfig, device: str) -> _Kernel:
    return _Kernel(cfg, torch.device(device))


def signals_to_logmel(signals: Sequence[torch.Tensor], cfg: LogMelConfig, device: torch.device) -> torch.Tensor:
    """Log-mel dB [sum of frames, n_mels] of the complete frames of 1-D float32 CPU signals, stacked in order.

    The only place the numbers are computed; every signal must hold at least one frame.
    """
    kernel = _kernel(cfg, str(device))
    frames, n = kernel.frames(signals)
    return kernel(frames)[:n]


@dataclass
class _StreamState:
    remainder: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    context: torch.Tensor | None = None  # last (context-1) log-mel frames


def _as_mono_float32(chunk: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(chunk, torch.Tensor):
        chunk = chunk.detach().cpu().numpy()
    arr = np.asarray(chunk)
    if arr.ndim != 1:
        raise FeatureInputError(f"expected mono audio as a 1-D array, got shape {arr.shape}")
    if arr.dtype.kind != "f":
        raise FeatureInputError(f"expected floating-point samples in [-1, 1], got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    # a dot product is the cheapest full pass that carries any NaN/inf into its result; only when it is not finite
    # (which a huge but finite sample can also cause) is the exact count needed
    with np.errstate(over="ignore"):
        energy = np.dot(arr, arr)
    if arr.size and not np.isfinite(energy):
        bad = int((~np.isfinite(arr)).sum())
        if bad:
            raise FeatureInputError(f"audio contains {bad} NaN/inf samples")
    return arr


class LogMelBatchStream:
    """Incremental log-mel for `n_streams` independent streams; only frames completed by new samples are computed.

    `accept(chunks)` takes one chunk (or None) per stream and returns each stream's new vectors, [k_i, dim].
    """

    def __init__(self, cfg: LogMelConfig, n_streams: int, device: str | torch.device | None = "cpu") -> None:
        self.cfg = cfg
        self.device = select_device(device)
        self._states = [_StreamState() for _ in range(n_streams)]

    def __len__(self) -> int:
        return len(self._states)

    def add_stream(self) -> int:
        self._states.append(_StreamState())
        return len(self._states) - 1

    def reset(self, index: int) -> None:
        """Forget a stream's partial frame and context (after a gap in its audio, e.g. a device came back)."""
        self._states[index] = _StreamState()

    def pending_samples(self, index: int) -> int:
        return int(self._states[index].remainder.size)

    def accept(self, chunks: Sequence[np.ndarray | torch.Tensor | None]) -> list[torch.Tensor]:
        cfg = self.cfg
        if len(chunks) != len(self._states):
            raise ValueError(f"got {len(chunks)} chunks for {len(self._states)} streams")
        signals: list[torch.Tensor] = []
        counts: list[int] = []
        for state, chunk in zip(self._states, chunks):
            if chunk is None:
                counts.append(0)
                continue
            buf = _as_mono_float32(chunk)
            if state.remainder.size:
                buf = np.concatenate([state.remainder, buf])
            n = cfg.n_frames(buf.size)
            if n:
                # torch shares the memory and only reads it; a read-only array is copied to keep torch from warning
                signals.append(torch.from_numpy(buf if buf.flags.writeable else buf.copy()))
            state.remainder = buf[n * cfg.hop_length :].copy()
            counts.append(n)

        empty = self._empty()  # one zero-row tensor serves every stream without new vectors
        if not signals:
            return [empty] * len(self._states)
        logmel = signals_to_logmel(signals, cfg, self.device)
        parts = [logmel] if len(counts) == 1 else torch.split(logmel, counts)
        return [self._stack_context(s, part) if part.shape[0] else empty for s, part in zip(self._states, parts)]

    def _empty(self) -> torch.Tensor:
        return torch.zeros((0, self.cfg.dim), dtype=torch.float32, device=self.device)

    def _stack_context(self, state: _StreamState, frames: torch.Tensor) -> torch.Tensor:
        c = self.cfg.context
        if c == 1:
            return frames
        full = frames if state.context is None else torch.cat([state.context, frames])
        state.context = full[-(c - 1) :].clone()
        if full.shape[0] < c:
            return torch.zeros((0, self.cfg.dim), dtype=frames.dtype, device=frames.device)
        # [n, n_mels, c] -> [n, c, n_mels] -> [n, c * n_mels]: frame-major, as the DCASE baseline lays it out
        return full.unfold(0, c, 1).transpose(1, 2).reshape(-1, self.cfg.dim)

    def flush(self) -> list[torch.Tensor]:
        """End all streams. With `center=False` a partial frame yields nothing; state is cleared for reuse."""
        self._states = [_StreamState() for _ in self._states]
        return [self._empty()] * len(self._states)


class LogMelStream:
    """One stream: `accept(chunk) -> [k, dim]` new vectors, `flush()` ends it."""

    def __init__(self, cfg: LogMelConfig, device: str | torch.device | None = "cpu") -> None:
        self._batch = LogMelBatchStream(cfg, 1, device)
        self.cfg = cfg

    def accept(self, chunk: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self._batch.accept([chunk])[0]

    def flush(self) -> torch.Tensor:
        return self._batch.flush()[0]
