"""Audio producers: live devices (PortAudio via sounddevice), wav replays and synthetic streams.

Every source writes `AudioBlock`s into its own bounded `BlockQueue`; the pipeline drains all queues per tick.
A live device cannot wait, so its queue drops the *oldest* block when full (and counts it); a replay can, so it
waits for room instead (back-pressure), which is what makes `--speed 0` "as fast as the pipeline goes".

The PortAudio callback runs on PortAudio's thread: it only copies the block and hands it to the event loop
(`call_soon_threadsafe`). Resampling and everything else happens later, in the pipeline's worker thread.
"""

from __future__ import annotations

import asyncio
import glob
import json
import logging
import re
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from monitor.events import CounterEvent, Event, SourceState, SourceStatus

log = logging.getLogger(__name__)

Emit = Callable[[Event], None]


class DeviceError(ValueError):
    """A `--device` that can never work (ambiguous name, output-only device); the message lists the choices."""


class DeviceNotFound(LookupError):
    """The device is not there (yet): a live source waits for it instead of failing."""


@dataclass
class AudioBlock:
    """Consecutive mono float32 samples of one source.

    `time` is the audio clock (unix seconds at the end of the block): the time alarms and scores are stamped with.
    `arrival` is the wall clock when the block became available (for a paced replay: when it was due, so a
    pipeline that cannot keep up shows as lag instead of silently slowing the replay down): `now - arrival` at
    scoring is the lag.
    `gap` says the audio before this block is not contiguous with it (device reopened, next file): the feature
    stream restarts so no frame straddles the gap.
    """

    samples: np.ndarray
    sample_rate: int
    time: float
    arrival: float
    gap: bool = False


class BlockQueue:
    """A bounded per-source queue. `put_drop_oldest` for live audio, `await put` (waits for room) for replays."""

    def __init__(self, maxsize: int, wake: asyncio.Event | None = None) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self.wake = wake or asyncio.Event()
        self.dropped = 0
        self.ended = False
        self.closed = False
        self._items: deque[AudioBlock] = deque()
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self._items)

    def put_drop_oldest(self, block: AudioBlock) -> int:
        """Enqueue without waiting; returns how many old blocks were dropped to make room (0 or 1)."""
        dropped = 0
        if len(self._items) >= self.maxsize:
            self._items.popleft()
            dropped = 1
            self.dropped += 1
            # the next surviving block no longer continues the audio the pipeline has seen
            (self._items[0] if self._items else block).gap = True
        self._items.append(block)
        self.wake.set()
        return dropped

    async def put(self, block: AudioBlock) -> None:
        """Wait for room, then enqueue; after `close()` the block is dropped at once (nothing will drain it)."""
        while len(self._items) >= self.maxsize and not self.closed:
            self._room.clear()
            await self._room.wait()
        if self.closed:
            return
        self._items.append(block)
        self.wake.set()

    def close(self) -> None:
        """The consumer is gone (shutdown, or the pipeline failed): a producer waiting for room returns."""
        self.closed = True
        self._room.set()

    def drain(self, max_seconds: float | None = None) -> list[AudioBlock]:
        """Take the queued blocks, oldest first: all of them, or (at least one and) about `max_seconds` of audio."""
        items: list[AudioBlock] = []
        taken = 0.0
        while self._items and (max_seconds is None or not items or taken < max_seconds):
            block = self._items.popleft()
            items.append(block)
            taken += block.samples.size / block.sample_rate
        self._room.set()
        return items

    def end(self) -> None:
        """No more blocks will come (the replay finished or the source gave up)."""
        self.ended = True
        self.wake.set()


class Source(ABC):
    """An audio producer with a name. `run()` produces until it ends or `stop()` is called."""

    def __init__(self, name: str, queue: BlockQueue, emit: Emit) -> None:
        self.name = name
        self.queue = queue
        self._emit = emit
        self._stopping = asyncio.Event()
        self.state: SourceState | None = None
        self.machine_id: str | None = None  # which machine this is, for bundles that score per machine id

    def stop(self) -> None:
        self._stopping.set()
        self.queue.close()  # a replay waiting for room must not hold shutdown up

    def set_state(self, state: SourceState, detail: str = "") -> None:
        """Publish a status change (repeats of the same state are not re-published)."""
        if state == self.state:
            return
        self.state = state
        self._emit(SourceStatus(self.name, state, detail, time.time()))

    def count(self, name: str, amount: int = 1, detail: str = "") -> None:
        self._emit(CounterEvent(name, self.name, amount, detail))  # type: ignore[arg-type]

    @abstractmethod
    async def run(self) -> None: ...


# ----------------------------------------------------------------------------------------------------------------
# paced sources: wav replay and synthetic audio


