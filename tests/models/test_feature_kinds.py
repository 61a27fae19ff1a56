"""Every registered feature kind keeps the protocol (parametrized over the registry, so a new kind is covered by
existing), plus each kind's agreement with the reference implementation it stands in for."""

from __future__ import annotations

import json
import sys

import librosa
import numpy as np
import pytest
import torch

from models.features import FEATURES, FeatureConfig, FeatureInputError, LogMelConfig, feature_from_dict
from models.features.mfcc import MfccConfig, dct_matrix
from models.features.spectrum import SpectrumConfig
from models.features.vectors import VectorFile, VectorsConfig, read_vectors
from models.features.waveform import WaveformConfig

SR = 16000
KINDS = sorted(FEATURES)
EPS = sys.float_info.epsilon


def _n_input(cfg: FeatureConfig) -> int:
    """About 2.5 s of audio, not a whole number of hops (the remainder logic is exercised); 300 rows of vectors."""
    return 300 if cfg.input_kind == "vectors" else int(2.5 * cfg.sample_rate) + 123


def _cat(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros((0, dim))


def _streamed(cfg: FeatureConfig, x: np.ndarray, cuts: list[int]) -> torch.Tensor:
    """x fed to one stream cut at `cuts`, then flushed."""
    s = cfg.stream()
    parts = [s.accept(piece) for piece in np.split(x, cuts)]
    parts.append(s.flush())
    return _cat(parts, cfg.dim)


def _cuts(n: int, chunk: int | str) -> list[int]:
    if chunk == "irregular":
        rng = np.random.default_rng(1)
        return sorted(rng.choice(np.arange(1, n), size=min(60, n - 1), replace=False).tolist())
    return list(range(chunk, n, chunk))


# -- the protocol, for every registered kind ------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 512, 16000, "irregular"])
@pytest.mark.parametrize("kind", KINDS)
def test_streaming_equals_offline_bit_for_bit(kind: str, chunk: int | str) -> None:
    cfg = FEATURES[kind]()
    x = cfg.example_input(_n_input(cfg), seed=3)
    if chunk == 1 and cfg.input_kind == "audio" and not cfg.window_level:
        # one accept per sample is slow in Python: a prefix of a few vectors covers the remainder logic
        x = x[: cfg.span_samples + 4 * cfg.hop_samples + 37]
    offline = cfg.extract(x)
    assert offline.dtype == torch.float32
    assert offline.shape == (cfg.n_vectors(len(x)), cfg.dim)
    if cfg.window_level:
        assert offline.shape[0] == 1  # one vector for the whole input
    else:
        assert offline.shape[0] >= 2
    streamed = _streamed(cfg, x, _cuts(len(x), chunk))
    assert streamed.shape == offline.shape
    assert torch.equal(streamed, offline)


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_construct_and_round_trip_json(kind: str) -> None:
    cfg = FEATURES[kind]()
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["kind"] == kind
    assert feature_from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown feature setting"):
        feature_from_dict({**d, "no_such_setting": 1})
    with pytest.raises(ValueError, match="unknown feature kind"):
        feature_from_dict({**d, "kind": "no_such_kind"})


@pytest.mark.parametrize("kind", KINDS)
def test_hop_and_span_agree_with_n_vectors(kind: str) -> None:
    cfg = FEATURES[kind]()
    span, hop = cfg.span_samples, cfg.hop_samples
    assert span >= 1 and hop >= 1 and cfg.min_samples == span
    assert cfg.n_vectors(span - 1) == 0
    assert cfg.n_vectors(span) == 1
    if not cfg.window_level:
        assert cfg.n_vectors(span + hop - 1) == 1
        assert cfg.n_vectors(span + hop) == 2
    for n in (span, span + hop):  # the formula is what extraction actually yields
        assert cfg.extract(cfg.example_input(n)).shape == (cfg.n_vectors(n), cfg.dim)


@pytest.mark.parametrize("kind", KINDS)
def test_batched_streams_equal_per_stream(kind: str) -> None:
    cfg = FEATURES[kind]()
    base = _n_input(cfg) // 2
    step = 1 if cfg.input_kind == "vectors" else 517
    clips = [cfg.example_input(base + step * k + 3 * k * k, seed=k) for k in range(3)]
    for group in (64, 2):
        batched = cfg.extract_batch(clips, group=group)
        assert len(batched) == len(clips)
        for clip, feats in zip(clips, batched):
            assert torch.equal(feats, cfg.extract(clip))
    # a stream without input this call gets an empty [0, dim] result
    bs = cfg.batch_stream(3)
    got = bs.accept([clips[0], None, clips[2]])
    rest = bs.flush()
    assert got[1].shape == (0, cfg.dim) and rest[1].shape == (0, cfg.dim)
    for i in (0, 2):
        assert torch.equal(_cat([got[i], rest[i]], cfg.dim), cfg.extract(clips[i]))


@pytest.mark.parametrize("kind", KINDS)
def test_block_by_block_computation_equals_the_whole_frame_matrix(kind: str) -> None:
    """`FrameComputer.compute` windows and computes `CALL_ROWS` frames at a time on the CPU; the numbers are those of
    the whole frame matrix computed at once, bit for bit (signals straddle the blocks; the last one is padded)."""
    cfg = FEATURES[kind]()
    framing = cfg.frame_front() if cfg.window_level else cfg
    if framing is None or framing.input_kind != "audio":
        pytest.skip(f"{kind} has no frame computer")
    computer = framing.computer(torch.device("cpu"))
    n = [framing.n_vectors(k * framing.hop_samples) for k in (40, 700, 3)]  # more than CALL_ROWS frames in all
    signals = [torch.from_numpy(cfg.example_input(framing.span_samples + (k - 1) * framing.frame_hop, seed=k))
               for k in n]
    assert sum(n) > computer.CALL_ROWS
    frames, total = computer.frames(signals)
    assert torch.equal(computer.compute(signals), computer(frames)[:total])


@pytest.mark.parametrize("kind", KINDS)
def test_reset_and_add_stream(kind: str) -> None:
    cfg = FEATURES[kind]()
    x = cfg.example_input(_n_input(cfg) // 2, seed=5)
    bs = cfg.batch_stream(1)
    bs.accept([x[:13]])
    bs.reset(0)  # what came before the reset must not reach later vectors
    got = bs.accept([x])[0]
    assert torch.equal(_cat([got, bs.flush()[0]], cfg.dim), cfg.extract(x))
    assert bs.add_stream() == 1 and len(bs) == 2
    got = bs.accept([None, x])
    rest = bs.flush()
    assert got[0].shape == (0, cfg.dim)
    assert torch.equal(_cat([got[1], rest[1]], cfg.dim), cfg.extract(x))


@pytest.mark.parametrize("kind", KINDS)
def test_nan_input_is_refused(kind: str) -> None:
    cfg = FEATURES[kind]()
    x = cfg.example_input(_n_input(cfg), seed=0).copy()
    x.reshape(-1)[x.size // 2] = np.nan
    with pytest.raises(FeatureInputError, match="NaN"):
        cfg.extract(x)


@pytest.mark.parametrize(
    "cfg",
    [
        MfccConfig(n_fft=512, hop_length=32, n_mels=40, n_mfcc=13, context=5),  # > 512 frames: multi-block path
        SpectrumConfig(n_fft=512, hop_length=64, power=2.0, fmin=200.0, fmax=4000.0, context=2),  # > 128 frames
        WaveformConfig(frame_length=400, hop_length=160, context=3),
    ],
    ids=["mfcc-multiblock-context5", "spectrum-multiblock-band", "waveform-context3"],
)
@pytest.mark.parametrize("chunk", [7, 4000])
def test_streaming_parity_other_configs(cfg: FeatureConfig, chunk: int) -> None:
    x = cfg.example_input(int(1.5 * SR) + 77, seed=9)
    offline = cfg.extract(x)
    assert offline.shape == (cfg.n_vectors(len(x)), cfg.dim)
    assert torch.equal(_streamed(cfg, x, _cuts(len(x), chunk)), offline)


# -- mfcc -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [MfccConfig(), MfccConfig(n_fft=512, hop_length=256, n_mels=40, n_mfcc=13, fmin=50.0, fmax=7000.0)],
    ids=["default", "mels40-band"],
)
def test_mfcc_matches_librosa(cfg: MfccConfig) -> None:
    x = cfg.example_input(SR, seed=2)
    mel = librosa.feature.melspectrogram(
        y=x, sr=SR, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax,
        power=2.0, center=False,
    )
    # no top_db: it is relative to the clip's maximum, which a stream cannot know (see models/features/mfcc.py)
    ref = librosa.feature.mfcc(
        S=librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None), n_mfcc=cfg.n_mfcc, norm="ortho"
    )
    ours = cfg.extract(x).numpy().T
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) < 1e-3


