"""The modulation spectrum against a numpy re-implementation and against what its numbers mean (an amplitude-modulated
tone), and the modspec_graph detector's two rules against brute-force computations (scikit-learn's own kNN graph and
Ward clustering, numpy distances)."""

from __future__ import annotations

import math
import re
import warnings

import librosa
import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix
from sklearn.cluster import AgglomerativeClustering
from sklearn.neighbors import kneighbors_graph

import models.detectors.modspec_graph as graph_module
from models.detectors.base import standardizer
from models.detectors.modspec_graph import ModSpecGraph
from models.features import feature_from_dict
from models.features.modspec import ModSpecConfig

SR = 16000
EPS = np.finfo(np.float64).eps


def am_tone(seconds: float, carrier: float = 1000.0, rate: float = 5.0, depth: float = 0.5, noise: float = 0.01,
            seed: int = 0, sr: int = SR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * (1 + depth * np.cos(2 * np.pi * rate * t)) * np.sin(2 * np.pi * carrier * t)
    return (x + noise * rng.standard_normal(t.size)).astype(np.float32)


def band_amplitudes(cfg: ModSpecConfig, x: np.ndarray) -> np.ndarray:
    """[frames, n_mels] float64: sqrt of the mel power of a periodic-Hann, center=False STFT."""
    x = x.astype(np.float64)
    n = 1 + (x.size - cfg.n_fft) // cfg.hop_length
    frames = np.stack([x[i * cfg.hop_length : i * cfg.hop_length + cfg.n_fft] for i in range(n)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(cfg.n_fft) / cfg.n_fft)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    fb = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax)
    return np.sqrt(power @ fb.T.astype(np.float64))


def reference_modspec(cfg: ModSpecConfig, x: np.ndarray) -> np.ndarray:
    """The documented pipeline, written out in numpy float64."""
    env = band_amplitudes(cfg, x)
    if cfg.log_envelope:
        env = 20 * np.log10(env + EPS)
    t = env.shape[0]
    taper = np.hanning(t)
    env = env - taper @ env / taper.sum()
    rate = cfg.sample_rate / cfg.hop_length
    edges = (np.geomspace if cfg.mod_scale == "log" else np.linspace)(cfg.mod_fmin, cfg.mod_fmax, cfg.n_mod_bins + 1)
    need = max(t, math.ceil(4 * rate / np.diff(edges).min()))
    m = min(n for n in (f * 2**k for f in (1, 3, 5) for k in range(24)) if n >= need)  # 2^k, 3 * 2^k or 5 * 2^k
    density = np.abs(np.fft.rfft(env * taper[:, None], n=m, axis=0)) ** 2 * 2 / (m * np.sum(taper**2))
    freqs = np.fft.rfftfreq(m, d=1 / rate)
    power = np.stack([density[(freqs >= lo) & (freqs < hi)].sum(axis=0) for lo, hi in zip(edges[:-1], edges[1:])])
    return 10 * np.log10(power.T + EPS).reshape(-1)  # band-major


# -- the feature ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        ModSpecConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=12, fmin=50.0, fmax=3500.0, mod_fmin=1.0,
                      mod_fmax=20.0, n_mod_bins=6),
        ModSpecConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=12, log_envelope=True, mod_fmin=1.0,
                      mod_fmax=40.0, n_mod_bins=5, mod_scale="linear"),
        ModSpecConfig(),
    ],
    ids=["small-log-bins", "small-log-envelope-linear-bins", "default"],
)
def test_matches_a_numpy_reimplementation(cfg: ModSpecConfig) -> None:
    x = am_tone(2.3, carrier=700.0, rate=6.0, noise=0.03, seed=1, sr=cfg.sample_rate)
    ours = cfg.extract(x)
    assert ours.shape == (1, cfg.dim) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours[0].numpy(), reference_modspec(cfg, x), atol=2e-3)


