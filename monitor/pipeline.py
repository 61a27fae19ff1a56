"""Streaming scoring: audio blocks of all sources -> the bundle's stream scorer -> windows -> alarms.

The pipeline owns clocks, signal health (silence, clipping, NaN), gaps, resampling, alarms and events; everything
about features, stages and detectors is behind `Bundle.stream_scorer` (models/scoring.py). Sources that share a
bundle object and window share one scorer, so each tick computes the new features of all of them in one call and
scores them in one batched call (a vector-level model scores each new vector exactly once).

With a noise classifier (a `classifier` bundle, `noise=`), every source's audio (the same resampled chunks the
detectors get) also goes through the classifier's stream scorer, all sources in one batched call per round, with
the classifier's own window and hop. Its stream is reset wherever the detector's is (gaps, rate changes, bad
input, a failed scoring call). Each score event carries the source's latest noise score: that of the newest
classifier window ending no later than the scored window (on the same audio clock), None before the first one.

Source states set here, in precedence order: `silent` (level below `silence_dbfs`), then `clipping`, then `noisy`
(noise score above `noisy_above`, when that policy is set), else `online`. Silent and clipping come first: on
silent or clipped audio the noise score itself means little, and those two states suppress alarms, while `noisy`
does not: windows are scored and alarms raised and cleared as usual, and the state says that the decision
(alarm or no alarm) is unreliable.

The numeric work of a tick runs in a worker thread (`asyncio.to_thread`); the event loop only moves blocks and
events, so capture callbacks and sinks stay responsive while a tick computes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from models.levels import CLIP_LEVEL, MAX_SAMPLE
from monitor.alarms import AlarmTracker, uuid_ids
from monitor.config import AlarmPolicy, PipelineConfig
from monitor.events import AlarmEvent, CounterEvent, Event, ScoreUpdate, SourceStatus, ThresholdInfo
from monitor.sources import AudioBlock, Source

if TYPE_CHECKING:
    from models.bundle import Bundle
    from models.scoring import StreamScorer

log = logging.getLogger(__name__)

# Audio per source taken into one tick. A pipeline that fell behind would otherwise take everything queued at once:
# a tick over tens of seconds of hundreds of streams needs gigabytes of temporaries and runs slower per second of
# audio than small ticks, so it falls further behind. Bounded ticks keep memory flat and catch up.
MAX_TICK_SECONDS = 1.0


class StreamResampler:
    """`scipy.signal.resample_poly` computed block by block: the output equals resampling the whole stream at once
    (except the last few samples, which wait for more input). Needed because resampling each block on its own
    would put filter edge effects at every block boundary."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        from scipy.signal import firwin

        g = math.gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g
        max_rate = max(self.up, self.down)
        half_len = 10 * max_rate  # resample_poly's default filter design
        h = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * self.up
        pre_pad = self.down - half_len % self.down
        self.h = np.concatenate([np.zeros(pre_pad), h])
        self.r = (half_len + pre_pad) // self.down  # output samples resample_poly drops for the filter delay
        self.reset()

    def reset(self) -> None:
        self._buf = np.zeros(0, dtype=np.float64)
        self._start = 0  # absolute input index of _buf[0]; always a multiple of `down`
        self._next = 0  # next absolute output index to produce

    def __call__(self, x: np.ndarray) -> np.ndarray:
        from scipy.signal import upfirdn

        self._buf = np.concatenate([self._buf, np.asarray(x, dtype=np.float64)])
        n = self._start + self._buf.size
        last = ((n - 1) * self.up) // self.down - self.r  # last output whose inputs have all arrived
        if last < self._next:
            return np.zeros(0, dtype=np.float32)
        shift = self._start * self.up // self.down
        y = upfirdn(self.h, self._buf, self.up, self.down)
        out = y[self._next + self.r - shift : last + self.r - shift + 1].astype(np.float32)
        self._next = last + 1
        # keep only the inputs the next output still needs (from a multiple of `down`)
        need = ((self._next + self.r) * self.down - self.h.size) // self.up + 1
        keep_from = max(0, need - need % self.down if need > 0 else 0)
        if keep_from > self._start:
            self._buf = self._buf[keep_from - self._start :]
            self._start = keep_from
        return out


