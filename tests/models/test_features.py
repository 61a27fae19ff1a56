"""Streaming parity (lhotse-style): any chunking of a clip gives exactly the offline features."""

from __future__ import annotations

import json
import warnings

import librosa
import numpy as np
import pytest
import torch

from models.features import FeatureInputError, LogMelConfig, feature_from_dict

SR = 16000


def _machine_like(n: int, seed: int = 0) -> np.ndarray:
    """A tone with harmonics, slow speed drift and noise: enough structure that mistakes show."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    f0 = 50 + 2 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(0.2 / k * np.sin(k * phase) for k in range(1, 8)) + 0.03 * rng.standard_normal(n)
    return x.astype(np.float32)


def _stream_in_chunks(cfg: LogMelConfig, x: np.ndarray, chunk: int) -> torch.Tensor:
    s = cfg.stream()
    parts = [s.accept(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    parts.append(s.flush())
    return torch.cat(parts)


@pytest.mark.parametrize("context", [1, 5])
@pytest.mark.parametrize("chunk", [1, 7, 512, 16000])
def test_streaming_equals_offline_bit_for_bit(chunk: int, context: int) -> None:
    cfg = LogMelConfig(context=context)
    x = _machine_like(3 * SR + 123)  # not a whole number of hops: the remainder logic is exercised
    offline = cfg.extract(x)
    assert offline.shape == (cfg.n_vectors(len(x)), cfg.dim)
    streamed = _stream_in_chunks(cfg, x, chunk)
    assert streamed.shape == offline.shape
    assert torch.equal(streamed, offline)


@pytest.mark.parametrize(
    "cfg",
    [
        LogMelConfig(n_mels=40, power=1.0, context=3),  # filter blocks not a multiple of 16; magnitude, not power
        LogMelConfig(n_fft=512, hop_length=64, n_mels=64),  # > 512 frames per clip: the kernel's multi-block path
    ],
    ids=["mels40-power1", "multiblock"],
)
@pytest.mark.parametrize("chunk", [7, 4000])
def test_streaming_parity_other_configs(cfg: LogMelConfig, chunk: int) -> None:
    x = _machine_like(3 * SR + 77)
    offline = cfg.extract(x)
    assert offline.shape == (cfg.n_vectors(len(x)), cfg.dim)
    assert torch.equal(_stream_in_chunks(cfg, x, chunk), offline)


def test_irregular_chunks_equal_offline() -> None:
    cfg = LogMelConfig(context=5)
    x = _machine_like(2 * SR)
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(np.arange(1, len(x)), size=60, replace=False))
    s = cfg.stream()
    parts = [s.accept(piece) for piece in np.split(x, cuts)]
    assert torch.equal(torch.cat(parts), cfg.extract(x))


@pytest.mark.parametrize("n_fft,hop,n_mels", [(1024, 512, 128), (512, 256, 64), (2048, 512, 128)])
def test_matches_librosa_melspectrogram(n_fft: int, hop: int, n_mels: int) -> None:
    cfg = LogMelConfig(n_fft=n_fft, hop_length=hop, n_mels=n_mels)
    x = _machine_like(SR)
    ref = librosa.feature.melspectrogram(
        y=x, sr=SR, n_fft=n_fft, hop_length=hop, n_mels=n_mels, power=2.0, center=False
    )
    ref_db = 10.0 * np.log10(ref + np.finfo(float).eps)
    ours = cfg.extract(x).numpy().T
    assert ours.shape == ref_db.shape
    assert np.max(np.abs(ours - ref_db)) < 1e-3


def test_magnitude_matches_librosa() -> None:
    """power=1: 20*log10 of the mel-weighted magnitude spectrum, the other convention in use."""
    cfg = LogMelConfig(n_mels=40, power=1.0)
    x = _machine_like(SR)
    ref = librosa.feature.melspectrogram(y=x, sr=SR, n_fft=1024, hop_length=512, n_mels=40, power=1.0, center=False)
    assert np.max(np.abs(cfg.extract(x).numpy().T - 20.0 * np.log10(ref + np.finfo(float).eps))) < 1e-3


def test_context_stacking_is_frame_major() -> None:
    """Vector t is frames t..t+4 concatenated, first frame first (the DCASE baseline's layout)."""
    x = _machine_like(SR)
    frames = LogMelConfig(context=1).extract(x)
    stacked = LogMelConfig(context=5).extract(x)
    assert stacked.shape[0] == frames.shape[0] - 4
    for t in (0, 10, stacked.shape[0] - 1):
        assert torch.equal(stacked[t], frames[t : t + 5].reshape(-1))


@pytest.mark.parametrize("group", [64, 4, 1])
def test_batched_equals_per_stream(group: int) -> None:
    cfg = LogMelConfig(context=5)
    clips = [_machine_like(SR + 517 * k, seed=k) for k in range(6)]
    batched = cfg.extract_batch(clips, group=group)
    assert len(batched) == len(clips)
    for clip, feats in zip(clips, batched):
        assert torch.equal(feats, cfg.extract(clip))


def test_batch_extraction_names_a_too_short_clip() -> None:
    cfg = LogMelConfig(context=5)
    assert cfg.min_samples == cfg.n_fft + 4 * cfg.hop_length
    with pytest.raises(FeatureInputError, match=f"clip 1: 100 samples is shorter than one feature vector \\({cfg.min_samples}"):
        cfg.extract_batch([_machine_like(SR), np.zeros(100, dtype=np.float32)])


def test_batch_stream_streams_stay_independent() -> None:
    """Streams fed different chunkings in one batch object each equal their own offline features."""
    cfg = LogMelConfig(context=5)
    clips = [_machine_like(SR, seed=k) for k in range(3)]
    chunk_sizes = [7, 512, 1601]
    bs = cfg.batch_stream(3)
    outs: list[list[torch.Tensor]] = [[], [], []]
    pos = [0, 0, 0]
    while any(p < SR for p in pos):
        chunks = []
        for i in range(3):
            c = clips[i][pos[i] : pos[i] + chunk_sizes[i]] if pos[i] < SR else None
            pos[i] += chunk_sizes[i]
            chunks.append(c)
        for i, new in enumerate(bs.accept(chunks)):
            outs[i].append(new)
    for i in range(3):
        assert torch.equal(torch.cat(outs[i]), cfg.extract(clips[i]))


def test_reset_forgets_partial_frames() -> None:
    cfg = LogMelConfig()
    x = _machine_like(SR)
    bs = cfg.batch_stream(1)
    bs.accept([x[:700]])
    assert bs.pending_samples(0) == 700
    bs.reset(0)
    assert torch.equal(bs.accept([x])[0], cfg.extract(x))


def test_short_clip_gives_no_vectors() -> None:
    cfg = LogMelConfig(context=5)
    assert cfg.extract(_machine_like(cfg.n_fft + 3 * cfg.hop_length)).shape == (0, cfg.dim)
    assert cfg.extract(_machine_like(cfg.n_fft + 4 * cfg.hop_length)).shape == (1, cfg.dim)


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.array([0.0, np.nan, 0.1], dtype=np.float32), "NaN"),
        (np.zeros((100, 2), dtype=np.float32), "1-D"),
        (np.zeros(100, dtype=np.int16), "floating"),
        (np.array([np.inf] * 10, dtype=np.float32), "NaN/inf"),
    ],
)
def test_bad_audio_is_refused_clearly(bad: np.ndarray, match: str) -> None:
    with pytest.raises(FeatureInputError, match=match):
        LogMelConfig().stream().accept(bad)


def test_loud_and_read_only_audio_is_accepted() -> None:
    """Finite samples far outside [-1, 1] are not NaN (the fast NaN check must not say so), and a read-only
    buffer (np.frombuffer, a memory map) is read without a copy warning."""
    x = _machine_like(SR)
    loud = x * np.float32(1e20)  # x.x overflows float32 to inf, yet every sample is finite
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert LogMelConfig().extract(loud).shape == (LogMelConfig().n_vectors(len(x)), 128)
    ro = np.frombuffer(x.tobytes(), dtype=np.float32)
    assert not ro.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(LogMelConfig().extract(ro), LogMelConfig().extract(x))


def test_config_json_round_trip() -> None:
    cfg = LogMelConfig(n_mels=64, context=5, fmax=7000.0)
    assert feature_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown feature kind"):
        feature_from_dict({"kind": "nope"})


def test_invalid_config_rejected() -> None:
    with pytest.raises(ValueError):
        LogMelConfig(hop_length=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu() -> None:
    cfg = LogMelConfig(context=5)
    x = _machine_like(2 * SR)
    cpu = cfg.extract(x)
    gpu = cfg.extract(x, device="cuda").cpu()
    assert torch.allclose(cpu, gpu, atol=1e-3)