def test_mfcc_is_the_dct_of_logmel() -> None:
    """The same log-mel dB as the logmel kind (no duplicated filterbank), context stacked frame-major."""
    cfg = MfccConfig(n_mels=40, n_mfcc=13, fmax=6000.0, context=3)
    x = cfg.example_input(SR, seed=4)
    logmel = LogMelConfig(n_mels=40, fmax=6000.0).extract(x)
    frames = logmel @ torch.from_numpy(dct_matrix(40, 13))
    stacked = cfg.extract(x)
    assert stacked.shape == (frames.shape[0] - 2, 39)
    expected = frames.unfold(0, 3, 1).transpose(1, 2).reshape(-1, 39)  # frames t, t+1, t+2, first frame first
    assert torch.allclose(stacked, expected, atol=1e-4)


@pytest.mark.parametrize(
    "bad,match",
    [({"n_mfcc": 80}, "n_mfcc=80"), ({"n_mels": 0}, "n_mels"), ({"fmax": 9000.0}, "9000"), ({"fmin": -1.0}, "-1.0")],
)
def test_mfcc_invalid_settings(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MfccConfig(**bad)


# -- spectrum -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [SpectrumConfig(), SpectrumConfig(n_fft=2048, hop_length=512, power=2.0, fmin=100.0, fmax=2000.0)],
    ids=["default", "power2-band"],
)
def test_spectrum_matches_librosa_stft(cfg: SpectrumConfig) -> None:
    x = cfg.example_input(SR, seed=6)
    mag = np.abs(librosa.stft(x, n_fft=cfg.n_fft, hop_length=cfg.hop_length, center=False, window="hann"))
    freqs = librosa.fft_frequencies(sr=SR, n_fft=cfg.n_fft)
    top = SR / 2 if cfg.fmax is None else cfg.fmax
    keep = (freqs >= cfg.fmin) & (freqs <= top)
    assert cfg.dim == int(keep.sum())
    np.testing.assert_allclose(cfg.frequencies, freqs[keep])
    mag = mag[keep].astype(np.float64)
    ref = 20.0 / cfg.power * np.log10(mag**cfg.power + EPS)
    ours = cfg.extract(x).numpy().T.astype(np.float64)
    assert ours.shape == ref.shape
    # float32 FFTs (ours and librosa's) err by ~1e-7 of the largest magnitude: a fraction of a millidecibel for
    # bins within 60 dB of it, more in the deep notches between lines, where the linear error is still that small
    loud = mag > 1e-3 * mag.max()
    assert np.max(np.abs(ours - ref)[loud]) < 1e-3
    assert np.max(np.abs(10.0 ** (ours / 20.0) - mag)) < 1e-6 * mag.max()