@dataclass
class _Slot:
    """One source inside the pipeline."""

    source: Source
    index: int  # stream index in the group's scorer
    tracker: AlarmTracker
    threshold_info: ThresholdInfo
    resampler: StreamResampler | None = None
    fed: int = 0  # samples given to the scorer since its stream was last reset (window ends count in these)
    state: str | None = None  # the source's state as this tick has left it (statuses are applied on the loop)
    last_time: float = 0.0
    last_arrival: float = 0.0
    sumsq: float = 0.0  # level and clipping of the audio since the last emitted window
    n_level: int = 0
    n_clipped: int = 0
    level: float = float("-inf")
    clipped: float = 0.0
    ended: bool = False
    noise_index: int | None = None  # stream index in the noise classifier's scorer (None: no classifier)
    noise: float | None = None  # the latest noise score (None: no classifier window since the last reset)
    noise_windows: list[tuple[int, float]] = field(default_factory=list)  # this round's, (end in `fed`, score)
    noise_offset: int = 0  # `fed` when the classifier's stream alone was last restarted (its ends count from there)


@dataclass
class _Group:
    """The sources scored by one bundle with one window and hop."""

    bundle: "Bundle"
    scorer: "StreamScorer"
    slots: list[_Slot] = field(default_factory=list)


@dataclass
class _Noise:
    """The noise classifier: one stream per source, fed the same chunks as the detectors."""

    bundle: "Bundle"
    scorer: "StreamScorer"
    noisy_above: float | None


@dataclass
class _Run:
    """Contiguous samples of one source within a tick (a new run starts at a gap or a rate change)."""

    gap: bool  # the audio before this run is not contiguous with it
    samples: np.ndarray
    rate: int
    end_time: float  # audio clock at the run's last sample
    arrival: float  # wall clock when its last block arrived


