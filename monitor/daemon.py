"""The daemon: load bundles, start sinks, sources and the pipeline, and shut all of it down cleanly.

Shutdown order matters for what the outside world sees last: sources stop, the pipeline ends open alarms (`end`
events, alarm `OFF`), and only then the sinks close, so MQTT's final message is the retained `offline`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from monitor.config import MonitorConfig, SourceConfig
from monitor.events import CounterEvent, Event, Sink
from monitor.journal import AlarmJournal, journal_path
from monitor.pipeline import Pipeline
from monitor.sinks.log import LogSink
from monitor.sources import (
    BlockQueue,
    MicSource,
    PortAudioHub,
    ReplaySource,
    Source,
    SynthSource,
    expand_replay_paths,
    source_name,
)

if TYPE_CHECKING:
    from models.bundle import Bundle

log = logging.getLogger(__name__)


class SynthSpec(Protocol):
    """A generated stream (the demo's machines): a name, `generate(n) -> float32[n]`, its machine id."""

    name: str
    generate: Callable[[int], np.ndarray]
    machine_id: str | None


class DaemonError(RuntimeError):
    """The daemon cannot start (no bundle, no sources); the message says what to give it."""


class Fanout:
    """Delivers every event to every sink. A sink that raises is logged and counted, never allowed to stop
    the others or the pipeline."""

    def __init__(self) -> None:
        self.sinks: list[Sink] = []

    def publish(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink.publish(event)
            except Exception as exc:  # noqa: BLE001 - a broken sink must not take the monitor down
                log.warning("sink %s failed on %s: %s", sink.name, type(event).__name__, exc, exc_info=True)
                if not isinstance(event, CounterEvent):
                    self.publish(CounterEvent("sink_errors", sink.name, 1, str(exc), {"sink": sink.name}))


@dataclass
class _Entry:
    source: Source
    bundle: "Bundle | None"
    threshold: float | None
    problem: str | None  # why the source cannot run, or None


class Daemon:
    """One monitor instance. `run()` returns the exit code.

    `synth` streams (the demo) are scored with `synth_bundle`; `sinks` are added to those the config asks for
    (benchmarks and tests use it to observe events in-process)."""

    def __init__(
        self,
        cfg: MonitorConfig,
        synth: list[SynthSpec] | None = None,
        synth_bundle: "Bundle | None" = None,
        sinks: list[Sink] | None = None,
        tui: bool = True,
    ) -> None:
        self.cfg = cfg
        self.synth = synth or []
        self.synth_bundle = synth_bundle
        self.fanout = Fanout()
        self._extra_sinks = sinks or []
        self._tui = tui
        self.stop_event = asyncio.Event()
        self._bundles: dict[Path, "Bundle"] = {}
        self.journal = AlarmJournal(journal_path(cfg.state_dir, cfg.node))

    # -- bundles -----------------------------------------------------------------------------------------------------

    def _bundle(self, path: Path) -> "Bundle":
        """Each bundle directory is loaded once: sources sharing it share one object, hence one batched group."""
        from models.bundle import BundleError, load_bundle

        try:
            key = path.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop is a RuntimeError in pathlib
            raise BundleError(f"bundle directory {path}: {exc}") from None
        if key not in self._bundles:
            self._bundles[key] = load_bundle(path, device=self.cfg.pipeline.device)
            b = self._bundles[key]
            log.info("bundle %s: %s for %s, threshold %.4g", path, b.name, b.machine, b.threshold)
        return self._bundles[key]

    def _noise_bundle(self) -> "Bundle | None":
        """The noise classifier (`noise.bundle`, `--noise-bundle`), or None. Unlike a source's own bundle, it
        failing to load stops the daemon: it was asked for, and its absence would go unnoticed."""
        from models.bundle import BundleError

        noise = self.cfg.noise
        if noise.bundle is None:
            return None
        try:
            return self._bundle(noise.bundle)  # the pipeline checks that it is a classifier that can stream
        except (BundleError, OSError, ValueError) as exc:
            raise DaemonError(f"cannot load noise bundle {noise.bundle}: {exc}") from None

    # -- sinks -------------------------------------------------------------------------------------------------------

    def _build_sinks(self, sources: list[tuple[str, str | None]], model: str, noise: bool = False) -> list[Sink]:
        """The configured sinks for `sources` ((name, model name, None where its bundle failed)); `model` names
        every bundle in use; `noise`: a noise classifier scores the sources."""
        from models.device import describe, select_device

        sinks_cfg = self.cfg.sinks
        device = describe(select_device(self.cfg.pipeline.device))
        sinks: list[Sink] = [*self._extra_sinks, LogSink(), self.journal]
        prometheus = None
        if sinks_cfg.prometheus.enabled:
            from monitor.sinks.prometheus import PrometheusSink

            prom = sinks_cfg.prometheus
            prometheus = PrometheusSink(prom.port, prom.host, model=model, device=device, sources=sources)
            sinks.append(prometheus)
        if sinks_cfg.mqtt is not None:
            from monitor.sinks.mqtt import MqttSink

            sinks.append(MqttSink(sinks_cfg.mqtt, self.cfg.node, sources=[name for name, _ in sources],
                                  on_counter=self.fanout.publish, noise=noise))
        if sinks_cfg.jsonl.path is not None:
            from monitor.sinks.jsonl import JsonlSink

            jl = sinks_cfg.jsonl
            sinks.append(JsonlSink(jl.path, include_scores=jl.include_scores, include_counters=jl.include_counters))
        if self._tui and sinks_cfg.tui.enabled:
            from monitor.sinks.tui import TuiSink

            sinks.append(TuiSink(device=device, noise=noise))
        if prometheus is not None:  # error counters of every sink exist from the start
            prometheus.expect_sinks(s.name for s in sinks)
        return sinks

    # -- sources -------------------------------------------------------------------------------------------------

    def _build_sources(self) -> list[_Entry]:
        """Every enabled source with its bundle, or with the reason it cannot run (its bundle failed to load)."""
        cfg = self.cfg
        p, r = cfg.pipeline, cfg.replay
        hub = PortAudioHub()
        taken = {s.name for s in cfg.sources if s.name}
        out: list[_Entry] = []
        for sc in cfg.sources:
            if not sc.enabled:
                continue
            spec = str(sc.device) if sc.device is not None else (sc.replay or ["replay"])[0]
            name = sc.name or source_name(spec, taken)
            bundle, problem = self._bundle_for(name, sc, sc.machine_id or cfg.machine_id)
            rate = int(bundle.sample_rate) if bundle is not None else 16000
            queue = BlockQueue(p.queue_blocks)
            src: Source
            if sc.device is not None:
                src = MicSource(name, sc.device, queue, self.fanout.publish, rate, hub, sc.channel, p.block_seconds,
                                p.watchdog_seconds)
            else:
                paths = expand_replay_paths(sc.replay or [])
                src = ReplaySource(name, paths, queue, self.fanout.publish, rate, p.block_seconds, r.speed,
                                   r.duration_seconds, loop=r.loop, channel=sc.channel)
            src.machine_id = sc.machine_id or cfg.machine_id
            out.append(_Entry(src, bundle, sc.threshold, problem))
        for spec in self.synth:
            assert self.synth_bundle is not None
            src = SynthSource(spec.name, spec.generate, BlockQueue(p.queue_blocks), self.fanout.publish,
                              self.synth_bundle.sample_rate, p.block_seconds, r.speed, r.duration_seconds)
            src.machine_id = spec.machine_id
            out.append(_Entry(src, self.synth_bundle, None, None))
        if not out:
            raise DaemonError("nothing to monitor: give --device, --replay, --demo or `sources:` in --config")
        return out

    def _bundle_for(self, name: str, sc: SourceConfig, machine_id: str | None) -> tuple["Bundle | None", str | None]:
        """A source's own bundle failing (to load, or to fit the source) stops that source only; the default
        bundle failing stops the daemon."""
        from models.bundle import BundleError

        path = sc.bundle or self.cfg.bundle
        if path is None:
            raise DaemonError(f"source {name}: no bundle (give --bundle DIR or sources[].bundle in the config)")
        try:
            bundle = self._bundle(path)
        except (BundleError, OSError, ValueError) as exc:
            problem = f"cannot load bundle {path}: {exc}"
        else:
            try:
                bundle.check_stream(machine_id)
                return bundle, None
            except BundleError as exc:
                problem = f"bundle {path} cannot score source {name}: {exc}"
        if sc.bundle is None:
            raise DaemonError(problem)
        return None, problem

    # -- run ---------------------------------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            return await self._run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s: shutting down", sig.name)
        self.stop_event.set()

    async def _run(self) -> int:
        p = self.cfg.pipeline
        _set_torch_threads(p.torch_threads)
        noise = self._noise_bundle()
        try:
            pipeline = Pipeline(self.fanout.publish, self.cfg.alarms, p, noise=noise,
                                noisy_above=self.cfg.noise.noisy_above)
        except ValueError as exc:  # not a classifier, or its window is shorter than one of its feature vectors
            raise DaemonError(str(exc)) from None
        entries = self._build_sources()
        mismatched = {problem for e in entries if e.bundle is not None
                      for problem in [pipeline.noise_problem(e.bundle, e.source.machine_id)] if problem}
        if mismatched:  # the classifier was asked for every source: not one it cannot score is left without it
            raise DaemonError("; ".join(sorted(mismatched)))
        for e in entries:
            if e.problem is None:
                assert e.bundle is not None
                try:
                    pipeline.add_source(e.source, e.bundle, e.threshold)
                except ValueError as exc:  # e.g. a window shorter than one feature vector: this source only
                    e.problem = f"bundle {e.bundle.name} cannot score source {e.source.name}: {exc}"
        good = [e for e in entries if e.problem is None]
        sinks = self._build_sinks([(e.source.name, e.bundle.name if e.bundle is not None else None) for e in entries],
                                  ",".join(pipeline.models), noise=noise is not None)
        self.fanout.sinks = sinks
        for sink in sinks:
            await sink.start()
        for end in self.journal.stale_ends(time.time()):  # before this run's first alarm can be journalled
            self.fanout.publish(end)
        for e in entries:
            if e.problem is not None:
                e.source.set_state("error", e.problem)
                e.source.count("input_errors", detail=e.problem)
        if not good:
            await self._close_sinks(sinks)
            raise DaemonError("no source could be started: " + "; ".join(str(e.problem) for e in entries))
        tasks = [asyncio.create_task(e.source.run(), name=f"source-{e.source.name}") for e in good]
        try:
            await pipeline.run(self.stop_event)
        finally:
            for e in good:
                e.source.stop()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for e, result in zip(good, results):
                if isinstance(result, Exception):
                    log.error("source %s failed: %s", e.source.name, result, exc_info=result)
            pipeline.close()
            await self._close_sinks(sinks)
        return 0

    @staticmethod
    async def _close_sinks(sinks: list[Sink]) -> None:
        for sink in sinks:
            try:
                await sink.close()
            except Exception:  # noqa: BLE001 - closing the others matters more
                log.warning("closing sink %s failed", sink.name, exc_info=True)


def _set_torch_threads(n: int | None) -> None:
    """Leave a core to the event loop (capture callbacks, pacing, sinks): torch threads that outnumber the free
    cores spin against it and each other, which on two cores made scoring several times slower, not faster."""
    import os

    import torch

    torch.set_num_threads(n or max(1, (os.cpu_count() or 2) - 1))