def test_an_am_tone_puts_its_power_in_its_band_and_its_modulation_rate() -> None:
    cfg = ModSpecConfig()
    x = am_tone(4.0)  # 1 kHz carrier, 5 Hz modulation of depth 0.5
    got = cfg.extract(x)[0].numpy().reshape(cfg.n_mels, cfg.n_mod_bins)
    fb = librosa.filters.mel(sr=SR, n_fft=cfg.n_fft, n_mels=cfg.n_mels)
    band = int(np.argmax(fb[:, round(1000 * cfg.n_fft / SR)]))  # the filter that weighs 1 kHz most
    edges = cfg.mod_edges
    mod_bin = int(np.searchsorted(edges, 5.0, side="right") - 1)
    assert edges[mod_bin] <= 5.0 < edges[mod_bin + 1]
    assert np.unravel_index(np.argmax(got), got.shape) == (band, mod_bin)
    # a sinusoidal envelope a(1 + d cos) holds (a d)^2 / 2 of modulation power, all of it in the 5 Hz bin
    mean_amp = band_amplitudes(cfg, x)[:, band].mean()
    assert got[band, mod_bin] == pytest.approx(10 * np.log10((0.5 * mean_amp) ** 2 / 2), abs=0.5)
    steady = cfg.extract(am_tone(4.0, depth=0.0))[0].numpy().reshape(cfg.n_mels, cfg.n_mod_bins)
    assert got[band, mod_bin] > steady[band, mod_bin] + 30


def test_dimension_and_values_do_not_depend_on_the_window_length() -> None:
    cfg = ModSpecConfig()
    x = am_tone(10.0)
    band = int(np.argmax(librosa.filters.mel(sr=SR, n_fft=cfg.n_fft, n_mels=cfg.n_mels)[:, 32]))
    vectors = {s: cfg.extract(x[: int(s * SR)])[0].numpy().reshape(cfg.n_mels, -1) for s in (0.5, 3.0, 5.0, 10.0)}
    assert all(v.shape == (cfg.n_mels, cfg.n_mod_bins) for v in vectors.values())
    # integrated power: the 5 Hz line keeps its value once the window resolves it
    assert vectors[3.0][band, 6] == pytest.approx(vectors[10.0][band, 6], abs=0.5)
    assert vectors[5.0][band, 6] == pytest.approx(vectors[10.0][band, 6], abs=0.5)


def test_log_envelope_ignores_the_level() -> None:
    cfg = ModSpecConfig(log_envelope=True)
    x = am_tone(3.0, noise=0.0)
    loud, quiet = cfg.extract(x)[0].numpy(), cfg.extract(x * np.float32(0.01))[0].numpy()
    band = int(np.argmax(librosa.filters.mel(sr=SR, n_fft=cfg.n_fft, n_mels=cfg.n_mels)[:, 32]))
    block = slice(band * cfg.n_mod_bins, (band + 1) * cfg.n_mod_bins)
    np.testing.assert_allclose(loud[block], quiet[block], atol=0.01)
    linear = ModSpecConfig()  # linear envelope: 40 dB less level is 40 dB less modulation power
    drop = linear.extract(x)[0, block].max() - linear.extract(x * np.float32(0.01))[0, block].max()
    assert float(drop) == pytest.approx(40.0, abs=0.1)


def test_level_norm_removes_the_gain_and_keeps_the_band_levels() -> None:
    x = am_tone(3.0)  # a modulated tone in noise: bands at different levels
    plain, normed = ModSpecConfig(), ModSpecConfig(level_norm=True)
    quiet = x * np.float32(10 ** (-6 / 20))
    np.testing.assert_allclose(normed.extract(quiet)[0].numpy(), normed.extract(x)[0].numpy(), atol=0.02)
    shift = plain.extract(x)[0].numpy() - plain.extract(quiet)[0].numpy()
    np.testing.assert_allclose(shift, 6.0, atol=0.05)  # without it, every value moves by the gain
    v = plain.extract(x)[0].numpy()
    np.testing.assert_allclose(normed.extract(x)[0].numpy(), v - v.mean(), atol=1e-4)  # only the mean is gone


