"""Machine sound models: one `MachineVoice` per (machine type, id, recording), streamed block by block.

Three layers of randomness, each from its own seed key, so that the dataset behaves like DCASE recordings:
- *character* (seed, type, id): what makes an id recognisable (shaft speed, harmonic amplitudes, flow-noise
  colour, stroke period and resonances, the factory background); shared by all clips of an id;
- *realisation* (character + `instance`): what differs between two recordings of the same machine (operating
  point ±1-2 % speed, ±1 dB harmonic and noise levels, a new stretch of noise and background);
- positions inside a stream (see `dsp`): block cutting never changes a sample.

Levels: the normal machine part is scaled to unit RMS by a calibration render (4 s of a dedicated calibration
recording of the same id, cached per process), the background likewise; additive fault components are scaled
analytically to `strength` times that unit level. Parametric faults (imbalance, clogging, gear damage, stroke
faults) change the machine itself, so they may change its loudness; the dataset writer removes loudness as a
cue by normalising whole clips (see `dataset`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Protocol

import numpy as np

from models.synth.catalog import ALL_MACHINES, ANOMALIES
from models.synth.dsp import (
    EventClock,
    Filter,
    Gate,
    Phase,
    SlowProcess,
    WhiteNoise,
    bandpass,
    highpass,
    lowpass,
    resonator,
    rng_for,
)

# Fault strength per type and kind: the calibration knob (see the package docstring for the measured effect).
#   bearing, rubbing, leak: RMS of the added component relative to the normal machine's RMS
#   imbalance: 1x harmonic gain (1 + 4 s) and shaft-rate amplitude modulation of depth 0.5 s
#   clogging: fractional shaft-speed drop s; the flow noise moves to a duller colour (upper edge x (1 - 4 s))
#   gear_damage: gear-rate modulation depth s of the mesh harmonics, plus once-per-turn knocks at 0.5 s RMS
#   missing_stroke: probability s that a stroke sticks (a weak actuator click and a strained buzz, no travel/flow)
#   irregular_stroke: extra log-normal jitter s of stroke timing and duration, and with probability s a stroke
#     chatters (re-opens briefly 20-80 ms after it ended)
STRENGTH: dict[str, dict[str, float]] = {
    "fan": {"bearing": 0.2, "imbalance": 0.35, "rubbing": 0.15, "clogging": 0.025},
    "pump": {"leak": 0.1, "clogging": 0.02, "bearing": 0.25},
    "slider": {"missing_stroke": 0.3, "irregular_stroke": 0.5, "rubbing": 0.5},
    "valve": {"missing_stroke": 0.3, "irregular_stroke": 0.5, "leak": 0.1},
    "ToyCar": {"gear_damage": 0.3, "bearing": 0.15, "imbalance": 0.25},
    "ToyConveyor": {"gear_damage": 0.25, "rubbing": 0.15, "bearing": 0.12},
}

LEVEL = 10 ** (-26 / 20)  # nominal RMS of a voice's output (machine + background), -26 dBFS
_RAMP_SECONDS = 0.05  # fault fade in/out when a stream switches it
_BLOCK = 32768  # internal render block, samples

# Stream tags inside a seed key, so components never share random numbers.
_CHARACTER, _REALISATION, _CALIBRATION = 0, 1, 2


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _shot_rms(interval: float, amp_jitter: float, filt: Filter, sample_rate: int, mean_filter: bool = False) -> float:
    """RMS of filtered impulses at 1/interval per sample with log-normal amplitudes (Campbell's theorem)."""
    rate = 1.0 / interval
    ea2 = np.exp(2 * amp_jitter**2)
    var = rate * ea2 * filt.energy(sample_rate)
    if not mean_filter:
        return float(np.sqrt(var))
    mean = rate * np.exp(amp_jitter**2 / 2) * float(np.sum(filt.impulse_response(sample_rate)))
    return float(np.sqrt(var + mean**2))


class _Part(ABC):
    """An additive component at a fixed RMS (the fault components); idle() keeps its clocks in step while off."""

    @abstractmethod
    def render(self, n: int) -> np.ndarray: ...

    @abstractmethod
    def idle(self, n: int) -> None: ...


class _Impacts(_Part):
    """Periodic or random impacts ringing a resonance: bearing defects, gear knocks, distant hammering."""

    def __init__(self, key: tuple[int, ...], interval: float, jitter: float, amp_jitter: float, freq: float,
                 q: float, sample_rate: int, level: float, poisson: bool = False, level_is_peak: bool = False
                 ) -> None:
        """`level` is the RMS (dense impacts: a steady component) or, with `level_is_peak`, the typical peak of one
        impact (sparse impacts, whose RMS says little about how loud each one is)."""
        self._clock = EventClock(key, interval, jitter, amp_jitter, poisson)
        self._filter = Filter(resonator(freq, q, sample_rate))
        unit_rms = _shot_rms(interval, amp_jitter, self._filter, sample_rate)
        if level_is_peak:
            self._gain = level / float(np.max(np.abs(self._filter.impulse_response(sample_rate // 10))))
        else:
            self._gain = level / unit_rms
        self.rms = self._gain * unit_rms

    def render(self, n: int) -> np.ndarray:
        return self._gain * self._filter(self._clock.take(n))

    def idle(self, n: int) -> None:
        self._clock.take(n)
        self._filter.zi[:] = 0.0


class _Hiss(_Part):
    """Band-limited noise with a slow level wander (a leak's hiss)."""

    def __init__(self, key: tuple[int, ...], sos: np.ndarray, sample_rate: int, rms: float) -> None:
        self._noise = WhiteNoise(key)
        self._filter = Filter(sos)
        self._wander = SlowProcess((*key, 1), sample_rate // 20, 0.7, sample_rate)
        self._gain = rms / np.sqrt(self._filter.energy(sample_rate) * (1 + 0.15**2))

    def render(self, n: int) -> np.ndarray:
        return self._gain * self._filter(self._noise.take(n)) * (1 + 0.15 * self._wander.take(n))

    def idle(self, n: int) -> None:
        self._noise.pos += n
        self._wander.take(n)
        self._filter.zi[:] = 0.0


class _Bursts(_Part):
    """Intermittent bursts of band-limited noise (rubbing): random onsets, 10-40 ms smooth envelopes."""

    def __init__(self, key: tuple[int, ...], mean_interval: float, band: tuple[float, float], burst_seconds: float,
                 sample_rate: int, rms: float) -> None:
        self._clock = EventClock(key, mean_interval, amp_jitter=0.6, poisson=True)
        self._envelope = Filter(lowpass(1.0 / burst_seconds, sample_rate, order=2))
        self._noise = WhiteNoise((*key, 1))
        self._band = Filter(bandpass(*band, sample_rate))
        env_rms = _shot_rms(mean_interval, 0.6, self._envelope, sample_rate, mean_filter=True)
        self._gain = rms / (env_rms * np.sqrt(self._band.energy(sample_rate)))
        self.gate: np.ndarray | float = 1.0  # optional extra envelope (slider: only while moving)

    def render(self, n: int) -> np.ndarray:
        env = self._envelope(self._clock.take(n))
        return self._gain * env * self._band(self._noise.take(n)) * self.gate

    def idle(self, n: int) -> None:
        self._clock.take(n)
        self._noise.pos += n
        self._envelope.zi[:] = 0.0
        self._band.zi[:] = 0.0


def _tones(cycles: np.ndarray, mults: np.ndarray, amps: list, phases: np.ndarray) -> np.ndarray:
    """Sum of partials a * sin(2*pi*(m*cycles + phase)); amps may be per-sample arrays.

    The sine runs in float32 on a reduced argument (30x faster than float64 on large phases): integer multiples
    use the fractional cycle, other multiples reduce m*cycles in float64 first.
    """
    frac = cycles - np.floor(cycles)
    frac32 = frac.astype(np.float32)
    out = np.zeros(cycles.shape)
    two_pi = np.float32(2 * np.pi)
    for m, a, p in zip(mults, amps, phases):
        if float(m).is_integer():
            arg = np.float32(m) * frac32 + np.float32(p)
        else:
            mc = m * cycles + p
            arg = (mc - np.floor(mc)).astype(np.float32)
        out += a * np.sin(two_pi * arg)
    return out


def _sine(cycles: np.ndarray, mult: float) -> np.ndarray:
    return _tones(cycles, np.array([mult]), [1.0], np.zeros(1))


class _Model(Protocol):
    """A machine's own sound (normal, or with a parametric fault) and its additive fault parts."""

    parts: dict[str, _Part]

    def render(self, n: int, gates: Mapping[str, np.ndarray | float], anomaly: str | None) -> np.ndarray:
        """The next n samples. Continuous faults follow their `gates` (0..1 per sample); discrete ones (strokes)
        follow `anomaly`, the fault asked for now."""
        ...


@dataclass(frozen=True)
class RotorCharacter:
    """What makes one rotating machine id sound like itself."""

    f0: float  # shaft (or motor) speed, Hz
    mults: tuple[float, ...]  # partials as multiples of the shaft frequency
    amps: tuple[float, ...]
    mesh: tuple[bool, ...]  # which partials are gear-mesh partials (modulated by gear damage)
    gear_mult: float  # gear shaft rate as a multiple of f0 (0: no gearbox)
    jitter: float  # std of the slow fractional speed drift
    jitter_corr: float  # its correlation time, s
    flow_band: tuple[float, float]
    flow_level: float  # flow-noise RMS relative to the tonal part
    pulse_mult: float  # flow-noise pulsation rate as a multiple of f0 (pump vanes, fan blades)
    pulse_depth: float
    speed_spread: float  # recording-to-recording speed variation (fraction)
    res_freq: float  # housing resonance rung by bearing / gear impacts
    bearing_rate: float  # bearing defect impacts per second
    tick_interval: float = 0.0  # belt-joint ticks (ToyConveyor), s; 0 = none
    tick_freq: float = 1000.0
    tick_level: float = 0.0  # typical peak of one tick relative to the machine's RMS


def _rotor_character(machine: str, rng: np.random.Generator) -> RotorCharacter:
    u = lambda lo, hi: _uniform(rng, lo, hi)  # noqa: E731 - local shorthand keeps the tables below readable
    if machine == "fan":
        f0, blades = u(12, 25), int(rng.integers(5, 10))
        mults = [1, 2, 3, 4, blades, 2 * blades, 3 * blades]
        amps = [0.3 * u(0.3, 1) / k for k in (1, 2, 3, 4)] + [u(0.6, 1), u(0.3, 0.6), u(0.1, 0.3)]
        return RotorCharacter(f0, tuple(mults), tuple(amps), (False,) * 7, 0.0, u(0.003, 0.01), u(0.5, 2.0),
                              (u(40, 120), u(1500, 5000)), u(1.5, 3.0), float(blades), u(0.05, 0.2), 0.015,
                              u(2000, 5000), f0 * u(3.0, 5.5))
    if machine == "pump":
        f0, vanes = u(24, 50), int(rng.integers(5, 9))
        mults = [1, 2, 3, 4, 5, 6, vanes, 2 * vanes]
        amps = [u(0.2, 0.6) / k**0.7 for k in range(1, 7)] + [u(0.7, 1.2), u(0.3, 0.6)]
        return RotorCharacter(f0, tuple(mults), tuple(amps), (False,) * 8, 0.0, u(0.002, 0.006), u(0.5, 2.0),
                              (u(150, 400), u(1500, 3500)), u(0.7, 1.5), float(vanes), u(0.3, 0.6), 0.01,
                              u(1500, 4000), f0 * u(3.0, 5.5))
    # Toys: a small DC motor with commutator harmonics driving a gearbox.
    toycar = machine == "ToyCar"
    f0 = u(150, 280) if toycar else u(60, 120)
    poles = int(rng.integers(2, 4))
    ratio = u(3, 6) if toycar else u(8, 20)
    teeth = int(rng.integers(10, 19) if toycar else rng.integers(12, 25))
    n_h = 10 if toycar else 8
    mults = [float(k) for k in range(1, n_h + 1)]
    amps = [u(0.2, 0.5) / k**0.5 * (2.0 if k % (2 * poles) == 0 else 1.0) for k in range(1, n_h + 1)]
    mesh = teeth / ratio
    mults += [mesh, 2 * mesh, mesh - 1 / ratio, mesh + 1 / ratio]
    amps += [u(0.5, 1.0), u(0.2, 0.5), u(0.1, 0.25), u(0.1, 0.25)]
    is_mesh = (False,) * n_h + (True,) * 4
    if toycar:
        return RotorCharacter(f0, tuple(mults), tuple(amps), is_mesh, 1 / ratio, u(0.005, 0.015), u(0.3, 1.5),
                              (u(60, 200), u(800, 2000)), u(0.4, 0.9), 1 / (ratio * u(2, 4)), u(0.1, 0.3), 0.02,
                              u(2500, 6000), f0 / ratio * u(3.0, 5.5))
    return RotorCharacter(f0, tuple(mults), tuple(amps), is_mesh, 1 / ratio, u(0.003, 0.01), u(0.5, 2.0),
                          (u(80, 200), u(600, 1500)), u(0.5, 1.0), 1 / ratio, u(0.1, 0.3), 0.015,
                          u(2000, 5000), f0 / ratio * u(3.0, 5.5), u(0.3, 0.9), u(800, 2500), u(1.5, 3.0))


class _RotorModel:
    """Harmonics of a jittering shaft + pulsating flow noise (+ gear mesh, belt ticks), and its faults."""

    def __init__(self, char: RotorCharacter, key: tuple[int, ...], sample_rate: int,
                 strength: Mapping[str, float]) -> None:
        sr = sample_rate
        rng = rng_for((*key, 0))
        self.c, self.strength = char, strength
        self.f0 = char.f0 * float(np.exp(char.speed_spread * rng.uniform(-1, 1)))
        self.amps = np.array(char.amps) * np.exp(0.12 * rng.standard_normal(len(char.amps)))
        self.mults = np.array(char.mults)
        self.mesh = np.array(char.mesh)
        self.phases = rng.uniform(0, 1, len(char.amps))
        self.tonal_rms = float(np.sqrt(np.sum(self.amps**2) / 2))
        self.flow_level = char.flow_level * float(np.exp(0.1 * rng.standard_normal()))
        self.phase = Phase(sr, rng.uniform(0, 1))
        self.drift = SlowProcess((*key, 1), sr // 50, char.jitter_corr, sr)
        self.noise = WhiteNoise((*key, 2))
        self.flow = Filter(bandpass(*char.flow_band, sr))
        self.flow_norm = 1 / np.sqrt(self.flow.energy(sr))
        self.ticks = (
            _Impacts((*key, 3), char.tick_interval * sr, 0.02, 0.2, char.tick_freq, 8.0, sr, char.tick_level,
                     level_is_peak=True)
            if char.tick_interval
            else None
        )
        s = strength
        self.parts: dict[str, _Part] = {}
        if "bearing" in s:
            self.parts["bearing"] = _Impacts((*key, 10), sr / char.bearing_rate, 0.01, 0.3, char.res_freq, 12.0, sr,
                                             s["bearing"])
        if "rubbing" in s:
            self.parts["rubbing"] = _Bursts((*key, 11), 0.12 * sr, (char.res_freq * 0.4, char.res_freq * 1.2),
                                            0.02, sr, s["rubbing"])
        if "leak" in s:
            self.parts["leak"] = _Hiss((*key, 12), highpass(char.res_freq * 1.3, sr), sr, s["leak"])
        if "gear_damage" in s:
            self.parts["gear_damage"] = _Impacts((*key, 13), sr / (self.f0 * char.gear_mult), 0.01, 0.2,
                                                 char.res_freq * 0.7, 10.0, sr, 0.5 * s["gear_damage"])
        if "clogging" in s:
            lo, hi = char.flow_band
            self.flow_clogged = Filter(bandpass(lo, max(hi * (1 - 4 * s["clogging"]), 2 * lo), sr))
            self.clogged_norm = 1 / np.sqrt(self.flow_clogged.energy(sr))

    def render(self, n: int, gates: Mapping[str, np.ndarray | float], anomaly: str | None) -> np.ndarray:
        c, s = self.c, self.strength
        g_clog = gates.get("clogging", 0.0)
        g_imb = gates.get("imbalance", 0.0)
        g_gear = gates.get("gear_damage", 0.0)
        freq = self.f0 * (1 + c.jitter * self.drift.take(n))
        if s.get("clogging"):
            freq = freq * (1 - s["clogging"] * g_clog)
        cyc = self.phase.advance(freq)
        amps: list[np.ndarray | float] = list(self.amps)
        if s.get("imbalance"):
            amps[0] = amps[0] * (1 + 4 * s["imbalance"] * g_imb)
        if s.get("gear_damage") and np.any(g_gear):
            mod = 1 + s["gear_damage"] * g_gear * _sine(cyc, c.gear_mult)
            amps = [a * mod if m else a for a, m in zip(amps, self.mesh)]
        tonal = _tones(cyc, self.mults, amps, self.phases) / self.tonal_rms
        white = self.noise.take(n)
        flow = self.flow(white) * self.flow_norm
        if s.get("clogging"):
            if np.any(g_clog):
                flow = (1 - g_clog) * flow + g_clog * self.flow_clogged(white) * self.clogged_norm
            else:
                self.flow_clogged.zi[:] = 0.0
        if c.pulse_depth:
            flow = flow * (1 + c.pulse_depth * _sine(cyc, c.pulse_mult))
        out = tonal + self.flow_level * flow
        if self.ticks is not None:
            out = out + self.ticks.render(n)
        if s.get("imbalance") and np.any(g_imb):
            out = out * (1 + 0.5 * s["imbalance"] * g_imb * _sine(cyc, 1.0))
        return out


@dataclass(frozen=True)
class StrokeCharacter:
    """What makes one valve or slider id sound like itself."""

    interval: float  # seconds between stroke starts
    duration: float  # stroke length (valve: open time; slider: travel time), s
    jitter: float  # log-normal timing jitter
    start_click: tuple[float, float, float]  # (freq, q, amplitude)
    stop_click: tuple[float, float, float]
    thud: tuple[float, float]  # low body resonance (freq, amplitude) rung by every click
    smooth: float  # envelope time constant, s (valve: flow onset; slider: acceleration)
    noise_band: tuple[float, float]
    noise_level: float
    whine: tuple[float, ...]  # slider motor partial amplitudes (empty for the valve)
    whine_f: float  # slider motor pitch at full speed, Hz


def _stroke_character(machine: str, rng: np.random.Generator) -> StrokeCharacter:
    u = lambda lo, hi: _uniform(rng, lo, hi)  # noqa: E731
    if machine == "valve":
        interval = u(0.5, 1.6)
        return StrokeCharacter(interval, interval * u(0.25, 0.55), u(0.01, 0.04), (u(1500, 4500), u(6, 15), 1.0),
                               (u(800, 3000), u(6, 15), u(0.6, 1.5)), (u(120, 350), u(0.5, 1.0)), u(0.005, 0.02),
                               (u(300, 1000), u(2000, 6000)), u(0.05, 0.15), (), 0.0)
    interval = u(0.5, 1.25)  # one stroke out, one back: a cycle is two intervals
    duration = interval * u(0.5, 0.85)
    return StrokeCharacter(interval, duration, u(0.01, 0.03), (u(600, 2000), u(4, 10), u(0.2, 0.4)),
                           (u(1000, 3500), u(5, 15), 1.0), (u(100, 250), u(0.3, 0.8)), duration * u(0.15, 0.25),
                           (u(400, 1200), u(2500, 6000)), u(0.1, 0.3), tuple(u(0.2, 1.0) / k for k in range(1, 5)),
                           u(150, 450))


class _StrokeModel:
    """Valve open/close cycles and slider strokes: clicks at the ends, an envelope-gated noise between them."""

    def __init__(self, char: StrokeCharacter, key: tuple[int, ...], sample_rate: int,
                 strength: Mapping[str, float]) -> None:
        sr = sample_rate
        rng = rng_for((*key, 0))
        self.c, self.sr, self.strength = char, sr, strength
        scale = float(np.exp(0.02 * rng.standard_normal()))
        self.interval, self.duration = char.interval * scale * sr, char.duration * scale * sr
        self.noise_level = char.noise_level * float(np.exp(0.1 * rng.standard_normal()))
        self._key = key
        self._k = 0  # next stroke index
        self._next_start = rng.uniform(0, 1) * self.interval
        # rows: time (samples), channel (0 start click, 1 stop click, 2 travel step, 3 stuck step), value
        self._events = np.zeros((0, 3))
        self._level = np.zeros(2)  # travel and stuck levels carried across blocks
        self.pos = 0
        self.start_filter = Filter(resonator(*char.start_click[:2], sr))
        self.stop_filter = Filter(resonator(*char.stop_click[:2], sr))
        self.thud = Filter(resonator(char.thud[0], 3.0, sr))
        self.env_filter = Filter(lowpass(1 / (2 * np.pi * char.smooth), sr, order=2))
        self.stuck_filter = Filter(lowpass(1 / (2 * np.pi * char.smooth), sr, order=2))
        self.buzz_phase = Phase(sr, rng.uniform(0, 1))
        # a stuck valve's coil buzzes at twice the mains frequency; a stalled slider motor hums low
        self.buzz_f = 100.0 if not char.whine else 0.25 * char.whine_f
        self.noise = WhiteNoise((*key, 2))
        self.band = Filter(bandpass(*char.noise_band, sr))
        self.band_norm = 1 / np.sqrt(self.band.energy(sr))
        self.whine_phase = Phase(sr, rng.uniform(0, 1))
        self.whine_phases = rng.uniform(0, 1, len(char.whine))
        self.parts: dict[str, _Part] = {}
        if "leak" in strength:
            self.parts["leak"] = _Hiss((*key, 12), highpass(char.noise_band[1] * 0.9, sr), sr, strength["leak"])
        if "rubbing" in strength:
            self.parts["rubbing"] = _Bursts((*key, 11), 0.08 * sr, (char.stop_click[0] * 0.5, char.stop_click[0] * 1.5),
                                            0.02, sr, strength["rubbing"])

    def _schedule(self, end: int, anomaly: str | None) -> None:
        """Create strokes starting before `end`; faults present now decide how they are drawn."""
        c, s = self.c, self.strength
        new: list[tuple[float, int, float]] = []
        while self._next_start < end:
            rng = rng_for((*self._key, 3, self._k))
            d, u, bounce = rng.standard_normal(4), rng.uniform(), rng.uniform(0.02, 0.08, 2)
            jitter = c.jitter
            dur = self.duration * float(np.exp(0.5 * c.jitter * d[1]))
            if anomaly == "irregular_stroke":
                jitter += s["irregular_stroke"]
                dur *= float(np.exp(s["irregular_stroke"] * d[3]))
            dur = min(dur, 0.85 * self.interval)
            skip = anomaly == "missing_stroke" and u < s["missing_stroke"]
            start = self._next_start
            a_start = c.start_click[2] * float(np.exp(0.1 * d[2]))
            a_stop = c.stop_click[2] * float(np.exp(0.1 * d[0]))
            if skip:  # the actuator fires but the part sticks: a weak click, then a strained buzz instead of travel
                new += [(start, 0, 0.4 * a_start), (start, 3, 1.0), (start + dur, 3, -1.0)]
            else:
                new += [(start, 0, a_start), (start, 2, 1.0), (start + dur, 1, a_stop), (start + dur, 2, -1.0)]
                if anomaly == "irregular_stroke" and u < s["irregular_stroke"]:  # chatter: re-opens and shuts again
                    t_open = start + dur + bounce[0] * self.sr
                    t_shut = t_open + bounce[1] * self.sr
                    new += [(t_open, 0, 0.5 * a_start), (t_open, 2, 1.0), (t_shut, 1, 0.7 * a_stop), (t_shut, 2, -1.0)]
            step = self.interval * float(np.exp(jitter * d[0]))
            self._next_start = start + max(step, dur + 0.2 * self.sr)
            self._k += 1
        if new:
            self._events = np.concatenate([self._events, np.array(new)])

    def render(self, n: int, gates: Mapping[str, np.ndarray | float], anomaly: str | None) -> np.ndarray:
        start = self.pos
        end = self.pos = start + n
        self._schedule(end, anomaly)
        slots = np.floor(self._events[:, 0]).astype(np.int64)
        here = slots < end
        exc = np.zeros((4, n))
        np.add.at(exc, (self._events[here, 1].astype(np.int64), slots[here] - start), self._events[here, 2])
        self._events = self._events[~here]
        levels = np.cumsum(np.concatenate((self._level[:, None], exc[2:]), axis=1), axis=1)[:, 1:]
        self._level = levels[:, -1].copy()
        env = self.env_filter(levels[0])
        start_clicks, stop_clicks = self.start_filter(exc[0]), self.stop_filter(exc[1])
        body = self.thud(exc[0] + exc[1]) * self.c.thud[1]
        out = start_clicks + stop_clicks + body
        out = out + self.noise_level * env * self.band(self.noise.take(n)) * self.band_norm
        if self.c.whine:
            cyc = self.whine_phase.advance(self.c.whine_f * np.clip(env, 0.0, None))
            out = out + 0.3 * env * _tones(cyc, np.arange(1, len(self.c.whine) + 1), list(self.c.whine),
                                           self.whine_phases)
        if np.any(levels[1]) or np.any(self.stuck_filter.zi):
            stuck = self.stuck_filter(levels[1])
            cyc = self.buzz_phase.advance(np.full(n, self.buzz_f))
            buzz = _tones(cyc, np.arange(1.0, 7.0), [1, 0.7, 0.5, 0.35, 0.25, 0.2], np.zeros(6))
            out = out + 0.6 * self.noise_level * stuck * buzz
        else:
            self.buzz_phase.advance(np.full(n, self.buzz_f))
        rubbing = self.parts.get("rubbing")
        if isinstance(rubbing, _Bursts):  # a slider rubs only while it moves
            rubbing.gate = np.clip(env, 0.0, 1.0)
        return out


class _Background:
    """Factory noise: another machine's hum and mains hum, coloured broadband noise, occasional distant impacts.

    Each component is normalised analytically and the mix is scaled to unit RMS, so `snr_db` means what it says.
    """

    def __init__(self, char_key: tuple[int, ...], key: tuple[int, ...], sample_rate: int) -> None:
        sr = sample_rate
        rng, rr = rng_for(char_key), rng_for((*key, 0))
        self.hum_f = float(rng.uniform(18, 60))
        hum_amps = rng.uniform(0.2, 1.0, 5) / np.arange(1, 6)
        mains_amps = np.array([0.3, 0.15, 0.1]) * rng.uniform(0.5, 1.0, 3)
        self.hum_mults = np.concatenate([np.arange(1, 6), 50.0 / self.hum_f * np.arange(1, 4)])
        amps = np.concatenate([hum_amps, mains_amps]) * np.exp(0.15 * rr.standard_normal(8))
        self.hum_amps = amps / np.sqrt(np.sum(amps**2) / 2)
        self.hum_phases = rr.uniform(0, 1, 8)
        self.hum_phase = Phase(sr, rr.uniform(0, 1))
        self.hum_drift = SlowProcess((*key, 1), sr // 50, 2.0, sr)
        self.noise = WhiteNoise((*key, 2))
        self.low = Filter(lowpass(rng.uniform(150, 600), sr))
        self.mid = Filter(bandpass(rng.uniform(400, 800), rng.uniform(3000, 7000), sr))
        self.mid_w = float(rng.uniform(0.3, 0.6))
        self.floor_w = float(rng.uniform(0.1, 0.2))  # a white floor up to Nyquist, as every real microphone has
        both = self.low.impulse_response(sr) + self.mid_w * self.mid.impulse_response(sr)
        both[0] += self.floor_w
        self.broad_norm = 1 / np.sqrt(np.sum(both**2))
        self.wander = SlowProcess((*key, 3), sr // 20, 1.5, sr)
        self.impacts = _Impacts((*key, 4), rng.uniform(1.5, 4.0) * sr, 0.0, 0.3, rng.uniform(200, 1500),
                                rng.uniform(3, 10), sr, rng.uniform(1.5, 3.0), poisson=True, level_is_peak=True)
        self.hum_w = float(rng.uniform(0.3, 0.7) * np.exp(0.1 * rr.standard_normal()))
        self.norm = 1 / np.sqrt(self.hum_w**2 + 1 + 0.1**2 + self.impacts.rms**2)

    def render(self, n: int) -> np.ndarray:
        cyc = self.hum_phase.advance(self.hum_f * (1 + 0.003 * self.hum_drift.take(n)))
        hum = _tones(cyc, self.hum_mults, list(self.hum_amps), self.hum_phases)
        white = self.noise.take(n)
        broad = self.low(white) + self.mid_w * self.mid(white) + self.floor_w * white
        broad = broad * self.broad_norm * (1 + 0.1 * self.wander.take(n))
        return self.norm * (self.hum_w * hum + broad + self.impacts.render(n))


def _models(machine: str, char_key: tuple[int, ...], key: tuple[int, ...], sample_rate: int,
            strength: Mapping[str, float]) -> _Model:
    rng = rng_for(char_key)
    if machine in ("valve", "slider"):
        return _StrokeModel(_stroke_character(machine, rng), key, sample_rate, strength)
    return _RotorModel(_rotor_character(machine, rng), key, sample_rate, strength)


@lru_cache(maxsize=256)
def _machine_gain(machine: str, machine_id: int, sample_rate: int, seed: int) -> float:
    """1 / RMS of the normal machine part, measured on 4 s of a calibration recording of this id."""
    m = ALL_MACHINES.index(machine)
    model = _models(machine, (seed, m, machine_id, _CHARACTER), (seed, m, machine_id, _CALIBRATION), sample_rate,
                    STRENGTH[machine])
    x = model.render(4 * sample_rate, {}, None)
    return float(1.0 / max(np.sqrt(np.mean(x**2)), 1e-12))


class MachineVoice:
    """One machine (type + id) recorded in a factory, as an endless stream; `generate` continues where it stopped.

    `instance` selects the recording: the same id with another instance is the same machine on another day
    (slightly different speed and levels, new noise). `strength` overrides entries of `STRENGTH[machine]`.
    Output RMS is about `LEVEL` (machine and background together, mixed at `snr_db`).
    """

    def __init__(self, machine: str, machine_id: int, sample_rate: int = 16000, seed: int = 0, snr_db: float = 0.0,
                 *, instance: int = 0, strength: Mapping[str, float] | None = None) -> None:
        if machine not in ANOMALIES:
            raise ValueError(f"unknown machine type {machine!r}; known: {', '.join(ALL_MACHINES)}")
        for name, value in (("machine_id", machine_id), ("seed", seed), ("instance", instance)):
            if int(value) != value or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if sample_rate < 8000:
            raise ValueError(f"sample_rate must be at least 8000 Hz (fault resonances reach 6 kHz), got {sample_rate}")
        if not np.isfinite(snr_db):
            raise ValueError(f"snr_db must be finite, got {snr_db}")
        unknown = set(strength or {}) - set(ANOMALIES[machine])
        if unknown:
            raise ValueError(f"no fault {sorted(unknown)} for {machine}; known: {', '.join(ANOMALIES[machine])}")
        self.machine, self.machine_id, self.sample_rate = machine, int(machine_id), int(sample_rate)
        self.seed, self.snr_db, self.instance = int(seed), float(snr_db), int(instance)
        self.strength = {**STRENGTH[machine], **(strength or {})}
        m = ALL_MACHINES.index(machine)
        char_key = (self.seed, m, self.machine_id, _CHARACTER)
        key = (self.seed, m, self.machine_id, _REALISATION, self.instance)
        self._model = _models(machine, char_key, key, self.sample_rate, self.strength)
        self._background = _Background((*char_key, 1), (*key, 1), self.sample_rate)
        self._gain = _machine_gain(machine, self.machine_id, self.sample_rate, self.seed)
        self._gates = {kind: Gate(int(_RAMP_SECONDS * self.sample_rate)) for kind in ANOMALIES[machine]}
        self._machine_level = LEVEL / np.sqrt(1 + 10 ** (-self.snr_db / 10))
        self._background_level = self._machine_level * 10 ** (-self.snr_db / 20)
        self._pair: list[np.ndarray] | None = None  # collects the machine part while `generate_pair` runs

    def generate(self, n_samples: int, anomaly: str | None = None) -> np.ndarray:
        """The next `n_samples` (float32), with fault `anomaly` on (fading in/out over 50 ms when it changes)."""
        if int(n_samples) != n_samples or n_samples < 0:
            raise ValueError(f"n_samples must be a non-negative integer, got {n_samples!r}")
        if anomaly is not None and anomaly not in ANOMALIES[self.machine]:
            raise ValueError(f"no fault {anomaly!r} for {self.machine}; known: {', '.join(ANOMALIES[self.machine])}")
        # Blocks of 32k samples keep temporaries in cache (and off fresh mmap pages): faster than one big block,
        # and the same samples, since every generator is block-invariant.
        out = np.empty(int(n_samples), dtype=np.float32)
        for start in range(0, out.size, _BLOCK):
            out[start : start + _BLOCK] = self._block(min(_BLOCK, out.size - start), anomaly)
        return out

    def generate_pair(self, n_samples: int, anomaly: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The next `n_samples` as (clean, noisy): the machine alone, and the same samples with the factory
        background mixed in at `snr_db` (`noisy` is what `generate` returns): paired data for the noise models."""
        self._pair = []
        try:
            noisy = self.generate(n_samples, anomaly)
            clean = np.concatenate(self._pair) if self._pair else np.empty(0, dtype=np.float32)
        finally:
            self._pair = None
        return clean.astype(np.float32), noisy

    def _block(self, n: int, anomaly: str | None) -> np.ndarray:
        gates = {kind: gate.take(n, kind == anomaly) for kind, gate in self._gates.items()}
        machine = self._gain * self._model.render(n, gates, anomaly)
        for kind, part in self._model.parts.items():
            g = gates[kind]
            if np.isscalar(g) and g == 0.0:
                part.idle(n)
            else:
                machine = machine + g * part.render(n)
        machine = self._machine_level * machine
        if self._pair is not None:
            self._pair.append(machine)
        return machine + self._background_level * self._background.render(n)


def factory_background(n_samples: int, sample_rate: int = 16000, key: int = 0) -> np.ndarray:
    """`n_samples` of the generator's factory background alone (unit RMS; `key` picks the factory): the noise
    that noise-model training mixes into clean recordings when the user has no recording of their own site."""
    return _Background((int(key), _CHARACTER), (int(key), _REALISATION), int(sample_rate)).render(int(n_samples)).astype(
        np.float32)
