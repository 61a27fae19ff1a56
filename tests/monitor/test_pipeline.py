"""The streaming pipeline: window scores equal offline scoring of the same window, batching over sources changes
nothing, each vector is scored once per tick in one call, and bad audio (NaN, silence, gaps) is handled."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import numpy as np
import pytest

from models.bundle import Bundle, load_bundle
from models.detectors import REGISTRY
from models.training.recipe import build_spec, fit_bundle
from monitor.config import AlarmPolicy, PipelineConfig
from monitor.events import AlarmEvent, CounterEvent, ScoreUpdate, SourceStatus, ThresholdInfo
from monitor.pipeline import Pipeline, StreamResampler
from monitor.sources import AudioBlock, BlockQueue, Source
from tests import plugins
from tests.helpers import SR, machine_audio, make_noise_classifier_bundle, make_tiny_bundle, noisy_pair_audio

CPU = PipelineConfig(device="cpu")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny"), device="cpu")


@pytest.fixture(scope="module")
def window_bundle(tmp_path_factory: pytest.TempPathFactory, bundle: Bundle):
    """A real bundle of a window-level detector (a quantile of per-vector distances, not a mean: it can only be
    right if the pipeline hands over the whole window), with the tiny bundle's feature and a 0.5 s hop."""
    with plugins.plugins_registered():
        cls = REGISTRY["test_window_quantile"]
        spec = build_spec(cls.name, {"feature": bundle.feature.to_dict(), "threshold": "percentile:95",
                                     "window_seconds": bundle.window_seconds, "hop_seconds": 0.5})
        feats = spec.feature.extract_batch([machine_audio(2.0, seed) for seed in range(6)])
        out = fit_bundle(tmp_path_factory.mktemp("wl") / "wl", spec, feats[:4], None, feats[4:], None, machine="hum")
        yield load_bundle(out, device="cpu")


class StubSource(Source):
    """A source the test feeds by hand (the pipeline only needs its name, queue and state)."""

    async def run(self) -> None:  # pragma: no cover - never started in these tests
        raise AssertionError("not used")


@dataclass
class Collected:
    events: list

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def pipeline_with(bundle, names, **kwargs) -> tuple[Pipeline, dict[str, Source], Collected]:
    """A pipeline over hand-fed sources; `out` collects what it emits outside `process()` (e.g. at close)."""
    out = Collected([])
    pipe = Pipeline(out.events.append, settings=CPU, **kwargs)
    sources = {}
    for n in names:
        src = StubSource(n, BlockQueue(8), out.events.append)
        src.state = "online"
        pipe.add_source(src, bundle)
        sources[n] = src
    return pipe, sources, out


def blocks_of(x: np.ndarray, sizes, t0: float = 1000.0, sr: int = SR) -> list[AudioBlock]:
    out, pos, i = [], 0, 0
    while pos < x.size:
        n = sizes[i % len(sizes)]
        chunk = x[pos : pos + n]
        pos += chunk.size
        i += 1
        out.append(AudioBlock(chunk, sr, t0 + pos / sr, t0 + pos / sr))
    return out


def run_ticks(pipe: Pipeline, feeds: dict[str, list[AudioBlock]]) -> list:
    """One tick per block index: tick k carries block k of every source that still has one."""
    events = []
    for k in range(max(len(b) for b in feeds.values())):
        events += pipe.process({n: [b[k]] for n, b in feeds.items() if k < len(b)})
    return events


def window_count(bundle, n_samples: int) -> int:
    cfg = bundle.feature
    W = cfg.n_vectors(int(round(bundle.window_seconds * bundle.sample_rate)))
    H = int(round(bundle.hop_seconds * bundle.sample_rate / cfg.hop_length))
    n = cfg.n_vectors(n_samples)
    return 0 if n < W else (n - W) // H + 1


def expected_window_scores(bundle, x: np.ndarray, n_windows: int) -> np.ndarray:
    """Offline: the samples of each window (W vectors ending every H vectors) scored by `score_features`."""
    cfg = bundle.feature
    W = cfg.n_vectors(int(round(bundle.window_seconds * bundle.sample_rate)))
    H = int(round(bundle.hop_seconds * bundle.sample_rate / cfg.hop_length))
    out = []
    for k in range(n_windows):
        end = W + k * H  # vectors 0..end-1 have been seen
        start_sample = (end - W) * cfg.hop_length
        end_sample = (end - 1 + cfg.context - 1) * cfg.hop_length + cfg.n_fft
        feats = cfg.extract(x[start_sample:end_sample])
        assert feats.shape[0] == W
        out.append(bundle.score_features([feats])[0])
    return np.array(out)