def test_spectrum_default_keeps_every_bin() -> None:
    cfg = SpectrumConfig()
    assert cfg.dim == cfg.n_fft // 2 + 1 == 2049
    assert SpectrumConfig(fmin=1000.0, fmax=1000.0).dim == 1  # 1000 Hz is bin 256 exactly


@pytest.mark.parametrize(
    "bad,match",
    [({"power": 1.5}, "1.5"), ({"fmax": 8001.0}, "8001"), ({"fmin": 3000.0, "fmax": 2000.0}, "3000"),
     ({"fmin": 1001.0, "fmax": 1002.0}, "no FFT bin"), ({"hop_length": 0}, "hop_length")],
)
def test_spectrum_invalid_settings(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SpectrumConfig(**bad)


# -- waveform -------------------------------------------------------------------------------------------------------


def test_waveform_frames_are_the_samples() -> None:
    cfg = WaveformConfig()
    x = cfg.example_input(SR + 300, seed=7)
    out = cfg.extract(x)
    assert out.shape == (cfg.n_vectors(len(x)), cfg.frame_length)
    t = torch.from_numpy(x)
    for i in range(out.shape[0]):
        assert torch.equal(out[i], t[i * cfg.hop_length : i * cfg.hop_length + cfg.frame_length])


def test_waveform_context_is_frame_major() -> None:
    cfg = WaveformConfig(frame_length=400, hop_length=160, context=2)
    x = cfg.example_input(SR, seed=8)
    out = cfg.extract(x)
    assert out.shape == (cfg.n_vectors(len(x)), 800)
    t = torch.from_numpy(x)
    for i in (0, 7, out.shape[0] - 1):
        a = t[i * 160 : i * 160 + 400]
        b = t[(i + 1) * 160 : (i + 1) * 160 + 400]
        assert torch.equal(out[i], torch.cat([a, b]))


def test_waveform_invalid_settings() -> None:
    with pytest.raises(ValueError, match="frame_length"):
        WaveformConfig(frame_length=0)


# -- vectors --------------------------------------------------------------------------------------------------------


def test_vectors_pass_rows_through() -> None:
    cfg = VectorsConfig(dim=4)
    x = cfg.example_input(50, seed=1)
    assert x.shape == (50, 4) and x.dtype == np.float32
    assert abs(np.corrcoef(x[:-1, 0], x[1:, 0])[0, 1]) > 0.5  # rows correlate with their neighbours
    assert torch.equal(cfg.extract(x), torch.from_numpy(x))
    s = cfg.stream()
    assert s.accept(x[3]).shape == (1, 4)  # a 1-D array of dim values is one row
    assert torch.equal(s.accept(x.astype(np.float64)), torch.from_numpy(x))
    assert torch.equal(s.accept(torch.from_numpy(x)), torch.from_numpy(x))
    assert s.accept(np.zeros((0, 4), np.float32)).shape == (0, 4)
    assert s.flush().shape == (0, 4)
    # the result is a copy: the caller may reuse its buffer
    buf = x.copy()
    got = s.accept(buf)
    buf[:] = 0.0
    assert torch.equal(got, torch.from_numpy(x))


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((5, 3), np.float32), "shape \\(5, 3\\)"),
        (np.zeros(7, np.float32), "shape \\(7,\\)"),
        (np.zeros((2, 5, 4), np.float32), "shape"),
        (np.zeros((5, 4), np.int64), "floating-point.*int64"),
        (torch.zeros((5, 4), dtype=torch.int32), "floating-point.*int32"),
        (np.array([[0.0, np.inf, 0.0, 0.0]]), "1 NaN/inf"),
        (np.array([[0.0, 1e300, 0.0, 0.0]]), "NaN/inf"),  # finite in float64, inf in float32
        (torch.full((2, 4), float("nan")), "8 NaN/inf"),
    ],
)
def test_vectors_bad_rows_are_refused(bad: object, match: str) -> None:
    with pytest.raises(FeatureInputError, match=match):
        VectorsConfig(dim=4).stream().accept(bad)