class Pipeline:
    """Owns the slots of all sources; `process(...)` is one synchronous tick, `run()` the loop around it."""

    def __init__(
        self,
        emit: Callable[[Event], None],
        policy: AlarmPolicy | None = None,
        settings: PipelineConfig | None = None,
        new_id: Callable[[], str] = uuid_ids,
        noise: "Bundle | None" = None,
        noisy_above: float | None = None,
    ) -> None:
        """`noise`: a `classifier` bundle whose window score is the probability that a source's audio is noisy;
        `noisy_above`: the level above which a source is `noisy` (None: no such state). A bundle of another kind,
        or a level without a classifier, is a ValueError."""
        self.emit = emit
        self.policy = policy or AlarmPolicy()
        self.settings = settings or PipelineConfig()
        self.new_id = new_id
        self._groups: dict[tuple[int, float, float], _Group] = {}
        self._slots: dict[str, tuple[_Group, _Slot]] = {}
        self._noise: _Noise | None = None
        if noise is not None:
            if noise.kind != "classifier":
                raise ValueError(f"noise bundle {noise.path} is a {noise.kind} bundle ({noise.name}), not a noise "
                                 "classifier: train one with `asd-offline train --model lstm_classifier`")
            try:
                scorer = noise.stream_scorer(0, noise.window_seconds, noise.hop_seconds, device=self.settings.device)
            except ValueError as exc:
                raise ValueError(f"noise bundle {noise.path}: {exc}") from None
            self._noise = _Noise(noise, scorer, noisy_above)
        elif noisy_above is not None:
            raise ValueError("noise.noisy_above is set but there is no noise classifier: give noise.bundle in the "
                             "config or --noise-bundle DIR")
        self.wake = asyncio.Event()

    # -- set-up ------------------------------------------------------------------------------------------------------

    def add_source(
        self,
        source: Source,
        bundle: "Bundle",
        threshold: float | None = None,
        window_seconds: float | None = None,
        hop_seconds: float | None = None,
    ) -> None:
        """Score `source` with `bundle`; sources with the same bundle object (and window) are batched together.

        Window and hop: the arguments, else the pipeline settings, else the bundle's. The threshold: the argument
        (the configuration's override, `configured` in the source's ThresholdInfo), else the bundle's for the
        source's machine id. A bundle that cannot score this source (it needs a machine id the source does not
        give, or it takes pre-computed vectors, not audio) is a ValueError."""
        if source.name in self._slots:
            raise ValueError(f"duplicate source name {source.name!r}")
        bundle.check_stream(source.machine_id)
        problem = self.noise_problem(bundle, source.machine_id)
        if problem:
            raise ValueError(problem)
        window_s = window_seconds or self.settings.window_seconds or bundle.window_seconds
        hop_s = hop_seconds or self.settings.hop_seconds or bundle.hop_seconds
        if hop_s > window_s:
            raise ValueError(f"a hop of {hop_s:g} s is longer than the {window_s:g} s window: the audio between "
                             "windows would never be scored")
        key = (id(bundle), window_s, hop_s)
        group = self._groups.get(key)
        if group is None:
            scorer = bundle.stream_scorer(0, window_s, hop_s, device=self.settings.device)
            group = self._groups[key] = _Group(bundle, scorer)
        thr = float(bundle.threshold_for(source.machine_id) if threshold is None else threshold)
        tracker = AlarmTracker(source.name, bundle.name, thr, self.policy, self.new_id)
        info = threshold_info(source.name, bundle, thr, source.machine_id, configured=threshold is not None)
        slot = _Slot(source, group.scorer.add_stream(source.machine_id), tracker, info)
        if self._noise is not None:
            slot.noise_index = self._noise.scorer.add_stream(source.machine_id)
        group.slots.append(slot)
        self._slots[source.name] = (group, slot)
        source.queue.wake = self.wake

    def noise_problem(self, bundle: "Bundle", machine_id: str | None = None) -> str | None:
        """Why the noise classifier cannot score the audio of a source scored by `bundle` (None: it can). It gets
        the chunks the detector gets, so it must take audio at the detector bundle's sample rate."""
        if self._noise is None:
            return None
        noise = self._noise.bundle
        try:
            noise.check_stream(machine_id, kind="classifier")
        except ValueError as exc:
            return f"noise classifier {noise.path} cannot score the source: {exc}"
        if noise.sample_rate != bundle.sample_rate:
            return (f"noise classifier {noise.path} takes {noise.sample_rate} Hz audio, but {bundle.path} "
                    f"({bundle.name}) scores at {bundle.sample_rate} Hz: the classifier is fed the detector's audio, "
                    "so train it at that rate")
        return None

    @property
    def models(self) -> list[str]:
        """Names of the bundles in use (for sink labels)."""
        return sorted({g.bundle.name for g in self._groups.values()})

    @property
    def noise_model(self) -> str | None:
        """Name of the noise classifier in use (None: none)."""
        return None if self._noise is None else self._noise.bundle.name

    # -- the loop ----------------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Announce every source's threshold (a ThresholdInfo each, before any score), then tick until `stop` is set
        or every source has ended (each ended source's alarm is closed as it ends)."""
        self._publish([slot.threshold_info for _, slot in self._slots.values()])
        while not stop.is_set():
            waiter = asyncio.ensure_future(self.wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            self.wake.clear()
            live = [(name, slot.source.queue) for name, (_, slot) in self._slots.items() if not slot.ended]
            drained = {name: queue.drain(MAX_TICK_SECONDS) for name, queue in live}
            ended = [name for name, queue in live if queue.ended and not len(queue)]
            if any(len(queue) for _, queue in live):
                self.wake.set()  # more is queued than one tick takes: the next tick starts at once
            if any(drained.values()):
                self._publish(await asyncio.to_thread(self.process, drained))
            for name in ended:
                self._publish(self.end_source(name, "end of input"))
            if all(slot.ended for _, slot in self._slots.values()):
                return

    def close(self) -> None:
        """End every open alarm (shutdown)."""
        for _, slot in self._slots.values():
            if not slot.ended:
                self._publish(slot.tracker.close(slot.last_time or time.time(), "shutdown"))

    def end_source(self, name: str, detail: str) -> list[Event]:
        _, slot = self._slots[name]
        slot.ended = True
        events: list[Event] = list(slot.tracker.close(slot.last_time or time.time(), detail))
        events.append(SourceStatus(name, "ended", detail, time.time()))
        return events

    def _publish(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, SourceStatus):
                _, slot = self._slots[ev.source]
                slot.source.set_state(ev.state, ev.detail)  # dedupes, then emits
            else:
                self.emit(ev)

    # -- one tick (worker thread) ------------------------------------------------------------------------------------

    def process(self, drained: dict[str, list[AudioBlock]]) -> list[Event]:
        """Score everything that arrived; returns the events in order.

        Usually one round; a gap inside the drained blocks splits a source's audio into rounds so that the audio
        before the gap is scored in its own context before the stream restarts. Each round feeds every group's
        scorer once and the noise classifier once (all sources of all groups), before the detectors' windows
        become events, so that each window can carry the noise score of the same audio."""
        events: list[Event] = []
        with torch.inference_mode():
            work: list[tuple[_Group, dict[int, tuple[_Slot, list[_Run]]]]] = []
            for group in self._groups.values():
                runs = {
                    slot.index: (slot, _runs(drained[slot.source.name]))
                    for slot in group.slots
                    if drained.get(slot.source.name)
                }
                if runs:
                    for slot, _ in runs.values():
                        slot.state = slot.source.state
                    work.append((group, runs))
            n_rounds = max((len(r) for _, runs in work for _, r in runs.values()), default=0)
            for r in range(n_rounds):
                events += self._round(work, r)
        return events

    def _round(self, work: list[tuple[_Group, dict[int, tuple[_Slot, list[_Run]]]]], r: int) -> list[Event]:
        """Round `r`: prepare every source's r-th run, score the noise of all of them, then each group's windows."""
        events: list[Event] = []
        prepared = []
        for group, runs in work:
            t0 = time.perf_counter()
            chunks: list[np.ndarray | None] = [None] * len(group.scorer)
            for i, (slot, slot_runs) in runs.items():
                if r < len(slot_runs):
                    chunks[i] = self._prepare(group, slot, slot_runs[r], events)
            prepared.append((group, runs, chunks, time.perf_counter() - t0))
        if self._noise is not None:
            events += self._score_noise([(runs[i][0], c) for _, runs, chunks, _ in prepared
                                         for i, c in enumerate(chunks) if c is not None])
        for group, runs, chunks, t_prepare in prepared:
            if all(c is None for c in chunks):
                continue
            t0 = time.perf_counter()
            try:
                windows = group.scorer.accept(chunks)
            except Exception as exc:  # noqa: BLE001 - one bad batch must not stop the daemon
                events += self._scoring_failed(group, [runs[i][0] for i, c in enumerate(chunks) if c is not None],
                                               exc)
                continue
            inference = t_prepare + time.perf_counter() - t0
            now = time.time()
            sr = group.bundle.sample_rate
            for i, found in enumerate(windows):
                if not found:
                    continue
                slot = runs[i][0]
                for end, score in found:
                    _take_noise(slot, end)
                    t = slot.last_time - (slot.fed - end) / sr
                    events += self._window_events(group, slot, score, t, inference, now)
        for _, runs, _, _ in prepared:  # classifier windows after each source's last scored window of the round
            for slot, _ in runs.values():
                _take_noise(slot, None)
        return events

    def _score_noise(self, fed: list[tuple[_Slot, np.ndarray]]) -> list[Event]:
        """One batched classifier call for every source fed this round; its windows wait on the slots until the
        detectors' windows of the round are turned into events."""
        assert self._noise is not None
        if not fed:
            return []
        scorer = self._noise.scorer
        chunks: list[np.ndarray | None] = [None] * len(scorer)
        for slot, chunk in fed:
            assert slot.noise_index is not None
            chunks[slot.noise_index] = chunk
        try:
            windows = scorer.accept(chunks)
        except Exception as exc:  # noqa: BLE001 - the classifier failing must not stop anomaly scoring
            log.error("noise classifier %s on %d source(s) failed: %s", self._noise.bundle.name, len(fed), exc,
                      exc_info=exc)
            detail = f"noise classifier failed ({type(exc).__name__}: {exc}): its stream restarted"
            events: list[Event] = []
            for slot, _ in fed:
                assert slot.noise_index is not None
                scorer.reset(slot.noise_index)
                slot.noise, slot.noise_windows, slot.noise_offset = None, [], slot.fed
                events.append(CounterEvent("input_errors", slot.source.name, 1, detail))
            return events
        for slot, _ in fed:
            assert slot.noise_index is not None
            slot.noise_windows += [(slot.noise_offset + end, score) for end, score in windows[slot.noise_index]
                                   if math.isfinite(score)]
        return []

    def _scoring_failed(self, group: _Group, slots: list[_Slot], exc: Exception) -> list[Event]:
        """Every source of the failed call restarts its stream (their windows of this tick are lost), with an
        error status and a count that name what happened."""
        log.error("scoring %d source(s) with %s failed: %s", len(slots), group.bundle.name, exc, exc_info=exc)
        detail = f"scoring failed ({type(exc).__name__}: {exc}): feature stream restarted"
        events: list[Event] = []
        for slot in slots:
            self._reset(group, slot)
            slot.state = "error"
            events.append(CounterEvent("input_errors", slot.source.name, 1, detail))
            events.append(SourceStatus(slot.source.name, "error", detail, time.time()))
        return events

    def _prepare(self, group: _Group, slot: _Slot, run: _Run, events: list[Event]) -> np.ndarray | None:
        """Gap handling, resampling, NaN checks and level accounting for one contiguous run of one slot."""
        target = group.bundle.sample_rate
        samples = run.samples
        if run.gap:
            self._reset(group, slot)
        if run.rate != target:
            if slot.resampler is None or (slot.resampler.down, slot.resampler.up) != _ratio(run.rate, target):
                slot.resampler = StreamResampler(run.rate, target)
                self._reset(group, slot)
            samples = slot.resampler(samples)
        magnitude = np.abs(samples)
        peak = float(magnitude.max()) if samples.size else 0.0
        if not np.isfinite(peak) or peak > MAX_SAMPLE:
            bad = int(np.count_nonzero(~np.isfinite(samples)))
            what = f"{bad} NaN/inf samples" if bad else f"samples up to {peak:.3g}, not audio in [-1, 1]"
            detail = f"{what} in the input: feature stream restarted"
            events.append(CounterEvent("input_errors", slot.source.name, 1, detail))
            events.append(SourceStatus(slot.source.name, "error", detail, time.time()))
            slot.state = "error"
            self._reset(group, slot)
            return None
        slot.last_time = run.end_time
        slot.last_arrival = run.arrival
        slot.fed += samples.size
        # not np.dot: above a few thousand elements it wakes the BLAS thread pool, which costs milliseconds per call
        # while torch's threads hold the cores
        slot.sumsq += float(np.square(samples, dtype=np.float64).sum())
        slot.n_level += samples.size
        slot.n_clipped += int(np.count_nonzero(magnitude >= CLIP_LEVEL))
        return samples

    def _reset(self, group: _Group, slot: _Slot) -> None:
        """Restart the slot's stream (and its noise classifier stream) after a gap: no frame or window straddles
        it."""
        group.scorer.reset(slot.index)
        if self._noise is not None and slot.noise_index is not None:
            self._noise.scorer.reset(slot.noise_index)
        slot.noise, slot.noise_windows, slot.noise_offset = None, [], 0
        if slot.resampler is not None:
            slot.resampler.reset()
        slot.fed = 0

    def _window_events(
        self, group: _Group, slot: _Slot, score: float, t: float, inference: float, now: float
    ) -> list[Event]:
        if not math.isfinite(score):  # NaN weights or features: not a score the alarm logic can use
            detail = "the model produced a non-finite score (NaN/inf): window skipped; check the bundle"
            slot.state = "error"
            return [CounterEvent("input_errors", slot.source.name, 1, detail),
                    SourceStatus(slot.source.name, "error", detail, now)]
        silence_dbfs, clipping_fraction = self.settings.silence_dbfs, self.settings.clipping_fraction
        if slot.n_level:  # several windows in one tick share the level of the audio that completed them
            slot.level = 10 * math.log10(slot.sumsq / slot.n_level) if slot.sumsq > 0 else float("-inf")
            slot.clipped = slot.n_clipped / slot.n_level
            slot.sumsq, slot.n_level, slot.n_clipped = 0.0, 0, 0
        level, noise = slot.level, slot.noise
        noisy_above = None if self._noise is None else self._noise.noisy_above
        events: list[Event] = []
        state = "online"  # precedence: silent, clipping, noisy (see the module docstring)
        if level < silence_dbfs:
            state = "silent"
        elif slot.clipped > clipping_fraction:
            state = "clipping"
        elif noisy_above is not None and noise is not None and noise > noisy_above:
            state = "noisy"
        if slot.state in ("online", "silent", "clipping", "noisy", "error") and slot.state != state:
            detail = {"silent": f"level {level:.1f} dBFS below {silence_dbfs:g}", "clipping": "input clipping",
                      "noisy": f"noise score {noise or 0:.2f} above {noisy_above}: alarm decisions are unreliable"}
            events.append(SourceStatus(slot.source.name, state, detail.get(state, ""), now))  # type: ignore[arg-type]
            slot.state = state
        # silence and clipping suppress alarms (nothing to judge); a noisy source is still judged, with a warning
        alarm_events: list[AlarmEvent] = slot.tracker.update(score, t, suppressed=state in ("silent", "clipping"))
        events.append(
            ScoreUpdate(
                source=slot.source.name,
                model=group.bundle.name,
                score=score,
                threshold=slot.tracker.threshold,
                time=t,
                level_dbfs=level,
                alarm_active=slot.tracker.active,
                inference_seconds=inference,
                lag_seconds=max(0.0, now - slot.last_arrival),
                noise=noise,
            )
        )
        events += alarm_events
        return events


def threshold_info(source: str, bundle: "Bundle", threshold: float, machine_id: str | None,
                   configured: bool = False) -> ThresholdInfo:
    """The ThresholdInfo of a source scored by `bundle` against `threshold`: the bundle's calibration of its
    threshold for `machine_id`, or none for a `configured` one (the bundle's describes another number). Fields the
    bundle's JSON has in another shape are left unknown rather than guessed."""
    if configured:
        return ThresholdInfo(source, bundle.name, threshold, "configured")
    cal = bundle.calibration_for(machine_id) or {}

    def number(value: object) -> float | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return float(value) if ok else None

    def pair(value: object) -> tuple[float | None, float | None] | None:
        return (number(value[0]), number(value[1])) if isinstance(value, list) and len(value) == 2 else None

    lo, hi = pair(cal.get("false_alarm_rate_interval")) or (None, None)
    n_scores = number(cal.get("n_scores"))
    scores = cal.get("scores")
    return ThresholdInfo(
        source, bundle.name, threshold, bundle.threshold_method,
        scores=scores if isinstance(scores, str) else None,
        n_scores=None if n_scores is None else int(n_scores),
        level=number(cal.get("level")),
        false_alarm_rate=number(cal.get("false_alarm_rate")),
        false_alarm_rate_interval=None if lo is None or hi is None else (lo, hi),
        quantile=number(cal.get("quantile")),
        quantile_interval=pair(cal.get("quantile_interval")),
    )


def _take_noise(slot: _Slot, end: int | None) -> None:
    """Make the slot's latest noise score that of its newest classifier window ending by sample `end` (None: all
    of this round's)."""
    while slot.noise_windows and (end is None or slot.noise_windows[0][0] <= end):
        slot.noise = slot.noise_windows.pop(0)[1]


def _ratio(rate_in: int, rate_out: int) -> tuple[int, int]:
    g = math.gcd(rate_in, rate_out)
    return rate_in // g, rate_out // g


def _runs(blocks: list[AudioBlock]) -> list[_Run]:
    """Concatenate consecutive blocks into runs, starting a new run at each gap or rate change."""
    groups: list[list[AudioBlock]] = []
    for b in blocks:
        if not groups or b.gap or b.sample_rate != groups[-1][0].sample_rate:
            groups.append([])
        groups[-1].append(b)
    return [
        _Run(g[0].gap, np.concatenate([np.asarray(b.samples, dtype=np.float32) for b in g]), g[0].sample_rate,
             g[-1].time, g[-1].arrival)
        for g in groups
    ]
