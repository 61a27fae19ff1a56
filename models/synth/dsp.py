"""Stateful signal generators that give the same samples however a stream is cut into blocks.

Every generator here is a sequential state machine that is advanced by `take(n)`. Randomness is addressed by
position, not by call: white noise comes in fixed tiles whose seed is (key, tile index), event intervals come in
fixed tiles of events. Filters carry their `zi` state, phases are a running `cumsum` seeded with the carried
value, and event impulses land on absolute sample positions. So `take(a)` then `take(b)` returns exactly what
`take(a + b)` returns, which is what lets the monitor's demo stream a synthetic machine block by block without
seams, and what makes dataset clips independent of how (or in how many processes) they were rendered.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy import signal

_NOISE_TILE = 16384
_EVENT_TILE = 256


def rng_for(key: Sequence[int]) -> np.random.Generator:
    """A generator for a tuple of non-negative ints: the same key always gives the same stream."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


class WhiteNoise:
    """Unit-variance Gaussian noise addressed by sample index (tile t is seeded by key + (t,))."""

    def __init__(self, key: Sequence[int]) -> None:
        self.key = tuple(key)
        self.pos = 0
        self._tile_index = -1
        self._tile = np.zeros(0)

    def _get_tile(self, t: int) -> np.ndarray:
        if t != self._tile_index:
            self._tile = rng_for((*self.key, t)).standard_normal(_NOISE_TILE, dtype=np.float32).astype(np.float64)
            self._tile_index = t
        return self._tile

    def take(self, n: int) -> np.ndarray:
        start, end = self.pos, self.pos + n
        self.pos = end
        if n <= 0:
            return np.zeros(0)
        first, last = start // _NOISE_TILE, (end - 1) // _NOISE_TILE
        buf = np.concatenate([self._get_tile(t) for t in range(first, last + 1)])
        offset = start - first * _NOISE_TILE
        return buf[offset : offset + n]


class Filter:
    """An IIR filter (second-order sections) whose state carries over from one block to the next."""

    def __init__(self, sos: np.ndarray) -> None:
        self.sos = np.array(sos, dtype=np.float64)  # a copy: designs are shared, read-only cache entries
        self.zi = np.zeros((self.sos.shape[0], 2))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.size == 0:
            return x
        y, self.zi = signal.sosfilt(self.sos, x, zi=self.zi)
        return y

    def energy(self, sample_rate: int) -> float:
        """Sum of the squared impulse response: the output power per unit-variance white input sample."""
        return _energy(self.sos.tobytes(), sample_rate)

    def impulse_response(self, n: int) -> np.ndarray:
        return _impulse_response(self.sos.tobytes(), n).copy()


@lru_cache(maxsize=1024)
def _impulse_response(sos_bytes: bytes, n: int) -> np.ndarray:
    impulse = np.zeros(n)
    impulse[0] = 1.0
    return signal.sosfilt(np.frombuffer(sos_bytes).reshape(-1, 6).copy(), impulse)


@lru_cache(maxsize=1024)
def _energy(sos_bytes: bytes, sample_rate: int) -> float:
    return float(np.sum(_impulse_response(sos_bytes, sample_rate) ** 2))


# Designs are cached: every clip of an id uses the same filters, and butter() costs ~1 ms per call.
@lru_cache(maxsize=1024)
def _butter(order: int, edges: tuple[float, ...], btype: str, sample_rate: int) -> np.ndarray:
    sos = signal.butter(order, list(edges) if len(edges) > 1 else edges[0], btype=btype, fs=sample_rate, output="sos")
    sos.setflags(write=False)
    return sos


def bandpass(lo: float, hi: float, sample_rate: int, order: int = 2) -> np.ndarray:
    """Butterworth band-pass sections, edges clamped inside (0, Nyquist)."""
    nyq = sample_rate / 2
    return _butter(order, (max(lo, 5.0), min(hi, 0.95 * nyq)), "bandpass", sample_rate)


def lowpass(fc: float, sample_rate: int, order: int = 1) -> np.ndarray:
    return _butter(order, (min(fc, 0.95 * sample_rate / 2),), "lowpass", sample_rate)


def highpass(fc: float, sample_rate: int, order: int = 2) -> np.ndarray:
    return _butter(order, (min(fc, 0.9 * sample_rate / 2),), "highpass", sample_rate)


def resonator(freq: float, q: float, sample_rate: int) -> np.ndarray:
    """A single ringing mode (a struck structure): a narrow second-order band-pass."""
    freq = min(freq, 0.9 * sample_rate / 2)
    bw = freq / q
    return _butter(1, (max(freq - bw / 2, 5.0), freq + bw / 2), "bandpass", sample_rate)


class Phase:
    """Running phase in cycles; `advance(freq)` integrates an instantaneous frequency (Hz) sample by sample.

    Float64 cycles are kept unwrapped: after a year at 300 Hz the resolution is still ~1e-6 cycle, and not
    wrapping keeps the running sum identical however the stream is split.
    """

    def __init__(self, sample_rate: int, start: float = 0.0) -> None:
        self.sample_rate = sample_rate
        self.cycles = float(start)

    def advance(self, freq: np.ndarray) -> np.ndarray:
        if freq.size == 0:
            return np.zeros(0)
        acc = np.cumsum(np.concatenate(([self.cycles], freq / self.sample_rate)))[1:]
        self.cycles = float(acc[-1])
        return acc