def test_vectors_batch_names_the_stream() -> None:
    bs = VectorsConfig(dim=4).batch_stream(2)
    with pytest.raises(FeatureInputError, match="stream 1: "):
        bs.accept([np.zeros((1, 4), np.float32), np.zeros((1, 5), np.float32)])
    with pytest.raises(ValueError, match="2 streams"):
        bs.accept([None])


def test_vectors_extract_batch_and_short_clip() -> None:
    cfg = VectorsConfig(dim=3)
    clips = [cfg.example_input(n, seed=n) for n in (4, 1, 9)]
    out = cfg.extract_batch(clips)
    assert [o.shape for o in out] == [(4, 3), (1, 3), (9, 3)]
    with pytest.raises(FeatureInputError, match="clip 1: 0 rows"):
        cfg.extract_batch([clips[0], np.zeros((0, 3), np.float32)])


def test_vectors_invalid_settings() -> None:
    with pytest.raises(ValueError, match="dim must be a positive integer, got 0"):
        VectorsConfig(dim=0)


def test_read_vectors_npz(tmp_path) -> None:
    X = VectorsConfig().example_input(6)
    np.savez(tmp_path / "plain.npz", X=X.astype(np.float64))
    got = read_vectors(tmp_path / "plain.npz")
    assert isinstance(got, VectorFile) and got.X.dtype == np.float32 and got.dim == 20 and len(got) == 6
    np.testing.assert_array_equal(got.X, X)
    assert got.names == [f"row{i}" for i in range(6)] and got.ids is None
    names = np.array([f"clip_{i}.wav" for i in range(6)])
    np.savez(tmp_path / "full.npz", X=X, names=names, ids=np.array(["id_00"] * 3 + ["id_02"] * 3))
    got = read_vectors(str(tmp_path / "full.npz"))
    assert got.names == names.tolist() and got.ids == ["id_00"] * 3 + ["id_02"] * 3