class PacedSource(Source):
    """Delivers pre-recorded or generated audio at `speed` times real time (0: as fast as the pipeline takes it)."""

    def __init__(
        self,
        name: str,
        queue: BlockQueue,
        emit: Emit,
        sample_rate: int,
        block_seconds: float = 0.1,
        speed: float = 1.0,
        duration: float | None = None,
    ) -> None:
        super().__init__(name, queue, emit)
        if speed < 0:
            raise ValueError(f"speed must be >= 0, got {speed}")
        self.sample_rate = sample_rate
        self.block = max(1, int(round(block_seconds * sample_rate)))
        self.speed = speed
        self.duration = duration

    @abstractmethod
    def blocks(self) -> Iterator[tuple[bool, np.ndarray]]:
        """`(gap, samples)` blocks of `self.block` samples (fewer at the end of a file); `gap`: the audio before
        this block is not contiguous with it (the first block, and the first after a bad file)."""

    async def run(self) -> None:
        t0_wall, t0_mono = time.time(), time.monotonic()
        limit = None if self.duration is None else int(round(self.duration * self.sample_rate))
        played = 0
        try:
            for gap, samples in self.blocks():
                if self._stopping.is_set() or (limit is not None and played >= limit):
                    return
                if limit is not None:
                    samples = samples[: limit - played]
                played += samples.size
                audio_end = played / self.sample_rate
                if self.speed > 0:
                    due = t0_wall + audio_end / self.speed
                    delay = t0_mono + audio_end / self.speed - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                else:
                    due = time.time()
                    await asyncio.sleep(0)  # let the pipeline and sinks run between blocks
                if self.state is None:
                    self.set_state("online", self.describe())
                await self.queue.put(AudioBlock(samples, self.sample_rate, t0_wall + audio_end, due, gap))
        finally:
            self.queue.end()

    def describe(self) -> str:
        return f"{type(self).__name__} at speed {self.speed:g}"


def expand_replay_paths(patterns: list[str]) -> list[Path]:
    """Files, folders (their *.wav, sorted) and globs, in the order given. Nothing found -> error naming it."""
    out: list[Path] = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            found = sorted(p.glob("*.wav"))
        elif glob.has_magic(pattern):
            found = sorted(Path(x) for x in glob.glob(pattern) if Path(x).is_file())
        else:
            found = [p]  # a missing file is reported when it is played, as a source error
        if not found:
            raise FileNotFoundError(f"--replay {pattern}: no wav files found")
        out.extend(found)
    return out


READ_FRAMES_SECONDS = 2  # replay files are decoded this much at a time (per source: 128 KB at 16 kHz)


