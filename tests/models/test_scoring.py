"""The one scoring path: for every registered detector (and the test plug-ins: a window-level detector, an
id-conditioned one, a window-level stage and a window-level feature), the window scores a stream scorer computes
from chunks equal the offline scores of the same audio windows, and batching streams changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from models.bundle import Bundle, BundleError, load_bundle
from models.detectors import REGISTRY, registered
from models.scoring import StreamScorer
from models.training.recipe import build_spec, fit_bundle
from tests import plugins
from tests.helpers import SR, machine_audio

FEATURE = {"kind": "logmel", "sample_rate": SR, "n_fft": 256, "hop_length": 128, "n_mels": 24, "context": 2}
BANDSTATS = {"kind": "test_bandstats", "sample_rate": SR, "n_fft": 256, "hop_length": 128, "n_mels": 12}
# window-level kinds with a frame front end (the monitor reduces each window's frames)
CLIPSTATS = {"kind": "clipstats", "sample_rate": SR, "n_fft": 256, "win_length": 200, "hop_length": 80, "n_mels": 32}
MODSPEC = {"kind": "modspec", "sample_rate": SR, "n_fft": 256, "hop_length": 64, "n_mels": 16}
STGRAM = {"kind": "stgram", "sample_rate": SR, "n_fft": 1024, "hop_length": 256, "n_mels": 128}
WINDOW, HOP = 1.0, 0.25
IDS = ["id_00", "id_01"]
# a tiny config of each kind a detector may insist on (`Detector.feature_kinds`), and of a layout one insists on
TINY = {"logmel": FEATURE, "stgram": STGRAM}
OWN = {"aegan_ad": {**FEATURE, "context": 1, **REGISTRY["aegan_ad"].quick_feature}}  # 16 x 16 patches


def _own_feature(name: str) -> dict:
    kinds = REGISTRY[name].feature_kinds if name in REGISTRY else None
    return OWN.get(name) or (FEATURE if kinds is None or "logmel" in kinds else TINY[kinds[0]])


# (detector, feature, stages): every detector on log-mel (or its own kind), plus the stage and feature seams
CASES = [(name, _own_feature(name), []) for name in registered() + [c.name for c in plugins.DETECTORS]]
CASES += [
    ("dcase_ae", FEATURE, [{"name": "pca", "params": {"n_components": 0.99}}]),
    ("dcase_ae", FEATURE, ["test_window_centre"]),
    ("dcase_ae", BANDSTATS, []),
    ("test_window_quantile", BANDSTATS, ["pca"]),
    ("iforest", CLIPSTATS, ["minmax", {"name": "ddae", "params": {"groups": [32, 8], "epochs": 2}}]),
    ("modspec_graph", MODSPEC, []),
    ("deep_svdd", CLIPSTATS, ["minmax"]),  # Deep SVDD on clip statistics, one of its "any feature" uses
    ("test_window_quantile", MODSPEC, []),
]


@pytest.fixture(scope="module", autouse=True)
def _plugins() -> Iterator[None]:
    with plugins.plugins_registered():
        yield


def make_bundle(out: Path, name: str, feature: dict, stages: list) -> Bundle:
    """Fit through the recipe's tensors-in entry, on clips of two machine ids (used by id-conditioned models)."""
    cls = REGISTRY[name]
    spec = build_spec(name, {"params": cls.quick_params, "feature": feature, "stages": stages,
                             "threshold": "percentile:95", "window_seconds": WINDOW, "hop_seconds": HOP})
    wavs = [machine_audio(2.0, seed) for seed in range(8)]
    feats = spec.feature.extract_batch(wavs)
    ids = [IDS[i % 2] for i in range(8)]
    fit_bundle(out, spec, feats[:6], ids[:6], feats[6:], ids[6:], machine="hum")
    return load_bundle(out, device="cpu")


@pytest.fixture(scope="module", params=CASES,
                ids=lambda c: "-".join([c[0], c[1]["kind"], *(s if isinstance(s, str) else s["name"] for s in c[2])]))
def bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    name, feature, stages = request.param
    return make_bundle(tmp_path_factory.mktemp("b") / "b", name, feature, stages)


def stream_windows(bundle: Bundle, x: np.ndarray, sizes: list[int], machine_id: str) -> list[tuple[int, float]]:
    scorer = bundle.stream_scorer(1, WINDOW, HOP, machine_ids=[machine_id])
    out, pos, i = [], 0, 0
    while pos < x.size:
        n = sizes[i % len(sizes)]
        out += scorer.accept([x[pos : pos + n]])[0]
        pos, i = pos + n, i + 1
    return out


def window_start(bundle: Bundle, end: int) -> int:
    """The first sample of the window that ends at `end` (what the offline reference must see)."""
    f = bundle.feature
    front = f.frame_front() if f.window_level else None
    if f.window_level and front is None:  # the window's samples
        return end - int(round(WINDOW * SR))
    f = front or f  # the window's vectors, or the frames it reduces
    w = f.n_vectors(int(round(WINDOW * SR)))
    return end - ((w - 1) * f.hop_samples + f.span_samples)


