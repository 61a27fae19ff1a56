"""The feature protocol, its registry, and the streaming machinery every kind shares.

A feature kind is a frozen dataclass (`FeatureConfig`) registered by `kind`; its JSON form (`to_dict`) is what a
bundle stores and `feature_from_dict` rebuilds. Every kind computes features through one object, its batch stream:
`batch_stream(n_streams, device).accept(chunks)` takes one chunk (or None) per stream and returns each stream's new
vectors `[k_i, dim]`; `flush()` ends the streams. Offline extraction is *defined* as one stream fed the whole clip
and flushed, so streaming and offline cannot compute different numbers.

Three families of kinds share that protocol:
- `FramedFeature`: frame i covers samples [i*frame_hop, i*frame_hop + frame_length) (`center=False`); a per-frame
  computer (`FrameComputer`, kaldi-native-fbank's design) turns a matrix of windowed frames into frame vectors, and
  `context` consecutive frames are stacked into one vector. The leftover samples, framing, row padding and context
  stacking are written once, here (`FramedBatchStream`).
- `WindowFeature` (`window_level = True`): one vector needs a whole window (modulation spectra, clip statistics).
  The stream collects samples and computes at `flush()`; the stream scorer gives such kinds each window's samples.
- pre-computed vectors (`input_kind = "vectors"`): rows of numbers instead of audio, see `vectors.py`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from functools import lru_cache
from typing import Any, Callable, ClassVar, Literal, Sequence, TypeVar

import numpy as np
import torch

from models.device import select_device
from models.registry import Registry

ROW_BLOCK = 16  # frame matrices are padded with zero rows to a multiple of this (see FrameComputer.frames)
CLIP_GROUP = 64  # clips per batched offline call: bounds the frame matrix to ~100 MB for 10 s log-mel clips

# kind -> class; filled by `@register_feature` as `models.features` imports each module
FEATURES = Registry("feature kind", key="kind")
register_feature = FEATURES.register

F = TypeVar("F", bound="FeatureConfig")


class FeatureInputError(ValueError):
    """Input a feature stream cannot take (wrong shape, NaN/inf, too short); the message says what was wrong."""


def feature_from_dict(d: dict[str, Any]) -> "FeatureConfig":
    """Rebuild a feature config from its JSON form (as stored in a bundle)."""
    kind = d.get("kind") if isinstance(d, dict) else None
    return FEATURES.lookup(str(kind)).from_dict(d)


def as_mono_float32(chunk: np.ndarray | torch.Tensor) -> np.ndarray:
    """A 1-D float32 view of audio, refusing other shapes, integer samples and NaN/inf."""
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


@dataclasses.dataclass(frozen=True)
class FeatureConfig(ABC):
    """Hyper-parameters of one feature kind. Subclasses are frozen dataclasses decorated with `@register_feature`.

    Units: `hop_samples` is the distance between consecutive vectors and `span_samples` the audio one vector
    covers, both in input samples (rows, for pre-computed vectors); the monitor derives window and hop counts
    from them and time-stamps windows with them.
    """

    kind: ClassVar[str]
    input_kind: ClassVar[Literal["audio", "vectors"]] = "audio"
    window_level: ClassVar[bool] = False  # True: one vector needs a whole window of audio

    sample_rate: int = 16000

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")

    def _check_positive(self, *names: str) -> None:
        """ValueError naming the first of these settings that is not a positive integer (bools refused)."""
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{self.kind}: {name} must be a positive integer, got {value!r}")

    # -- the protocol -----------------------------------------------------------------------------------------------

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of one output vector."""

    @property
    @abstractmethod
    def hop_samples(self) -> int:
        """Samples between the starts of consecutive vectors."""

    @property
    @abstractmethod
    def span_samples(self) -> int:
        """Samples one vector covers: vector j of a stream covers [j*hop_samples, j*hop_samples + span_samples)."""

    @abstractmethod
    def n_vectors(self, n_samples: int) -> int:
        """How many vectors a clip of `n_samples` yields offline (0 when too short)."""

    @abstractmethod
    def batch_stream(self, n_streams: int, device: str | torch.device | None = "cpu") -> "BatchStream":
        """`n_streams` independent streams whose new vectors are computed together in one call."""

    # -- JSON -------------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls: type[F], d: dict[str, Any]) -> F:
        d = dict(d)
        kind = d.pop("kind", cls.kind)
        if kind != cls.kind:
            raise ValueError(f"not a {cls.kind} feature config: kind={kind!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{cls.kind}: unknown feature setting(s) {unknown}; valid: {sorted(names)}")
        return cls(**d)

    # -- offline = one stream fed the whole clip ----------------------------------------------------------------------

    @property
    def min_samples(self) -> int:
        """The shortest input that yields one vector."""
        return self.span_samples

    def stream(self, device: str | torch.device | None = "cpu") -> "SingleStream":
        """A single incremental stream."""
        return SingleStream(self.batch_stream(1, device))

    def extract(self, x: np.ndarray | torch.Tensor, device: str | torch.device | None = "cpu") -> torch.Tensor:
        """Offline features of one clip, [n_vectors, dim]: by definition one stream fed the whole clip."""
        s = self.stream(device)
        out, rest = s.accept(x), s.flush()
        return out if rest.shape[0] == 0 else torch.cat([out, rest])

    @staticmethod
    def _n_input(x: Any) -> int:
        return int(np.shape(x)[0]) if np.ndim(x) else 0

    def extract_batch(
        self,
        xs: Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
        device: str | torch.device | None = "cpu",
        group: int = CLIP_GROUP,
    ) -> list[torch.Tensor]:
        """Offline features of many clips (any lengths), equal to `extract` on each, `group` clips per batched
        call.

        A clip too short for one vector is an error naming it: a clip without a score would silently misalign
        scores and labels downstream.
        """
        self.check_lengths(xs)
        out: list[torch.Tensor] = []
        for start in range(0, len(xs), group):
            part = list(xs[start : start + group])
            stream = self.batch_stream(len(part), device)
            got = stream.accept(part)
            rest = stream.flush()
            out += [a if r.shape[0] == 0 else torch.cat([a, r]) for a, r in zip(got, rest)]
        return out

    def check_lengths(self, xs: Sequence[Any]) -> None:
        """FeatureInputError naming the first input too short for one vector."""
        for i, x in enumerate(xs):
            n = self._n_input(x)
            if n < self.min_samples:
                unit = "rows" if self.input_kind == "vectors" else "samples"
                raise FeatureInputError(
                    f"clip {i}: {n} {unit} is shorter than one feature vector ({self.min_samples} {unit})"
                )

    def example_input(self, n: int, seed: int = 0) -> np.ndarray:
        """Deterministic input of `n` samples (rows for vectors) for the registry-parametrized tests: a tone with
        noise, since silence or white noise alone would leave bugs in level-dependent kinds hidden."""
        rng = np.random.default_rng(seed)
        t = np.arange(n) / self.sample_rate
        x = 0.3 * np.sin(2 * np.pi * 0.05 * self.sample_rate * t) + 0.05 * rng.standard_normal(n)
        return x.astype(np.float32)