class ReplaySource(PacedSource):
    """Wav files played one after another (forever with `loop`), read block by block: a day-long recording costs
    a block of memory, not the file. The files of one replay are one contiguous stream (a folder of 10 s clips is
    scored across clip boundaries instead of restarting the features at each, which left clips shorter than a
    window unscored); a bad file is an error status, counted, and the stream restarts after it."""

    def __init__(self, name: str, paths: list[Path], *args: Any, loop: bool = False, channel: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        self.paths = paths
        self.loop = loop
        self.channel = channel

    def blocks(self) -> Iterator[tuple[bool, np.ndarray]]:
        from models.audio import AudioError, WavReader

        gap = True
        readers: dict[Path, WavReader] = {}  # validated once: a loop over short files reopens, not re-checks
        while True:
            good = 0
            for path in self.paths:
                try:
                    reader = readers.get(path) or WavReader(path, self.sample_rate, self.channel)
                    readers[path] = reader
                    for samples in reader.blocks(self.block, READ_FRAMES_SECONDS * self.sample_rate):
                        if self.state == "error":
                            self.set_state("online", f"playing {path.name}")
                        yield gap, samples
                        gap = False
                except AudioError as exc:
                    readers.pop(path, None)
                    self.count("input_errors", detail=str(exc))
                    self.set_state("error", str(exc))
                    gap = True
                    continue
                good += 1
            if not self.loop or good == 0:
                return

    def describe(self) -> str:
        return f"replaying {len(self.paths)} file(s) at speed {self.speed:g}"


class SynthSource(PacedSource):
    """Audio from a generator function `generate(n_samples) -> float32[n]` (the `--demo` machines)."""

    def __init__(self, name: str, generate: Callable[[int], np.ndarray], *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        self._generate = generate

    def blocks(self) -> Iterator[tuple[bool, np.ndarray]]:
        gap = True
        while True:
            yield gap, np.asarray(self._generate(self.block), dtype=np.float32)
            gap = False


# ----------------------------------------------------------------------------------------------------------------
# live devices


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    channels: int
    default_rate: float
    hostapi: str
    alias: str  # micN: the N-th input-capable device


def list_input_devices() -> list[InputDevice]:
    import sounddevice as sd

    hostapis = sd.query_hostapis()
    out = []
    for dev in sd.query_devices():
        if dev["max_input_channels"] > 0:
            api = hostapis[dev["hostapi"]]["name"] if dev["hostapi"] < len(hostapis) else "?"
            alias = f"mic{len(out)}"
            out.append(InputDevice(dev["index"], dev["name"], dev["max_input_channels"], dev["default_samplerate"],
                                   api, alias))
    return out


def resolve_device(spec: str | int, devices: list[InputDevice]) -> InputDevice:
    """`--device` -> one input device: an index, `micN`, an exact name, or a unique case-insensitive substring."""
    text = str(spec).strip()
    if re.fullmatch(r"\d+", text):
        for d in devices:
            if d.index == int(text):
                return d
        raise DeviceNotFound(f"no input device with index {text}")
    if re.fullmatch(r"mic\d+", text):
        for d in devices:
            if d.alias == text:
                return d
        raise DeviceNotFound(f"{text}: only {len(devices)} input device(s) present")
    exact = [d for d in devices if d.name == text]
    if len(exact) == 1:
        return exact[0]
    matches = [d for d in devices if text.lower() in d.name.lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DeviceNotFound(f"no input device matches {text!r}")
    listing = "; ".join(f"{d.index}: {d.name}" for d in matches)
    raise DeviceError(f"--device {text!r} is ambiguous, it matches: {listing} (use the index or a longer name)")


def format_device_list(devices: list[InputDevice]) -> str:
    lines = [f"{'alias':<6} {'index':>5}  {'ch':>2}  {'rate':>7}  {'host api':<12} name"]
    for d in devices:
        lines.append(f"{d.alias:<6} {d.index:>5}  {d.channels:>2}  {d.default_rate:>7.0f}  {d.hostapi:<12} {d.name}")
    return "\n".join(lines)


_PROBE = (
    "import json, sounddevice as sd\n"
    "print(json.dumps([[d['index'], d['name'], d['max_input_channels'], d['default_samplerate'], d['hostapi']]"
    " for d in sd.query_devices()]))"
)


async def device_visible(spec: str | int) -> bool:
    """Whether a *fresh* PortAudio (in a child process) sees the device. This process's device list is frozen
    until PortAudio is re-initialised, which interrupts every open stream, so we only do that for a device that
    is really there."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PROBE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        return False
    rows = [r for r in json.loads(out or b"[]") if r[2] > 0]
    devices = [InputDevice(r[0], r[1], r[2], r[3], str(r[4]), f"mic{i}") for i, r in enumerate(rows)]
    try:
        resolve_device(spec, devices)
        return True
    except (DeviceNotFound, DeviceError):
        return False


class PortAudioHub:
    """Serialises PortAudio calls and its re-initialisation, which is global and the only way to see a device
    that came back. Every open stream must be closed before `Pa_Terminate`, so a rescan first asks all registered
    mic sources to close theirs; they then reopen (a short gap for the healthy ones, instead of a crash). Sources
    rescan only once `device_visible` says their device is back, so a missing device does not keep interrupting
    the others."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.generation = 0
        self._sources: list["MicSource"] = []
        self._rescanning = asyncio.Lock()

    def register(self, source: "MicSource") -> None:
        self._sources.append(source)

    async def rescan(self) -> None:
        generation = self.generation
        async with self._rescanning:
            if generation != self.generation:  # another source already rescanned while we waited
                return
            await asyncio.to_thread(self._rescan_blocking)
            self.generation += 1
            for s in self._sources:
                s.invalidated.set()

    def _rescan_blocking(self) -> None:
        import sounddevice as sd

        with self.lock:
            for s in self._sources:
                s.close_stream_locked()
            sd._terminate()
            sd._initialize()
        log.info("PortAudio re-initialised (device list refreshed)")


class MicSource(Source):
    """A live input device. Missing at start: waited for. Lost (stream finished or no audio for
    `watchdog_seconds`): offline, then reopened by name with back-off until it is back."""

    def __init__(
        self,
        name: str,
        device: str | int,
        queue: BlockQueue,
        emit: Emit,
        sample_rate: int,
        hub: PortAudioHub,
        channel: int = 0,
        block_seconds: float = 0.1,
        watchdog_seconds: float = 3.0,
        max_backoff: float = 10.0,
    ) -> None:
        super().__init__(name, queue, emit)
        self.device = device
        self.channel = channel
        self.target_rate = sample_rate
        self.sample_rate = sample_rate
        self.block_seconds = block_seconds
        self.watchdog_seconds = watchdog_seconds
        self.max_backoff = max_backoff
        self.hub = hub
        self.invalidated = asyncio.Event()
        self._stream: Any = None
        self._finished = asyncio.Event()
        self._last_block = 0.0
        self._gap = True
        self._loop: asyncio.AbstractEventLoop | None = None
        hub.register(self)

    # PortAudio thread ------------------------------------------------------------------------------------------
    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        block = indata[:, self.channel].copy()
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._on_block, block, bool(status.input_overflow))

    def _finished_callback(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._finished.set)

    # event loop ------------------------------------------------------------------------------------------------
    def _on_block(self, samples: np.ndarray, overflow: bool) -> None:
        now = time.time()
        self._last_block = time.monotonic()
        if overflow:
            self.count("overflows", detail="PortAudio input overflow")
        dropped = self.queue.put_drop_oldest(AudioBlock(samples, self.sample_rate, now, now, self._gap))
        self._gap = False
        if dropped:
            self.count("dropped_blocks", dropped, "pipeline too slow: oldest block dropped")

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        backoff = 0.5
        try:
            while not self._stopping.is_set():
                try:
                    detail = await asyncio.to_thread(self._open)
                except DeviceError as exc:
                    self.set_state("error", str(exc))
                    return
                except Exception as exc:  # noqa: BLE001 - PortAudio reports everything as one error type
                    self.set_state("offline", f"waiting for device {self.device!r}: {exc}")
                    if await self._sleep(backoff):
                        return
                    backoff = min(backoff * 2, self.max_backoff)
                    if await device_visible(self.device):
                        await self.hub.rescan()
                    continue
                self.set_state("online", detail)
                reason = await self._supervise()
                await asyncio.to_thread(self._close_stream)
                self._gap = True
                if reason is None:
                    return
                if reason == "rescan":
                    continue
                self.set_state("offline", reason)
                self.count("source_restarts", detail=reason)
                if await self._sleep(backoff):
                    return
                backoff = 0.5
        finally:
            await asyncio.to_thread(self._close_stream)
            self.queue.end()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when stopped."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
            return True
        except asyncio.TimeoutError:
            return False

    async def _supervise(self) -> str | None:
        """Wait until the stream dies; returns why (None when we were asked to stop)."""
        self._last_block = time.monotonic() + 1.0  # PortAudio's first block takes about a second
        while True:
            if await self._sleep(0.25):
                return None
            if self.invalidated.is_set():
                return "rescan"
            if self._finished.is_set():
                return f"device {self.device!r} stopped delivering (stream finished)"
            silent_for = time.monotonic() - self._last_block
            if silent_for > self.watchdog_seconds:
                return f"no audio from device {self.device!r} for {silent_for:.1f} s"

    def _open(self) -> str:
        import sounddevice as sd

        with self.hub.lock:
            dev = resolve_device(self.device, list_input_devices())
            if self.channel >= dev.channels:
                raise DeviceError(f"{dev.name}: channel {self.channel} requested, it has {dev.channels}")
            channels = self.channel + 1
            try:
                sd.check_input_settings(dev.index, channels=channels, samplerate=self.target_rate, dtype="float32")
                rate = self.target_rate
            except Exception:  # noqa: BLE001 - the device cannot do the bundle's rate: resample in the pipeline
                rate = int(dev.default_rate)
            self._finished.clear()
            self.invalidated.clear()
            self.sample_rate = rate
            stream = sd.InputStream(
                samplerate=rate,
                blocksize=max(1, int(round(self.block_seconds * rate))),
                device=dev.index,
                channels=channels,
                dtype="float32",
                callback=self._callback,
                finished_callback=self._finished_callback,
            )
            stream.start()
            self._stream = stream
        resampled = "" if rate == self.target_rate else f", resampled to {self.target_rate} Hz"
        return f"{dev.name} (index {dev.index}, channel {self.channel}, {rate} Hz{resampled})"

    def _close_stream(self) -> None:
        with self.hub.lock:
            self.close_stream_locked()

    def close_stream_locked(self) -> None:
        """Close the stream; the caller holds `hub.lock`."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            stream.abort(ignore_errors=True)
            stream.close(ignore_errors=True)
        except Exception:  # noqa: BLE001 - the device is gone; there is nothing left to close
            log.debug("closing %s failed", self.name, exc_info=True)


def source_name(spec: str, taken: set[str]) -> str:
    """A topic-safe, unique name for a source given by a device spec or a replay path."""
    stem = Path(spec.rstrip("/")).name if ("/" in spec or spec.endswith(".wav")) else spec
    stem = re.sub(r"\.wav$", "", stem)
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_") or "source"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name