def test_streaming_window_scores_equal_offline_scores(bundle):
    x = machine_audio(4.0, seed=42)
    pipe, _, _ = pipeline_with(bundle, ["a"])
    events = run_ticks(pipe, {"a": blocks_of(x, [1, 777, 3000, 64])})
    scores = np.array([e.score for e in events if isinstance(e, ScoreUpdate)])
    assert scores.size >= 10
    np.testing.assert_allclose(scores, expected_window_scores(bundle, x, scores.size), rtol=1e-5, atol=1e-7)


def test_window_times_are_the_audio_clock_at_each_window_end(bundle):
    x = machine_audio(3.0, seed=1)
    pipe, _, _ = pipeline_with(bundle, ["a"])
    ups = [e for e in run_ticks(pipe, {"a": blocks_of(x, [8000], t0=500.0)}) if isinstance(e, ScoreUpdate)]
    cfg = bundle.feature
    # the k-th window ends with vector W + kH - 1, whose last frame ends at sample (that + context - 1)*hop + n_fft
    W, H = cfg.n_vectors(SR), round(0.25 * SR / cfg.hop_length)
    ends = [(W + k * H - 1 + cfg.context - 1) * cfg.hop_length + cfg.n_fft for k in range(len(ups))]
    np.testing.assert_allclose([u.time for u in ups], [500.0 + e / SR for e in ends], rtol=0, atol=1e-6)


def test_batched_over_sources_equals_one_pipeline_per_source(bundle, monkeypatch):
    signals = {"a": machine_audio(3.0, 1), "b": machine_audio(3.0, 2, anomalous=True), "c": machine_audio(2.5, 3)}
    sizes = {"a": [1600], "b": [500, 2100], "c": [4000]}
    pipe, _, _ = pipeline_with(bundle, list(signals))
    calls = []
    real = bundle.detector.score_vectors
    monkeypatch.setattr(bundle.detector, "score_vectors", lambda X, ids=None: calls.append(X.shape[0]) or real(X))
    together = run_ticks(pipe, {n: blocks_of(x, sizes[n]) for n, x in signals.items()})
    n_ticks = max(len(blocks_of(x, sizes[n])) for n, x in signals.items())
    assert 0 < len(calls) <= n_ticks  # one call per tick for all sources, never one per source
    total_vectors = sum(bundle.feature.n_vectors(x.size) for x in signals.values())
    assert sum(calls) == total_vectors  # every vector scored exactly once
    for name, x in signals.items():
        alone, _, _ = pipeline_with(bundle, [name])
        ref = [e.score for e in run_ticks(alone, {name: blocks_of(x, sizes[name])}) if isinstance(e, ScoreUpdate)]
        got = [e.score for e in together if isinstance(e, ScoreUpdate) and e.source == name]
        assert len(got) == len(ref) > 0
        np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_window_level_detectors_get_whole_windows_in_one_batched_call(window_bundle, monkeypatch):
    calls = []
    real = window_bundle.detector.score
    monkeypatch.setattr(window_bundle.detector, "score", lambda clips, ids=None: calls.append(len(clips)) or real(clips))
    signals = {"a": machine_audio(3.0, 5), "b": machine_audio(3.0, 6, anomalous=True)}
    pipe, _, _ = pipeline_with(window_bundle, list(signals))
    events = run_ticks(pipe, {n: blocks_of(x, [2000]) for n, x in signals.items()})
    monkeypatch.undo()
    assert calls and max(calls) == 2  # both sources' ready windows in one call
    for name, x in signals.items():
        got = np.array([e.score for e in events if isinstance(e, ScoreUpdate) and e.source == name])
        exp = expected_window_scores(window_bundle, x, got.size)
        np.testing.assert_allclose(got, exp, rtol=1e-5)