def test_windows_and_settings() -> None:
    cfg = ModSpecConfig()
    assert cfg.dim == 384 and cfg.min_window == 512 + 15 * 128
    assert cfg.n_vectors(cfg.min_window - 1) == 0 and cfg.n_vectors(cfg.min_window) == 1
    assert cfg.n_vectors(10 * SR) == 1
    assert feature_from_dict(cfg.to_dict()) == cfg
    np.testing.assert_allclose(cfg.mod_edges[[0, 1, -1]], [0.5, 0.5 * 2**0.5, 32.0])
    assert cfg.fft_length(1247) == 2560  # >= 4 bins in the narrowest (0.5-0.71 Hz) bin at 125 Hz: 2414 points
    assert cfg.fft_length(2561) == 3072 and cfg.fft_length(3073) == 4096 and cfg.fft_length(4097) == 5120


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"mod_fmax": 70.0}, "mod_fmax <= 62.5"),
        ({"mod_fmin": 8.0, "mod_fmax": 4.0}, "mod_fmin=8.0"),
        ({"mod_fmin": 0.0}, "0 < mod_fmin"),
        ({"mod_scale": "mel"}, "mod_scale"),
        ({"n_mod_bins": 0}, "n_mod_bins must be a positive integer"),
        ({"n_mels": 2.5}, "n_mels"),
        ({"fmax": 9000.0}, "9000"),
        ({"fmin": 4000.0, "fmax": 3000.0}, "fmin=4000.0"),
        ({"log_envelope": "yes"}, "log_envelope"),
        ({"level_norm": 1}, "level_norm"),
    ],
)
def test_invalid_settings(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModSpecConfig(**bad)


# -- the detector ---------------------------------------------------------------------------------------------------


def _train(seed: int = 0, n: int = 300, dim: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, dim)) * rng.uniform(0.5, 3.0, dim) + rng.normal(size=dim) * 4).astype(np.float32)