def test_read_vectors_csv(tmp_path) -> None:
    p = tmp_path / "v.csv"
    p.write_text("name,a,id,b\nx.wav,1.5,id_00,-2\ny.wav,3,id_01,4e-1\n")
    got = read_vectors(p)
    np.testing.assert_array_equal(got.X, np.array([[1.5, -2.0], [3.0, 0.4]], np.float32))
    assert got.names == ["x.wav", "y.wav"] and got.ids == ["id_00", "id_01"]
    p.write_text("a,b\n1,2\n3,4\n")
    got = read_vectors(p)
    assert got.names == ["row0", "row1"] and got.ids is None and got.X.shape == (2, 2)


def _write_npz(path, **arrays) -> None:
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("noX.npz", {"Y": np.zeros((2, 2))}, "no array 'X'"),
        ("flat.npz", {"X": np.zeros(5)}, "2-D"),
        ("text.npz", {"X": np.array([["a", "b"]])}, "numeric"),
        ("nan.npz", {"X": np.array([[0.0, np.nan]])}, "NaN/inf.*row 0, column 1"),
        ("names.npz", {"X": np.zeros((3, 2)), "names": np.array(["a", "b"])}, "2 names for 3 rows"),
        ("ids.npz", {"X": np.zeros((3, 2)), "ids": np.array(["a"] * 4)}, "4 ids for 3 rows"),
        ("obj.npz", {"X": np.zeros((1, 2)), "names": np.array([object()], dtype=object)}, "plain numbers"),
        ("cell.csv", "name,a,b\nx,1,two\n", "line 2, column 'b': 'two' is not a number"),
        ("empty_cell.csv", "a,b\n1,\n", "line 2, column 'b'"),
        ("inf.csv", "a,b\n1,inf\n", "NaN/inf"),
        ("ragged.csv", "a,b\n1,2,3\n", "line 2 has 3 cells"),
        ("onlynames.csv", "name\nx\n", "no numeric columns"),
        ("header.csv", "a,b\n", "no values"),
        ("junk.npz", b"this is not a zip file", "not a readable .npz"),
    ],
)
def test_read_vectors_refuses_bad_files_naming_them(tmp_path, name: str, content: object, match: str) -> None:
    p = tmp_path / name
    if isinstance(content, dict):
        _write_npz(p, **content)
    elif isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    with pytest.raises(FeatureInputError, match=match) as e:
        read_vectors(p)
    assert name in str(e.value)


def test_read_vectors_unknown_extension(tmp_path) -> None:
    p = tmp_path / "v.json"
    p.write_text("{}")
    with pytest.raises(ValueError, match="v.json.*unknown vector file type '.json'"):
        read_vectors(p)