def test_window_and_hop_overrides(bundle):
    pipe = Pipeline(lambda e: None, settings=CPU)
    pipe.add_source(StubSource("a", BlockQueue(4), lambda e: None), bundle, window_seconds=0.5, hop_seconds=0.5)
    ups = [e for e in pipe.process({"a": blocks_of(machine_audio(3.0, 1), [SR * 3])}) if isinstance(e, ScoreUpdate)]
    cfg = bundle.feature
    W, H = cfg.n_vectors(SR // 2), round(0.5 * SR / cfg.hop_length)
    assert len(ups) == (cfg.n_vectors(3 * SR) - W) // H + 1  # the bundle's own window/hop would give more


def test_a_hop_longer_than_the_window_is_refused(bundle):
    pipe = Pipeline(lambda e: None, settings=CPU)
    with pytest.raises(ValueError, match="longer than the 0.5 s window"):
        pipe.add_source(StubSource("a", BlockQueue(4), lambda e: None), bundle, window_seconds=0.5, hop_seconds=2)


def test_a_sample_far_beyond_full_scale_is_that_sources_error_only(bundle):
    pipe, _, out = pipeline_with(bundle, ["bad", "good"])
    x = machine_audio(3.0, 1)
    poisoned = x.copy()
    poisoned[SR] = 3e19  # finite, but its square overflows float32
    events = pipe.process({"bad": blocks_of(poisoned, [SR * 3]), "good": blocks_of(x, [SR * 3])})
    statuses = [e for e in events if isinstance(e, SourceStatus) and e.source == "bad"]
    assert statuses and statuses[0].state == "error" and "not audio in [-1, 1]" in statuses[0].detail
    assert any(isinstance(e, ScoreUpdate) and e.source == "good" for e in events)
    assert not any(isinstance(e, ScoreUpdate) and e.source == "bad" for e in events)


def test_nan_audio_is_an_error_status_and_the_stream_restarts(bundle):
    pipe, _, out = pipeline_with(bundle, ["a"])
    good = machine_audio(2.0, 1)
    bad = good.copy()
    bad[100] = np.nan
    events = pipe.process({"a": blocks_of(good[:4000], [4000])})
    events += pipe.process({"a": [AudioBlock(bad, SR, 0.0, 0.0)]})
    counters = [e for e in events if isinstance(e, CounterEvent)]
    statuses = [e for e in events if isinstance(e, SourceStatus)]
    assert [c.name for c in counters] == ["input_errors"]
    assert statuses and statuses[0].state == "error" and "NaN" in statuses[0].detail
    # after the reset a window needs W fresh vectors: its score equals offline on the fresh audio alone
    fresh = machine_audio(2.0, 9)
    ups = [e for e in pipe.process({"a": blocks_of(fresh, [16000])}) if isinstance(e, ScoreUpdate)]
    np.testing.assert_allclose([u.score for u in ups], expected_window_scores(bundle, fresh, len(ups)), rtol=1e-5)


def test_a_gap_restarts_the_features_and_windows(bundle):
    pipe, _, _ = pipeline_with(bundle, ["a"])
    first, second = machine_audio(1.3, 1), machine_audio(2.0, 2, anomalous=True)
    blocks = blocks_of(first, [2000]) + blocks_of(second, [2000])
    blocks[len(blocks_of(first, [2000]))].gap = True
    events = pipe.process({"a": blocks})  # one tick holding both stretches
    ups = [e.score for e in events if isinstance(e, ScoreUpdate)]
    exp = np.concatenate([expected_window_scores(bundle, first, window_count(bundle, first.size)),
                          expected_window_scores(bundle, second, window_count(bundle, second.size))])
    np.testing.assert_allclose(ups, exp, rtol=1e-5)


def test_silence_is_a_status_not_an_alarm(bundle):
    pipe = Pipeline(lambda e: None, AlarmPolicy(k=1, n=1), PipelineConfig(device="cpu", silence_dbfs=-60.0))
    quiet, loud = StubSource("quiet", BlockQueue(4), lambda e: None), StubSource("loud", BlockQueue(4), lambda e: None)
    for s in (quiet, loud):
        s.state = "online"
        pipe.add_source(s, bundle, threshold=-1.0)  # every window "exceeds": only silence may stop an alarm
    events = pipe.process({"quiet": blocks_of(np.full(2 * SR, 1e-5, np.float32), [SR]),
                           "loud": blocks_of(machine_audio(2.0, 1), [SR])})
    assert [e.state for e in events if isinstance(e, SourceStatus) and e.source == "quiet"] == ["silent"]
    assert not [e for e in events if isinstance(e, AlarmEvent) and e.source == "quiet"]
    assert [e.type for e in events if isinstance(e, AlarmEvent) and e.source == "loud"] == ["new"]
    levels = [e.level_dbfs for e in events if isinstance(e, ScoreUpdate) and e.source == "quiet"]
    assert all(lv == pytest.approx(-100.0, abs=0.1) for lv in levels)


def test_clipping_is_a_status(bundle):
    pipe, srcs, _ = pipeline_with(bundle, ["a"])
    x = np.clip(machine_audio(2.0, 1) * 20, -1, 1)
    events = pipe.process({"a": blocks_of(x, [SR])})
    assert [e.state for e in events if isinstance(e, SourceStatus)] == ["clipping"]


def test_anomalous_audio_raises_and_closing_ends_the_alarm(bundle):
    pipe, _, out = pipeline_with(bundle, ["a"])
    x = np.concatenate([machine_audio(2.0, 1), machine_audio(3.0, 2, anomalous=True)])
    events = run_ticks(pipe, {"a": blocks_of(x, [1000])})
    alarms = [e for e in events if isinstance(e, AlarmEvent)]
    assert alarms and alarms[0].type == "new" and alarms[0].start_time > 1000.0 + 2.0
    pipe.close()
    assert [e.type for e in out.of(AlarmEvent)] == ["end"]


def test_resampled_input_is_scored(bundle):
    """A device at 3x the bundle's rate: the pipeline resamples and scores like the resampled stream offline."""
    from scipy.signal import resample_poly

    x48 = machine_audio(3.0, 4, sr=3 * SR)
    pipe, _, _ = pipeline_with(bundle, ["a"])
    ups = [e for e in run_ticks(pipe, {"a": blocks_of(x48, [2400], sr=3 * SR)}) if isinstance(e, ScoreUpdate)]
    ref = resample_poly(x48, 1, 3).astype(np.float32)
    np.testing.assert_allclose([u.score for u in ups], expected_window_scores(bundle, ref, len(ups)), rtol=1e-4)


@pytest.mark.parametrize("rates", [(48000, 16000), (44100, 16000), (16000, 48000), (8000, 11025)])
def test_stream_resampler_equals_resample_poly_on_the_whole_signal(rates):
    from scipy.signal import resample_poly

    r_in, r_out = rates
    g = math.gcd(r_in, r_out)
    x = np.random.default_rng(0).standard_normal(r_in // 2)
    whole = resample_poly(x, r_out // g, r_in // g)
    rs = StreamResampler(r_in, r_out)
    sizes = [1, 13, 480, 4410, 7]
    parts, pos, i = [], 0, 0
    while pos < x.size:
        parts.append(rs(x[pos : pos + sizes[i % len(sizes)]]))
        pos += sizes[i % len(sizes)]
        i += 1
    streamed = np.concatenate(parts)
    assert whole.size - 200 < streamed.size <= whole.size  # only the filter tail waits for more input
    np.testing.assert_allclose(streamed, whole[: streamed.size], atol=1e-5)


async def test_run_drains_queues_until_sources_end(bundle):
    out: list = []
    pipe = Pipeline(out.append, settings=CPU)
    src = StubSource("a", BlockQueue(64), out.append)
    src.state = "online"
    pipe.add_source(src, bundle)
    for b in blocks_of(machine_audio(2.0, 1), [4000]):
        await src.queue.put(b)
    src.queue.end()
    await asyncio.wait_for(pipe.run(asyncio.Event()), 30)
    assert [e.state for e in out if isinstance(e, SourceStatus)] == ["ended"]
    assert len([e for e in out if isinstance(e, ScoreUpdate)]) == window_count(bundle, 2 * SR)


@pytest.fixture(scope="module")
def per_id_bundle(tmp_path_factory: pytest.TempPathFactory, bundle: Bundle) -> Bundle:
    """A real bundle with its threshold (and each id's) calibrated on held-out scores: ids a and b get their own."""
    with plugins.plugins_registered():
        spec = build_spec("test_window_quantile", {"feature": bundle.feature.to_dict(), "threshold": "percentile:95",
                                                   "window_seconds": bundle.window_seconds})
        feats = spec.feature.extract_batch([machine_audio(2.0, seed) for seed in range(10)])
        out = fit_bundle(tmp_path_factory.mktemp("ids") / "ids", spec, feats[:4], ["a", "b"] * 2, feats[4:],
                         ["a", "b", "a", "b", "a", "b"], machine="hum")
        yield load_bundle(out, device="cpu")


async def test_run_announces_each_sources_threshold_and_how_sure_it_is_before_scoring(bundle, per_id_bundle):
    out: list = []
    pipe = Pipeline(out.append, settings=CPU)
    sources = {}
    for name, b, machine_id, threshold in (("plain", per_id_bundle, None, None), ("id_a", per_id_bundle, "a", None),
                                           ("set", per_id_bundle, "a", 0.75), ("fixed", bundle, None, None)):
        sources[name] = src = StubSource(name, BlockQueue(64), out.append)
        src.state, src.machine_id = "online", machine_id
        pipe.add_source(src, b, threshold)
        for block in blocks_of(machine_audio(1.5, 1), [4000]):
            await src.queue.put(block)
        src.queue.end()
    await asyncio.wait_for(pipe.run(asyncio.Event()), 30)
    infos = {e.source: e for e in out if isinstance(e, ThresholdInfo)}
    assert list(infos) == list(sources) and all(isinstance(e, ThresholdInfo) for e in out[:len(sources)])
    assert any(isinstance(e, ScoreUpdate) for e in out)  # and scoring came after
    for name, machine_id in (("plain", None), ("id_a", "a")):
        cal, info = per_id_bundle.calibration_for(machine_id), infos[name]
        assert info.threshold == per_id_bundle.threshold_for(machine_id) and info.method == "percentile"
        assert (info.scores, info.n_scores, info.false_alarm_rate, info.quantile) == (
            "holdout", cal["n_scores"], cal["false_alarm_rate"], 0.95)
        assert list(info.false_alarm_rate_interval) == cal["false_alarm_rate_interval"]
    assert infos["plain"].n_scores == 6 and infos["id_a"].n_scores == 3  # the id's own scores
    assert infos["id_a"].threshold != infos["plain"].threshold
    configured = infos["set"]  # an override: the bundle's calibration is of another threshold
    assert (configured.method, configured.threshold, configured.n_scores, configured.false_alarm_rate) == (
        "configured", 0.75, None, None)
    fixed = infos["fixed"]  # a bundle saved with a hand-set threshold records no calibration
    assert (fixed.method, fixed.threshold, fixed.scores, fixed.false_alarm_rate_interval) == (
        "fixed", bundle.threshold, None, None)


def test_sources_of_different_bundles_are_scored_by_their_own_bundle(bundle, window_bundle):
    wl = window_bundle
    pipe = Pipeline(lambda e: None, settings=CPU)
    for name, b in (("frame", bundle), ("window", wl)):
        pipe.add_source(StubSource(name, BlockQueue(4), lambda e: None), b)
    x = machine_audio(3.0, 7)
    events = pipe.process({"frame": blocks_of(x, [SR]), "window": blocks_of(x, [SR])})
    by = {n: [e for e in events if isinstance(e, ScoreUpdate) and e.source == n] for n in ("frame", "window")}
    assert {e.model for e in by["frame"]} == {"dcase_ae"}
    assert {e.model for e in by["window"]} == {"test_window_quantile"}
    np.testing.assert_allclose([e.score for e in by["frame"]], expected_window_scores(bundle, x, len(by["frame"])),
                               rtol=1e-5)
    np.testing.assert_allclose([e.score for e in by["window"]], expected_window_scores(wl, x, len(by["window"])),
                               rtol=1e-5)
    assert pipe.models == ["dcase_ae", "test_window_quantile"]


def _two_id_bundle(out, name: str, feature: dict, threshold: str = "percentile:90") -> Bundle:
    """A bundle fitted on clips of id_00 and id_01 (distinct seeds), with per-id thresholds."""
    cls = REGISTRY[name]
    spec = build_spec(name, {"params": cls.quick_params, "feature": feature, "threshold": threshold,
                             "window_seconds": 1.0, "hop_seconds": 0.25})
    feats = spec.feature.extract_batch([machine_audio(2.0, seed) for seed in range(10)])
    ids = ["id_00", "id_01"] * 5
    return load_bundle(fit_bundle(out, spec, feats[:6], ids[:6], feats[6:], ids[6:], machine="hum"), device="cpu")


def test_a_sources_machine_id_picks_its_own_threshold(tmp_path, bundle):
    b = _two_id_bundle(tmp_path / "ids", "dcase_ae", bundle.feature.to_dict())
    assert set(b.per_id_thresholds) == {"id_00", "id_01"}
    pipe = Pipeline(lambda e: None, settings=CPU)
    for name, mid in (("a", "id_01"), ("b", None)):
        src = StubSource(name, BlockQueue(4), lambda e: None)
        src.machine_id = mid
        pipe.add_source(src, b)
    x = machine_audio(2.0, 3)
    ups = [e for e in pipe.process({"a": blocks_of(x, [SR]), "b": blocks_of(x, [SR])}) if isinstance(e, ScoreUpdate)]
    assert {u.threshold for u in ups if u.source == "a"} == {b.per_id_thresholds["id_01"]}
    assert {u.threshold for u in ups if u.source == "b"} == {b.threshold}


def test_a_per_id_model_needs_the_sources_machine_id(tmp_path, bundle):
    from models.bundle import BundleError

    with plugins.plugins_registered():
        b = _two_id_bundle(tmp_path / "per_id", "test_per_id_gaussian", bundle.feature.to_dict())
        pipe = Pipeline(lambda e: None, settings=CPU)
        with pytest.raises(BundleError, match="scores per machine id"):
            pipe.add_source(StubSource("anon", BlockQueue(4), lambda e: None), b)
        src = StubSource("known", BlockQueue(4), lambda e: None)
        src.machine_id = "id_00"
        pipe.add_source(src, b)
        x = machine_audio(2.0, 4)
        got = [e.score for e in pipe.process({"known": blocks_of(x, [SR])}) if isinstance(e, ScoreUpdate)]
        assert got and np.isfinite(got).all()
        scorer = b.stream_scorer(1, 1.0, 0.25, machine_ids=["id_00"])
        ref = [s for _, s in scorer.accept([x])[0]]
        np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_a_window_level_feature_is_scored_from_each_windows_audio(tmp_path):
    with plugins.plugins_registered():
        b = _two_id_bundle(tmp_path / "bandstats", "dcase_ae",
                           {"kind": "test_bandstats", "sample_rate": SR, "n_fft": 256, "hop_length": 128, "n_mels": 12})
        pipe, _, _ = pipeline_with(b, ["a"])
        x = machine_audio(3.0, 5)
        ups = [e for e in run_ticks(pipe, {"a": blocks_of(x, [1500])}) if isinstance(e, ScoreUpdate)]
        window, hop = int(b.window_seconds * SR), int(b.hop_seconds * SR)
        ends = [window + k * hop for k in range(len(ups))]
        assert len(ups) == (x.size - window) // hop + 1
        np.testing.assert_allclose([u.time for u in ups], [1000.0 + e / SR for e in ends], atol=1e-6)
        np.testing.assert_allclose([u.score for u in ups], b.score_wavs([x[e - window : e] for e in ends]), rtol=1e-5)


# -- the noise classifier ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noise_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(make_noise_classifier_bundle(tmp_path_factory.mktemp("noise") / "cls"), device="cpu")


def window_ends(ups, t0: float = 1000.0) -> list[int]:
    """Each score event's window end, in samples of its source's stream (the audio clock started at `t0`)."""
    return [int(round((u.time - t0) * SR)) for u in ups]


def latest_noise(noise: Bundle, x: np.ndarray, ends: list[int]) -> list[float | None]:
    """What the pipeline must attach at each window end: the score of the newest classifier window ending by then,
    from a second stream scorer fed the same audio in one go (None before its first window)."""
    ref = noise.stream_scorer(1, noise.window_seconds, noise.hop_seconds).accept([x])[0]
    return [next((s for e, s in reversed(ref) if e <= end), None) for end in ends]


def noise_span(noise: Bundle) -> int:
    """Samples of one classifier window (W vectors)."""
    f = noise.feature
    return (f.n_vectors(int(round(noise.window_seconds * SR))) - 1) * f.hop_samples + f.span_samples


def test_score_events_carry_the_classifiers_score_of_the_same_audio(bundle, noise_bundle):
    clean, noisy = noisy_pair_audio(3.0, seed=31)
    signals = {"clean": clean, "noisy": noisy}
    pipe, _, _ = pipeline_with(bundle, list(signals), noise=noise_bundle)
    events = run_ticks(pipe, {n: blocks_of(x, [1, 777, 3000, 64]) for n, x in signals.items()})
    assert pipe.noise_model == "lstm_classifier"
    for name, x in signals.items():
        ups = [e for e in events if isinstance(e, ScoreUpdate) and e.source == name]
        assert len(ups) >= 5
        got, ends = [u.noise for u in ups], window_ends(ups)
        assert None not in got  # the two windows end together: 1 s of the same frames
        np.testing.assert_allclose(got, latest_noise(noise_bundle, x, ends), rtol=1e-5)
        span = noise_span(noise_bundle)  # and offline, `score_wavs` on each window's samples
        np.testing.assert_allclose(got[:3], noise_bundle.score_wavs([x[e - span : e] for e in ends[:3]]), rtol=1e-5)
    assert max(u.noise for u in events if isinstance(u, ScoreUpdate) and u.source == "clean") < 0.5
    assert min(u.noise for u in events if isinstance(u, ScoreUpdate) and u.source == "noisy") > 0.5


def test_noise_is_none_before_the_classifiers_first_window_and_without_one(bundle, noise_bundle):
    x = machine_audio(2.0, seed=3)
    pipe = Pipeline(lambda e: None, settings=CPU, noise=noise_bundle)
    pipe.add_source(StubSource("a", BlockQueue(4), lambda e: None), bundle, window_seconds=0.5, hop_seconds=0.25)
    ups = [e for e in run_ticks(pipe, {"a": blocks_of(x, [2000])}) if isinstance(e, ScoreUpdate)]
    got, want = [u.noise for u in ups], latest_noise(noise_bundle, x, window_ends(ups))
    assert got[0] is None and got[-1] is not None  # 0.5 s detector windows start before the 1 s classifier's
    assert [g is None for g in got] == [w is None for w in want]
    np.testing.assert_allclose([g for g in got if g is not None], [w for w in want if w is not None], rtol=1e-5)
    plain, _, _ = pipeline_with(bundle, ["a"])
    assert {e.noise for e in plain.process({"a": blocks_of(x, [SR])}) if isinstance(e, ScoreUpdate)} == {None}


def test_the_classifier_scores_all_sources_of_all_groups_in_one_call_per_tick(bundle, window_bundle, noise_bundle):
    pipe = Pipeline(lambda e: None, settings=CPU, noise=noise_bundle)
    for name, b in (("a", bundle), ("b", bundle), ("c", window_bundle)):
        pipe.add_source(StubSource(name, BlockQueue(4), lambda e: None), b)
    calls = []
    scorer = pipe._noise.scorer
    real = scorer.accept
    scorer.accept = lambda chunks: calls.append(sum(c is not None for c in chunks)) or real(chunks)
    feeds = {n: blocks_of(machine_audio(2.0, seed), [SR // 2]) for seed, n in enumerate("abc")}
    events = run_ticks(pipe, feeds)
    assert calls == [3] * 4  # one call per tick, every source in it
    assert all(e.noise is not None for e in events if isinstance(e, ScoreUpdate))


def test_a_gap_restarts_the_classifiers_stream_too(bundle, noise_bundle):
    pipe, _, _ = pipeline_with(bundle, ["a"], noise=noise_bundle)
    first, second = noisy_pair_audio(1.5, seed=7)[1], machine_audio(2.0, 8)
    blocks = blocks_of(first, [2000]) + blocks_of(second, [2000], t0=1000.0 + first.size / SR)
    blocks[len(blocks_of(first, [2000]))].gap = True
    ups = [e for e in pipe.process({"a": blocks}) if isinstance(e, ScoreUpdate)]
    n_first = window_count(bundle, first.size)
    after = ups[n_first:]
    assert after and len(ups) == n_first + window_count(bundle, second.size)
    ends = window_ends(after, t0=1000.0 + first.size / SR)
    np.testing.assert_allclose([u.noise for u in after], latest_noise(noise_bundle, second, ends), rtol=1e-5)


def feed_and_apply(pipe: Pipeline, feeds: dict[str, list[AudioBlock]]) -> None:
    """One tick per block index, with the statuses applied to the sources as `run()` applies them."""
    for k in range(max(len(b) for b in feeds.values())):
        pipe._publish(pipe.process({n: [b[k]] for n, b in feeds.items() if k < len(b)}))


def test_noisy_is_a_status_above_the_level_and_alarms_go_on(bundle, noise_bundle):
    out = Collected([])
    pipe = Pipeline(out.events.append, AlarmPolicy(k=1, n=1), CPU, noise=noise_bundle, noisy_above=0.5)
    for name in ("quiet", "loud"):
        src = StubSource(name, BlockQueue(4), out.events.append)
        src.state = "online"
        pipe.add_source(src, bundle, threshold=-1.0)  # every window "exceeds": an alarm unless suppressed
    clean, noisy = noisy_pair_audio(3.0, seed=5)
    later = machine_audio(3.0, seed=6)  # the noise goes away: the source is online again
    feed_and_apply(pipe, {"quiet": blocks_of(clean, [SR // 2]),
                          "loud": blocks_of(np.concatenate([noisy, later]), [SR // 2])})
    states = {n: [e.state for e in out.of(SourceStatus) if e.source == n] for n in ("quiet", "loud")}
    assert states["quiet"] == []  # never noisy: it stays online
    assert states["loud"][0] == "noisy" and states["loud"][-1] == "online"
    [noisy_status] = [e for e in out.of(SourceStatus) if e.state == "noisy"][:1]
    assert "noise score" in noisy_status.detail and "above 0.5" in noisy_status.detail
    assert [e.type for e in out.of(AlarmEvent) if e.source == "loud"][:1] == ["new"]  # not suppressed by noisy
    ups = [e for e in out.of(ScoreUpdate) if e.source == "loud"]
    assert ups[0].noise > 0.5 and ups[-1].noise <= 0.5


def test_silent_and_clipping_take_precedence_over_noisy(bundle, noise_bundle):
    out = Collected([])
    settings = PipelineConfig(device="cpu", silence_dbfs=-60.0)
    pipe = Pipeline(out.events.append, settings=settings, noise=noise_bundle, noisy_above=0.0)  # all would be noisy
    for name in ("silent", "clipping", "plain"):
        src = StubSource(name, BlockQueue(4), out.events.append)
        src.state = "online"
        pipe.add_source(src, bundle)
    noisy = noisy_pair_audio(2.0, seed=9)[1]
    feed_and_apply(pipe, {"silent": blocks_of(noisy * 1e-5, [SR]),
                          "clipping": blocks_of(np.clip(noisy * 20, -1, 1), [SR]), "plain": blocks_of(noisy, [SR])})
    assert {e.source: e.state for e in out.of(SourceStatus)} == {"silent": "silent", "clipping": "clipping",
                                                                "plain": "noisy"}


def test_a_noise_model_that_is_not_a_classifier_or_at_another_rate_is_refused(tmp_path, bundle, noise_bundle):
    with pytest.raises(ValueError, match="is a detector bundle .*not a noise classifier"):
        Pipeline(lambda e: None, settings=CPU, noise=bundle)
    with pytest.raises(ValueError, match="no noise classifier"):
        Pipeline(lambda e: None, settings=CPU, noisy_above=0.5)
    other_rate = load_bundle(make_tiny_bundle(tmp_path / "16k", sr=16000), device="cpu")
    pipe = Pipeline(lambda e: None, settings=CPU, noise=noise_bundle)
    with pytest.raises(ValueError, match="takes 8000 Hz audio, but .* scores at 16000 Hz"):
        pipe.add_source(StubSource("a", BlockQueue(4), lambda e: None), other_rate)
    assert pipe.noise_problem(bundle) is None


def test_a_failing_classifier_call_restarts_its_streams_and_scoring_goes_on(bundle, noise_bundle, monkeypatch):
    pipe, _, _ = pipeline_with(bundle, ["a"], noise=noise_bundle)
    x = machine_audio(4.0, seed=2)
    monkeypatch.setattr(pipe._noise.scorer, "accept", lambda chunks: 1 / 0)
    events = pipe.process({"a": blocks_of(x[: 2 * SR], [SR])})
    assert [(c.name, "noise classifier failed" in c.detail) for c in events if isinstance(c, CounterEvent)] == [
        ("input_errors", True)]
    ups = [e for e in events if isinstance(e, ScoreUpdate)]
    assert ups and {u.noise for u in ups} == {None} and not [e for e in events if isinstance(e, SourceStatus)]
    monkeypatch.undo()
    more = [e for e in pipe.process({"a": blocks_of(x[2 * SR :], [SR], t0=1002.0)}) if isinstance(e, ScoreUpdate)]
    # the classifier restarted after the failed call: its windows count from there, the detector's did not restart
    assert more and more[-1].noise is not None
    ends = [e - 2 * SR for e in window_ends(more)]
    np.testing.assert_allclose([u.noise for u in more if u.noise is not None],
                               [w for w in latest_noise(noise_bundle, x[2 * SR :], ends) if w is not None], rtol=1e-5)