class SlowProcess:
    """A smooth zero-mean, unit-variance random process: AR(1) control points every `step` samples, linearly
    interpolated. Models slow speed drift and slow level wander; `corr_seconds` is its correlation time."""

    def __init__(self, key: Sequence[int], step: int, corr_seconds: float, sample_rate: int) -> None:
        self.step = step
        self.rho = float(np.exp(-step / (corr_seconds * sample_rate)))
        self._noise = WhiteNoise(key)
        self._zi = np.array([self.rho * rng_for((*key, 1 << 30)).standard_normal()])
        self._ctrl = np.zeros(0)  # control values with index self._base ...
        self._base = 0
        self.pos = 0

    def _extend_to(self, k_last: int) -> None:
        have = self._base + self._ctrl.size
        if k_last < have:
            return
        e = self._noise.take(k_last + 1 - have) * np.sqrt(1 - self.rho**2)
        v, self._zi = signal.lfilter([1.0], [1.0, -self.rho], e, zi=self._zi)
        self._ctrl = np.concatenate([self._ctrl, v])

    def take(self, n: int) -> np.ndarray:
        start, end = self.pos, self.pos + n
        self.pos = end
        if n <= 0:
            return np.zeros(0)
        first, last = start // self.step, (end - 1) // self.step
        self._extend_to(last + 1)
        offset = start - first * self.step
        ramp = np.tile(np.arange(self.step) / self.step, last - first + 1)[offset : offset + n]
        ctrl = self._ctrl[first - self._base : last + 2 - self._base]
        v0 = np.repeat(ctrl[:-1], self.step)[offset : offset + n]
        dv = np.repeat(np.diff(ctrl), self.step)[offset : offset + n]
        out = v0 + dv * ramp
        drop = last - self._base  # keep the current control point onward
        if drop > 0:
            self._ctrl = self._ctrl[drop:]
            self._base += drop
        return out


class EventClock:
    """Impulses at event times: periodic with jitter (bearing impacts, belt joints) or Poisson (distant impacts).

    Intervals are drawn per event index in fixed tiles and accumulated with a carried sum, so event positions are
    absolute. `take(n)` returns an impulse train (amplitude per event) for the next n samples.
    """

    def __init__(
        self,
        key: Sequence[int],
        interval: float,
        jitter: float = 0.0,
        amp_jitter: float = 0.0,
        poisson: bool = False,
    ) -> None:
        if interval <= 1.0:
            raise ValueError(f"event interval must exceed one sample, got {interval}")
        self.key = tuple(key)
        self.interval, self.jitter, self.amp_jitter, self.poisson = interval, jitter, amp_jitter, poisson
        self._tile = 0
        first = rng_for((*self.key, 1 << 30)).uniform()
        self._last_time = -first * interval  # phase of the first event, in samples
        self._times = np.zeros(0)
        self._amps = np.zeros(0)
        self.pos = 0

    def _more(self) -> None:
        rng = rng_for((*self.key, self._tile))
        self._tile += 1
        if self.poisson:
            steps = self.interval * rng.standard_exponential(_EVENT_TILE)
        else:
            steps = self.interval * np.exp(self.jitter * rng.standard_normal(_EVENT_TILE))
        amps = np.exp(self.amp_jitter * rng.standard_normal(_EVENT_TILE))
        times = np.cumsum(np.concatenate(([self._last_time], np.maximum(steps, 1.0))))[1:]
        self._last_time = float(times[-1])
        self._times = np.concatenate([self._times, times])
        self._amps = np.concatenate([self._amps, amps])

    def take(self, n: int) -> np.ndarray:
        start, end = self.pos, self.pos + n
        self.pos = end
        out = np.zeros(max(n, 0))
        if n <= 0:
            return out
        while self._last_time < end:
            self._more()
        slots = np.floor(self._times).astype(np.int64)
        here = (slots >= start) & (slots < end)
        np.add.at(out, slots[here] - start, self._amps[here])
        keep = slots >= end
        self._times, self._amps = self._times[keep], self._amps[keep]
        return out


class Gate:
    """A 0..1 level that ramps toward its target at a fixed slope, so faults switch on and off without clicks."""

    def __init__(self, ramp_samples: int) -> None:
        self.slope = 1.0 / max(ramp_samples, 1)
        self.value: float | None = None  # None until the first block: a stream may start with a fault fully on

    def take(self, n: int, on: bool) -> np.ndarray | float:
        target = 1.0 if on else 0.0
        if self.value is None:
            self.value = target
        if self.value == target:
            return target
        direction = 1.0 if target > self.value else -1.0
        ramp = np.clip(self.value + direction * self.slope * np.arange(1, n + 1), 0.0, 1.0)
        self.value = float(ramp[-1]) if n else self.value
        return ramp