def _standardise(train: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = train.astype(np.float64)
    mean, std = t.mean(axis=0), t.std(axis=0)
    return (t - mean) / std, (X.astype(np.float64) - mean) / std


def _rows_sorted(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def test_centroid_rule_is_the_distance_to_the_nearest_ward_centroid_of_the_knn_graph() -> None:
    train, test = _train(0), _train(1, n=50)
    det = ModSpecGraph(n_neighbors=6, n_clusters=7).fit([torch.from_numpy(train)])
    z_train, z_test = _standardise(train, test)
    graph = kneighbors_graph(z_train, 6, include_self=False)  # scikit-learn's own kNN, not ours
    labels = AgglomerativeClustering(n_clusters=7, connectivity=graph, linkage="ward").fit_predict(z_train)
    centroids = np.stack([z_train[labels == j].mean(axis=0) for j in range(7)])
    got = det.centroids_.double().numpy()
    np.testing.assert_allclose(_rows_sorted(got), _rows_sorted(centroids), atol=1e-5)
    assert sorted(det.learned()["cluster_sizes"]) == sorted(np.bincount(labels).tolist())
    expected = np.sqrt(((z_test[:, None, :] - centroids[None]) ** 2).sum(axis=-1)).min(axis=1)
    np.testing.assert_allclose(det.score_vectors(torch.from_numpy(test)).numpy(), expected, rtol=1e-5)


def test_knn_rule_is_the_mean_distance_to_the_k_nearest_training_vectors() -> None:
    train, test = _train(2), _train(3, n=50)
    det = ModSpecGraph(n_neighbors=4, rule="knn").fit([torch.from_numpy(train[:100]), torch.from_numpy(train[100:])])
    assert set(det.state_dict()) == {"mean_", "scale_", "train_"} and det.learned() == {}
    z_train, z_test = _standardise(train, test)
    d = np.sqrt(((z_test[:, None, :] - z_train[None]) ** 2).sum(axis=-1))
    expected = np.sort(d, axis=1)[:, :4].mean(axis=1)
    np.testing.assert_allclose(det.score_vectors(torch.from_numpy(test)).numpy(), expected, rtol=1e-5)


def test_obvious_clusters_are_found_and_far_vectors_score_high() -> None:
    rng = np.random.default_rng(4)
    means = rng.normal(size=(4, 10)) * 40
    sizes = [30, 60, 90, 45]
    X = np.concatenate([m + rng.normal(size=(n, 10)) for m, n in zip(means, sizes)]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the graph has four parts: joining them must not warn
        det = ModSpecGraph(n_neighbors=5, n_clusters=4).fit([torch.from_numpy(X)])
    assert det.learned()["n_clusters"] == 4 and sorted(det.learned()["cluster_sizes"]) == sorted(sizes)
    members = det.score_vectors(torch.from_numpy(X))
    outsider = torch.from_numpy((means[:2].mean(axis=0) + rng.normal(size=(5, 10))).astype(np.float32))
    assert det.score_vectors(outsider).min() > 3 * members.max()


def test_blocks_and_small_training_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    train, test = _train(5, n=200), _train(6, n=77)
    whole = {rule: ModSpecGraph(rule=rule).fit([torch.from_numpy(train)]) for rule in ("centroid", "knn")}
    monkeypatch.setattr(graph_module, "_BLOCK_ENTRIES", 50)  # blocks of a few rows: offsets and self-exclusion
    for rule, det in whole.items():
        blocked = ModSpecGraph(rule=rule).fit([torch.from_numpy(train)])
        torch.testing.assert_close(blocked.state_dict(), det.state_dict())
        torch.testing.assert_close(blocked.score_vectors(torch.from_numpy(test)),
                                   det.score_vectors(torch.from_numpy(test)))
    for n in (1, 3):  # fewer vectors than clusters or neighbours: each vector is its own cluster, k shrinks to n
        few = torch.from_numpy(train[:n])
        det = ModSpecGraph().fit([few])
        assert det.learned()["n_clusters"] == n and det.score_vectors(few).max() < 1e-3
        knn = ModSpecGraph(rule="knn").fit([few])
        assert np.isfinite(knn.score([torch.from_numpy(test)])).all()


def test_scale_shrinkage_standardises_with_the_shrunk_scale() -> None:
    train, test = _train(10, n=3), _train(11, n=20)
    det = ModSpecGraph(rule="knn", n_neighbors=2, scale_shrinkage=2.0).fit([torch.from_numpy(train)])
    mean, scale = standardizer(torch.from_numpy(train), shrinkage=2.0)
    torch.testing.assert_close(det.scale_, scale)
    z_train = (train - mean.numpy()) / scale.numpy()
    z_test = (test - mean.numpy()) / scale.numpy()
    d = np.sqrt(((z_test[:, None, :] - z_train[None]) ** 2).sum(axis=-1))
    expected = np.sort(d, axis=1)[:, :2].mean(axis=1)
    np.testing.assert_allclose(det.score_vectors(torch.from_numpy(test)).numpy(), expected, rtol=1e-5)
    plain = ModSpecGraph(rule="knn", n_neighbors=2).fit([torch.from_numpy(train)])
    assert not torch.allclose(plain.scale_, det.scale_)


@pytest.mark.parametrize(("n", "shrinkage", "says"), [
    (1, 0.0, "no spread to standardise by"), (1, 1.0, "no spread to standardise by"),
    (2, 0.0, "2 sqrt\\(d\\) apart"), (2, 1.0, None), (3, 0.0, None)])
def test_fits_whose_scales_cannot_be_measured_say_so(caplog, n: int, shrinkage: float, says: str | None) -> None:
    train = torch.from_numpy(_train(12, n=n))
    with caplog.at_level("WARNING", logger=graph_module.__name__):
        det = ModSpecGraph(scale_shrinkage=shrinkage).fit([train])
    text = " ".join(r.getMessage() for r in caplog.records)
    assert (re.search(says, text) is not None) if says else not text
    if n == 2 and not shrinkage:  # what the warning says: standardised, the two are 2 sqrt(d) apart
        z = (train - det.mean_) / det.scale_
        assert float((z[0] - z[1]).norm()) == pytest.approx(2 * math.sqrt(train.shape[1]), rel=1e-5)


def test_the_graph_is_symmetric_and_excludes_self() -> None:
    z = torch.from_numpy(_train(7, n=40)).double()
    g = graph_module.knn_graph(z, 3)
    assert isinstance(g, csr_matrix) and (g != g.T).nnz == 0 and g.diagonal().sum() == 0
    assert (np.asarray(g.sum(axis=1)).ravel() >= 3).all()


@pytest.mark.parametrize(
    "params,match",
    [({"rule": "median"}, "rule must be one of"), ({"n_neighbors": 0}, "n_neighbors must be a positive integer"),
     ({"n_clusters": True}, "n_clusters must be a positive integer"), ({"n_clusters": 2.5}, "n_clusters"),
     ({"scale_shrinkage": -1.0}, "scale_shrinkage must be a number >= 0"), ({"scale_shrinkage": "4"}, "shrinkage")],
)
def test_bad_hyper_parameters_are_refused(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModSpecGraph(**params).fit([torch.from_numpy(_train(8, n=20))])


def test_a_state_for_the_other_rule_is_refused() -> None:
    det = ModSpecGraph(n_clusters=3).fit([torch.from_numpy(_train(9, n=30))])
    with pytest.raises(ValueError, match="2-D 'train_'"):
        ModSpecGraph(rule="knn").load_state_dict(det.state_dict(), det.learned())
    state = {**det.state_dict(), "centroids_": torch.zeros(3, 5)}
    with pytest.raises(ValueError, match="centroids_"):
        ModSpecGraph(n_clusters=3).load_state_dict(state)


def test_default_feature_and_quick_fit_on_modulation_spectra() -> None:
    cfg = feature_from_dict(ModSpecGraph.default_feature)
    assert cfg == ModSpecConfig()
    normal = [cfg.extract(am_tone(1.0, rate=5.0, noise=0.05, seed=s))[0] for s in range(12)]
    odd = [cfg.extract(am_tone(1.0, rate=11.0, noise=0.05, seed=s))[0] for s in range(20, 24)]
    det = ModSpecGraph(**ModSpecGraph.quick_params).fit([torch.stack(normal[:8])])
    scores = det.score([v[None] for v in normal[8:] + odd])
    assert scores[4:].min() > scores[:4].max()


@pytest.mark.parametrize("level_norm", [False, True])
def test_streamed_windows_equal_offline_scores_of_the_same_audio(tmp_path, level_norm: bool) -> None:
    """The monitor's audio mode (window-level feature, vector detector) against offline scoring of each window."""
    from tests.helpers import machine_audio
    from tests.models.test_scoring import make_bundle, stream_windows, window_start

    feature = {"kind": "modspec", "sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 16, "n_mod_bins": 6,
               "level_norm": level_norm}
    bundle = make_bundle(tmp_path / "b", "modspec_graph", feature, [])
    x = np.concatenate([machine_audio(2.0, 42), machine_audio(1.5, 43, anomalous=True)])
    got = stream_windows(bundle, x, [1, 777, 3000, 64, 5000], "id_01")
    assert len(got) >= 8
    windows = [x[window_start(bundle, e) : e] for e, _ in got]
    np.testing.assert_allclose([s for _, s in got], bundle.score_wavs(windows, ids=["id_01"] * len(windows)),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_vectors_score_as_on_the_cpu() -> None:
    train, test = _train(10), _train(11, n=40)
    for rule in ("centroid", "knn"):
        det = ModSpecGraph(rule=rule).fit([torch.from_numpy(train)])
        cpu = det.score_vectors(torch.from_numpy(test))
        gpu = det.score_vectors(torch.from_numpy(test).cuda())
        assert gpu.device.type == "cpu"
        torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-6)


def test_windows_reduced_in_batches_equal_windows_reduced_alone() -> None:
    """`reduce` batches windows of one length (`REDUCE_BATCH` per call); every row is still its own FFT and dot
    products, so a window's vector does not depend on the windows beside it, nor on a length change mid-list."""
    cfg = ModSpecConfig(n_mels=16)
    front = cfg.frame_front()
    clips = [am_tone(1.0 + 0.25 * (k == 5), rate=3.0 + k, seed=k) for k in range(7)]
    frames = [front.extract(x) for x in clips]
    together = cfg.reduce(frames)
    for k, f in enumerate(frames):
        assert torch.equal(together[k], cfg.reduce([f])[0])