def test_streamed_window_scores_equal_offline_scores_of_the_same_audio(bundle: Bundle) -> None:
    x = np.concatenate([machine_audio(2.0, 42), machine_audio(1.5, 43, anomalous=True)])
    got = stream_windows(bundle, x, [1, 777, 3000, 64, 5000], "id_01")
    assert len(got) >= 8
    ends = [e for e, _ in got]
    assert all(0 < e <= x.size for e in ends) and ends == sorted(ends)
    windows = [x[window_start(bundle, e) : e] for e in ends]
    offline = bundle.score_wavs(windows, ids=["id_01"] * len(windows))
    np.testing.assert_allclose([s for _, s in got], offline, rtol=1e-5, atol=1e-7)
    hop = int(round(HOP * SR))
    assert np.all(np.abs(np.diff(ends) - hop) <= bundle.feature.hop_samples)  # one window per hop


def test_batched_streams_equal_one_scorer_per_stream(bundle: Bundle) -> None:
    signals = [machine_audio(2.5, 1), machine_audio(2.0, 2, anomalous=True), machine_audio(3.0, 3)]
    scorer = bundle.stream_scorer(3, WINDOW, HOP, machine_ids=["id_00", "id_01", "id_00"])
    together: list[list] = [[], [], []]
    for k in range(0, 3 * SR, 1900):
        chunks = [s[k : k + 1900] if k < s.size else None for s in signals]
        for i, w in enumerate(scorer.accept(chunks)):
            together[i] += w
    for i, (s, mid) in enumerate(zip(signals, ["id_00", "id_01", "id_00"])):
        alone = stream_windows(bundle, s, [1900], mid)
        assert [e for e, _ in together[i]] == [e for e, _ in alone] and alone
        np.testing.assert_allclose([v for _, v in together[i]], [v for _, v in alone], rtol=1e-6)


def test_whole_clip_scoring_is_the_scorer_with_the_window_set_to_the_clip(bundle: Bundle) -> None:
    clips = [machine_audio(1.5, 7), machine_audio(2.2, 8, anomalous=True)]
    scorer = bundle.stream_scorer(2, window=None, machine_ids=["id_00", "id_00"])
    for k in range(0, clips[1].size, 999):
        assert scorer.accept([c[k : k + 999] if k < c.size else None for c in clips]) == [[], []]
    streamed = scorer.flush()
    assert [len(s) for s in streamed] == [1, 1] and [s[0][0] for s in streamed] == [c.size for c in clips]
    np.testing.assert_allclose([s[0][1] for s in streamed], bundle.score_wavs(clips, ids=["id_00"] * 2), rtol=1e-6)
    feats = [bundle.feature.extract(c) for c in clips]
    np.testing.assert_allclose(bundle.score_wavs(clips, ids=["id_00"] * 2),
                               bundle.score_features(feats, ids=["id_00"] * 2), rtol=1e-6)


def test_reset_starts_windows_afresh(bundle: Bundle) -> None:
    a, b = machine_audio(1.7, 11), machine_audio(2.0, 12)
    scorer = bundle.stream_scorer(1, WINDOW, HOP, machine_ids=["id_00"])
    scorer.accept([a])
    scorer.reset(0)
    after = [w for k in range(0, b.size, 1000) for w in scorer.accept([b[k : k + 1000]])[0]]
    np.testing.assert_allclose([s for _, s in after], [s for _, s in stream_windows(bundle, b, [1000], "id_00")],
                               rtol=1e-6)


def test_id_conditioned_bundles_need_a_machine_id(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "per_id", "test_per_id_gaussian", FEATURE, [])
    assert b.needs_id and b.ids == IDS
    with pytest.raises(BundleError, match="scores per machine id"):
        b.stream_scorer(1, WINDOW, HOP)
    with pytest.raises(BundleError, match="'id_07' was not trained"):
        b.stream_scorer(1, WINDOW, HOP, machine_ids=["id_07"])
    assert set(b.per_id_thresholds) <= set(IDS)


def test_a_window_shorter_than_one_vector_is_refused(bundle: Bundle) -> None:
    with pytest.raises(ValueError, match="shorter than"):
        bundle.stream_scorer(1, window=0.01, hop=0.01, machine_ids=["id_00"])


def test_stages_and_learned_metadata_travel_in_the_bundle(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "pca", "dcase_ae", FEATURE, [{"name": "pca", "params": {"n_components": 0.9}}])
    assert [s.name for s in b.stages] == ["pca"] and b.meta["stages"][0]["params"]["n_components"] == 0.9
    k = b.learned["stage0"]["n_components"]
    assert 1 <= k < b.feature.dim and b.detector.input_dim == k
    weights = torch.load(b.path / "weights.pt", weights_only=True)
    assert {key.split(".")[0] for key in weights} == {"stage0", "detector"}


@pytest.mark.parametrize("window,hop", [(311, 31), (10, 10), (7, 3), (5, 7), (100, 1)])
def test_statistics_mode_cuts_are_every_window_start_and_end(window: int, hop: int) -> None:
    """The additive detectors' stretches are cut exactly at window starts (multiples of H) and ends (W + multiples
    of H), found by arithmetic rather than position by position."""
    scorer = StreamScorer.__new__(StreamScorer)
    scorer.window, scorer.hop = window, hop
    rng = np.random.default_rng(0)
    for _ in range(500):
        a = int(rng.integers(0, 600))
        b = a + int(rng.integers(0, 90))
        starts = {p for p in range(a + 1, b) if p % hop == 0}
        ends = {p for p in range(a + 1, b) if p >= window and (p - window) % hop == 0}
        assert scorer._cuts(a, b) == sorted(starts | ends)