class BatchStream(ABC):
    """Incremental features for several independent streams; `accept` returns each stream's new vectors."""

    cfg: FeatureConfig
    device: torch.device

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def add_stream(self) -> int:
        """Add a stream; returns its index."""

    @abstractmethod
    def reset(self, index: int) -> None:
        """Forget a stream's partial input (after a gap in its audio, e.g. a device came back)."""

    @abstractmethod
    def accept(self, chunks: Sequence[Any]) -> list[torch.Tensor]:
        """One chunk (or None) per stream -> each stream's new vectors `[k_i, dim]`."""

    @abstractmethod
    def flush(self) -> list[torch.Tensor]:
        """End all streams: vectors still owed (window-level kinds), then the state is cleared for reuse."""

    def _empty(self) -> torch.Tensor:
        return torch.zeros((0, self.cfg.dim), dtype=torch.float32, device=self.device)

    def _check_len(self, chunks: Sequence[Any]) -> None:
        if len(chunks) != len(self):
            raise ValueError(f"got {len(chunks)} chunks for {len(self)} streams")


class SingleStream:
    """One stream: `accept(chunk) -> [k, dim]` new vectors, `flush()` ends it."""

    def __init__(self, batch: BatchStream) -> None:
        self._batch = batch
        self.cfg = batch.cfg

    def accept(self, chunk: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self._batch.accept([chunk])[0]

    def flush(self) -> torch.Tensor:
        return self._batch.flush()[0]


# -- frame-by-frame kinds -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FramedFeature(FeatureConfig):
    """A kind computed frame by frame with `context` consecutive frames stacked (frame-major) into one vector.

    Subclasses define `frame_length`, `frame_hop`, `frame_dim` and `computer(device)`; everything else follows.
    """

    @property
    @abstractmethod
    def frame_length(self) -> int: ...

    @property
    @abstractmethod
    def frame_hop(self) -> int: ...

    @property
    @abstractmethod
    def frame_dim(self) -> int:
        """Values per frame, before context stacking."""

    @property
    def context(self) -> int:  # dataclass subclasses override it with a field
        return 1

    @abstractmethod
    def make_computer(self, device: torch.device) -> "FrameComputer":
        """The per-frame arithmetic on `device` (built once per config and device, see `computer`)."""

    def computer(self, device: torch.device) -> "FrameComputer":
        return _computer(self, str(device))

    @property
    def dim(self) -> int:
        return self.frame_dim * self.context

    @property
    def hop_samples(self) -> int:
        return self.frame_hop

    @property
    def span_samples(self) -> int:
        return self.frame_length + (self.context - 1) * self.frame_hop

    def n_frames(self, n_samples: int) -> int:
        """Whole frames in `n_samples` (`center=False`: frame i is [i*hop, i*hop + frame_length))."""
        return 0 if n_samples < self.frame_length else (n_samples - self.frame_length) // self.frame_hop + 1

    def n_vectors(self, n_samples: int) -> int:
        return max(0, self.n_frames(n_samples) - self.context + 1)

    def batch_stream(self, n_streams: int, device: str | torch.device | None = "cpu") -> "FramedBatchStream":
        return FramedBatchStream(self, n_streams, device)


@dataclasses.dataclass(frozen=True)
class StftFeature(FramedFeature):
    """Framed kinds cut like an STFT: frames of `n_fft` samples every `hop_length` (log-mel, MFCC, spectrum).
    Holds the settings and checks they share, so each kind adds only its own."""

    n_fft: int = 1024
    hop_length: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive("n_fft", "hop_length", "context")

    def _check_band(self, fmin: float, fmax: float | None, allow_equal: bool = False) -> None:
        """0 <= fmin < fmax <= Nyquist (fmax None: Nyquist); `allow_equal` admits a one-bin band."""
        nyquist = self.sample_rate / 2
        top = nyquist if fmax is None else fmax
        if not (0.0 <= fmin <= top if allow_equal else 0.0 <= fmin < top):
            raise ValueError(f"{self.kind}: need 0 <= fmin < fmax, got fmin={fmin!r}, fmax={fmax!r}")
        if top > nyquist:
            raise ValueError(f"{self.kind}: fmax={fmax!r} is above the Nyquist frequency {nyquist:g} Hz")

    @property
    def frame_length(self) -> int:
        return self.n_fft

    @property
    def frame_hop(self) -> int:
        return self.hop_length


@lru_cache(maxsize=64)
def _computer(cfg: FramedFeature, device: str) -> "FrameComputer":
    return cfg.make_computer(torch.device(device))


class FrameComputer(ABC):
    """The arithmetic of one framed kind on one device: `frames` windows the frames of many signals into one
    matrix, `__call__` turns that matrix into per-frame vectors."""

    CALL_ROWS = 512  # frames per `__call__` from `compute` on the CPU: a multiple of every FRAMES_PER_BLOCK

    def __init__(self, frame_length: int, frame_hop: int, window: torch.Tensor | None, device: torch.device) -> None:
        self.frame_length, self.frame_hop, self.device = frame_length, frame_hop, device
        self.window = None if window is None else window.to(device=device, dtype=torch.float32)

    def frames(self, signals: Sequence[torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Windowed frames of 1-D CPU signals, all in one [rows, frame_length] matrix on the device, and the number
        of real frames in it (the rest are zero rows).

        The row count is a multiple of 16: BLAS takes another code path for a row count that is not a multiple of
        its micro-kernel, which changes the last bit of a few values, so padding keeps every frame's features
        independent of how many frames were computed with it (the streaming == offline guarantee). On the CPU the
        window is applied while copying the frames out of the signal (one pass); for CUDA the raw frames go through
        pinned memory and are windowed there.
        """
        length, hop = self.frame_length, self.frame_hop
        views = [x.as_strided(((x.shape[0] - length) // hop + 1, length), (hop, 1)) for x in signals]
        total = sum(v.shape[0] for v in views)
        rows = total + (-total) % ROW_BLOCK
        cuda = self.device.type == "cuda"
        out = torch.empty((rows, length), dtype=torch.float32, pin_memory=cuda)
        r = 0
        for v in views:
            if cuda or self.window is None:
                out[r : r + v.shape[0]].copy_(v)
            else:
                torch.mul(v, self.window, out=out[r : r + v.shape[0]])
            r += v.shape[0]
        out[total:].zero_()
        if cuda:
            out = out.to(self.device, non_blocking=True)
            if self.window is not None:
                out.mul_(self.window)
        return out, total

    @abstractmethod
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """[rows, frame_length] windowed frames (rows a multiple of 16) -> [rows, frame_dim]. `frames` may be
        consumed (its memory reused)."""

    @staticmethod
    def in_blocks(frames: torch.Tensor, rows: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """`fn` on consecutive blocks of `rows` frames (a multiple of 16), concatenated: one block's intermediates
        stay in cache, and every block keeps a whole number of row blocks."""
        if frames.shape[0] <= rows:
            return fn(frames)
        return torch.cat([fn(part) for part in torch.split(frames, rows)])

    def compute(self, signals: Sequence[torch.Tensor]) -> torch.Tensor:
        """Frame vectors [sum of frames, frame_dim] of the complete frames of 1-D float32 CPU signals, in order;
        every signal must hold at least one frame.

        On the CPU the frames are windowed and computed `CALL_ROWS` at a time, so a batch's frame matrix is never
        whole in memory: 500 streams' second of modulation-spectrum frames is 128 MB, which a fresh allocation
        pays for in page faults and the computer reads back from memory, while one block stays in cache. The
        blocks are the ones `__call__` would cut the whole matrix into (`CALL_ROWS` is a multiple of every
        computer's block), the last padded to `ROW_BLOCK` rows, so the numbers are the same."""
        if self.device.type == "cuda":
            frames, n = self.frames(signals)
            return self(frames)[:n]
        length, hop, window = self.frame_length, self.frame_hop, self.window
        views = [x.as_strided(((x.shape[0] - length) // hop + 1, length), (hop, 1)) for x in signals]
        total = sum(v.shape[0] for v in views)
        out: list[torch.Tensor] = []
        block, filled, done = None, 0, 0
        for v in views:
            i = 0
            while i < v.shape[0]:
                if block is None:
                    left = total - done
                    block, filled = torch.empty((min(self.CALL_ROWS, left + (-left) % ROW_BLOCK), length)), 0
                k = min(v.shape[0] - i, block.shape[0] - filled)
                if window is None:
                    block[filled : filled + k].copy_(v[i : i + k])
                else:
                    torch.mul(v[i : i + k], window, out=block[filled : filled + k])
                i, filled, done = i + k, filled + k, done + k
                if filled == block.shape[0] or done == total:
                    block[filled:].zero_()
                    out.append(self(block))
                    block = None
        return (out[0] if len(out) == 1 else torch.cat(out))[:total]


class _FramedState:
    __slots__ = ("remainder", "context")

    def __init__(self) -> None:
        self.remainder = np.zeros(0, dtype=np.float32)
        self.context: torch.Tensor | None = None  # last (context-1) frames


class FramedBatchStream(BatchStream):
    """Incremental framed features for `n_streams` streams; only frames completed by new samples are computed,
    all streams' new frames in one call of the computer."""

    def __init__(self, cfg: FramedFeature, n_streams: int, device: str | torch.device | None = "cpu") -> None:
        self.cfg = cfg
        self.device = select_device(device)
        self._computer = cfg.computer(self.device)
        self._states = [_FramedState() for _ in range(n_streams)]

    def __len__(self) -> int:
        return len(self._states)

    def add_stream(self) -> int:
        self._states.append(_FramedState())
        return len(self._states) - 1

    def reset(self, index: int) -> None:
        self._states[index] = _FramedState()

    def pending_samples(self, index: int) -> int:
        """Samples a stream holds that do not complete a frame yet."""
        return int(self._states[index].remainder.size)

    def accept(self, chunks: Sequence[Any]) -> list[torch.Tensor]:
        cfg = self.cfg
        self._check_len(chunks)
        signals: list[torch.Tensor] = []
        counts: list[int] = []
        for state, chunk in zip(self._states, chunks):
            if chunk is None:
                counts.append(0)
                continue
            buf = as_mono_float32(chunk)
            if state.remainder.size:
                buf = np.concatenate([state.remainder, buf])
            n = cfg.n_frames(buf.size)
            if n:
                # torch shares the memory and only reads it; a read-only array is copied to keep torch from warning
                signals.append(torch.from_numpy(buf if buf.flags.writeable else buf.copy()))
            state.remainder = buf[n * cfg.frame_hop :].copy()
            counts.append(n)

        empty = self._empty()  # one zero-row tensor serves every stream without new vectors
        if not signals:
            return [empty] * len(self._states)
        frames = self._computer.compute(signals)
        parts = [frames] if len(counts) == 1 else torch.split(frames, counts)
        return [self._stack_context(s, part) if part.shape[0] else empty for s, part in zip(self._states, parts)]

    def _stack_context(self, state: _FramedState, frames: torch.Tensor) -> torch.Tensor:
        c = self.cfg.context
        if c == 1:
            return frames
        full = frames if state.context is None else torch.cat([state.context, frames])
        state.context = full[-(c - 1) :].clone()
        if full.shape[0] < c:
            return self._empty()
        # [n, frame_dim, c] -> [n, c, frame_dim] -> [n, c * frame_dim]: frame-major, as the DCASE baseline lays it out
        return full.unfold(0, c, 1).transpose(1, 2).reshape(-1, self.cfg.dim)

    def flush(self) -> list[torch.Tensor]:
        """With `center=False` a partial frame yields nothing; state is cleared for reuse."""
        self._states = [_FramedState() for _ in self._states]
        return [self._empty()] * len(self._states)


# -- window-level kinds ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WindowFeature(FeatureConfig):
    """A kind whose one vector summarises a whole window (or clip) of audio: `n_vectors` is 1 for any input of at
    least `min_window` samples. Offline, a clip is one window.

    Two ways to define one:
    - `frame_front()` returns a framed kind and `reduce(frames)` turns a window's frame vectors into its vector:
      the stream scorer then computes frames once, as audio arrives, and reduces the last frames of each window
      every hop (a 10 s window at a 1 s hop costs one reduction, not ten seconds of features, per hop); `compute` is
      the reduction of the front end's frames, so offline and streaming share every number;
    - otherwise `compute(signals)` on each window's samples, which the stream scorer keeps.
    """

    window_level: ClassVar[bool] = True

    @property
    @abstractmethod
    def min_window(self) -> int:
        """The fewest samples a window must have."""

    def frame_front(self) -> "FramedFeature | None":
        """The framed front end whose frames `reduce` summarises, or None (the kind needs the samples)."""
        return None

    def reduce(self, frames: Sequence[torch.Tensor]) -> torch.Tensor:
        """One vector per window from its front-end frames `[T_i, frame_dim]`: `[len(frames), dim]`."""
        raise NotImplementedError(f"{self.kind} has no frame front end")

    def compute(self, signals: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
        """One vector per 1-D float32 signal, `[len(signals), dim]`."""
        front = self.frame_front()
        if front is None:
            raise NotImplementedError(f"{self.kind}: implement compute() or frame_front() and reduce()")
        return self.reduce(front.extract_batch(list(signals), device))

    @property
    def hop_samples(self) -> int:
        return self.min_window

    @property
    def span_samples(self) -> int:
        return self.min_window

    def n_vectors(self, n_samples: int) -> int:
        return 1 if n_samples >= self.min_window else 0

    def batch_stream(self, n_streams: int, device: str | torch.device | None = "cpu") -> "WindowBatchStream":
        return WindowBatchStream(self, n_streams, device)


class WindowBatchStream(BatchStream):
    """Collects each stream's samples; `flush()` returns one vector per stream over everything it received."""

    def __init__(self, cfg: WindowFeature, n_streams: int, device: str | torch.device | None = "cpu") -> None:
        self.cfg = cfg
        self.device = select_device(device)
        self._bufs: list[list[np.ndarray]] = [[] for _ in range(n_streams)]

    def __len__(self) -> int:
        return len(self._bufs)

    def add_stream(self) -> int:
        self._bufs.append([])
        return len(self._bufs) - 1

    def reset(self, index: int) -> None:
        self._bufs[index] = []

    def accept(self, chunks: Sequence[Any]) -> list[torch.Tensor]:
        self._check_len(chunks)
        for buf, chunk in zip(self._bufs, chunks):
            if chunk is not None:
                buf.append(as_mono_float32(chunk).copy())
        return [self._empty()] * len(self._bufs)

    def flush(self) -> list[torch.Tensor]:
        signals = [np.concatenate(b) if b else np.zeros(0, np.float32) for b in self._bufs]
        self._bufs = [[] for _ in self._bufs]
        ready = [i for i, s in enumerate(signals) if s.size >= self.cfg.min_window]
        out = [self._empty()] * len(signals)
        if ready:
            vectors = self.cfg.compute([signals[i] for i in ready], self.device)
            for k, i in enumerate(ready):
                out[i] = vectors[k : k + 1]
        return out
