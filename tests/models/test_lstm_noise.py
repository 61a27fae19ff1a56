"""The noise models (`lstm_classifier`, `lstm_denoiser`) against the contract they share with detectors (params,
state, bundles) plus what only they do: learning from pairs, denoising causally, and the `lstm_denoiser` stage
streamed with carried state equal to the offline pass."""

from __future__ import annotations

import os

from dataclasses import replace

import numpy as np
import pytest
import torch

from models.bundle import load_bundle, save_bundle
from models.detectors import REGISTRY, get_detector, registered
from models.features import LogMelConfig
from models.training.recipe import build_spec, fit_bundle
from tests.helpers import SR, machine_audio, make_denoiser_bundle, noisy_pair_audio

NOISE_MODELS = registered("classifier") + registered("denoiser")
FEATURE = LogMelConfig(sample_rate=SR, n_fft=256, hop_length=128, n_mels=24)


def _pairs(n: int, seed: int = 0, seconds: float = 2.0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    audio = [noisy_pair_audio(seconds, seed + k, snr_db=float([6, 0, -6][k % 3])) for k in range(n)]
    return [FEATURE.extract(noisy) for _, noisy in audio], [FEATURE.extract(clean) for clean, _ in audio]


@pytest.fixture(scope="module")
def models() -> dict:
    noisy, clean = _pairs(6)
    return {name: REGISTRY[name](**{**REGISTRY[name].quick_params, "epochs": 15, "hidden": 16}).fit_pairs(noisy, clean)
            for name in NOISE_MODELS}


def test_both_noise_models_are_registered_with_their_bundle_kinds() -> None:
    assert NOISE_MODELS == ["lstm_classifier", "lstm_denoiser"]
    assert "lstm_classifier" not in registered() and "dcase_ae" in registered()


@pytest.mark.parametrize("name", NOISE_MODELS)
def test_fit_without_pairs_says_how_to_train(name: str) -> None:
    det = REGISTRY[name](**REGISTRY[name].quick_params)
    with pytest.raises(ValueError, match="paired noisy and clean"):
        det.fit([torch.zeros(20, 24)])


@pytest.mark.parametrize("name", NOISE_MODELS)
def test_bad_pairs_are_refused(name: str) -> None:
    det = REGISTRY[name](**REGISTRY[name].quick_params)
    noisy, clean = _pairs(2)
    with pytest.raises(ValueError, match="must pair"):
        det.fit_pairs(noisy, clean[:1])
    with pytest.raises(ValueError, match="noisy and .* clean frames"):
        det.fit_pairs(noisy, [c[:-1] for c in clean])
    with pytest.raises(ValueError, match="fewer than seq_frames"):
        det.fit_pairs([n[:4] for n in noisy], [c[:4] for c in clean])
    with pytest.raises(ValueError, match="context to 1"):
        det.check_feature(LogMelConfig(n_mels=24, context=5))


def test_the_classifier_tells_noisy_from_clean_windows(models) -> None:
    fitted = models["lstm_classifier"]
    noisy, clean = _pairs(6, seed=100)
    p_noisy, p_clean = fitted.score(noisy), fitted.score(clean)
    assert ((p_noisy >= 0) & (p_noisy <= 1)).all() and ((p_clean >= 0) & (p_clean <= 1)).all()
    assert p_noisy.min() > p_clean.max()
    short = fitted.score([noisy[0][:3]])  # shorter than one crop: one crop of all of it
    assert short.shape == (1,) and 0 <= short[0] <= 1


def test_the_denoiser_brings_noisy_frames_closer_to_clean_and_scores_nothing(models) -> None:
    fitted = models["lstm_denoiser"]
    noisy, clean = _pairs(4, seed=100)
    out = fitted.denoise(noisy)
    assert [o.shape for o in out] == [n.shape for n in noisy]
    err = np.mean([fitted.standardised_error(o, c) for o, c in zip(out, clean)])
    before = np.mean([fitted.standardised_error(n, c) for n, c in zip(noisy, clean)])
    assert err < 0.7 * before
    with pytest.raises(ValueError, match="scores nothing"):
        fitted.score(noisy)


def test_denoising_in_steps_equals_the_offline_pass(models) -> None:
    fitted = models["lstm_denoiser"]
    noisy, _ = _pairs(2, seed=200)
    offline = fitted.denoise(noisy)
    state = None
    steps = []
    for a, b in [(0, 1), (1, 8), (8, 9), (9, 40), (40, noisy[0].shape[0])]:
        y, state = fitted.denoise_step(noisy[0][a:b][None], state)
        steps.append(y[0])
    torch.testing.assert_close(torch.cat(steps), offline[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NOISE_MODELS)
def test_state_round_trips_through_a_bundle(models, name: str, tmp_path) -> None:
    fitted = models[name]
    path = save_bundle(tmp_path / "b", fitted, FEATURE, 0.5, {"method": "fixed"}, "hum", ["00"], {})
    b = load_bundle(path, device="cpu")
    assert b.kind == fitted.bundle_kind and b.name == fitted.name
    noisy, _ = _pairs(2, seed=300)
    if fitted.name == "lstm_classifier":
        np.testing.assert_allclose(b.detector.score(noisy), fitted.score(noisy), rtol=1e-6)
        wavs = [noisy_pair_audio(2.0, 300 + k)[1] for k in range(2)]
        np.testing.assert_allclose(b.score_wavs(wavs), fitted.score([FEATURE.extract(w) for w in wavs]), rtol=1e-5)
    else:
        for x, y in zip(b.detector.denoise(noisy), fitted.denoise(noisy)):
            torch.testing.assert_close(x, y)
    with pytest.raises(ValueError):
        type(fitted)(**fitted.get_params()).load_state_dict({**fitted.state_dict(), "extra": torch.zeros(1)})


# -- the stage ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def denoiser_dir(tmp_path_factory: pytest.TempPathFactory):
    return make_denoiser_bundle(tmp_path_factory.mktemp("den"), n_mels=24, epochs=5)


def _denoised_detector(out, denoiser_dir, context: int, model: str = "dcase_ae"):
    params = {**REGISTRY[model].quick_params, **({"epochs": 3} if REGISTRY[model].iterative() else {})}
    spec = build_spec(model, {"feature": {**FEATURE.to_dict(), "context": context}, "params": params,
                              "stages": [{"name": "lstm_denoiser", "params": {"bundle": str(denoiser_dir)}}],
                              "threshold": "percentile:100", "window_seconds": 1.0, "hop_seconds": 0.25})
    feats = spec.feature.extract_batch([noisy_pair_audio(2.0, k)[1] for k in range(6)])
    return load_bundle(fit_bundle(out, spec, feats[:4], None, feats[4:], None, machine="hum"), device="cpu")


@pytest.mark.parametrize("context", [1, 3])
def test_the_stage_unstacks_denoises_and_restacks_context_frames(denoiser_dir, context: int) -> None:
    stage = get_stage_fitted(denoiser_dir, context)
    wav = noisy_pair_audio(2.0, 7)[1]
    stacked = replace(FEATURE, context=context).extract(wav)
    frames = FEATURE.extract(wav)
    den = load_bundle(denoiser_dir, device="cpu").detector.denoise([frames])[0]
    want = den.unfold(0, context, 1).transpose(1, 2).reshape(-1, context * 24)
    torch.testing.assert_close(stage.transform_clips([stacked])[0], want)


def get_stage_fitted(denoiser_dir, context: int):
    from models.stages import get_stage

    stacked = replace(FEATURE, context=context).extract(machine_audio(1.0, 0))
    return get_stage("lstm_denoiser")(bundle=str(denoiser_dir)).fit([stacked])


@pytest.mark.parametrize("context", [1, 3])
def test_a_denoised_detector_streams_what_it_scores_offline(tmp_path, denoiser_dir, context: int) -> None:
    """The monitor's path (chunks of any size, windows sliding over one stream with the LSTM state carried) equals
    the offline pass over the same audio: each window's score is the detector's on the offline-denoised frames."""
    b = _denoised_detector(tmp_path / "det", denoiser_dir, context)
    assert b.meta["stages"][0]["name"] == "lstm_denoiser" and b.chain.causal_stages
    wav = np.concatenate([noisy_pair_audio(2.0, 50 + k)[1] for k in range(2)])
    scorer = b.stream_scorer(n_streams=2, window=1.0, hop=0.25)
    got: list[list[tuple[int, float]]] = [[], []]
    rng = np.random.default_rng(0)
    pos = [0, 0]
    while min(pos) < wav.size:
        chunks = []
        for s in range(2):
            n = int(rng.integers(1, 3000)) if s == 0 else 512
            chunks.append(wav[pos[s] : pos[s] + n] if pos[s] < wav.size else None)
            pos[s] += n
        for s, out in enumerate(scorer.accept(chunks)):
            got[s] += out
    # offline: the whole stream's vectors denoised from its start, then each window's vectors scored
    vectors = b.chain.causal_stages[0].transform_clips([b.feature.extract(wav)])[0]
    per_vector = b.detector.score_vectors(vectors).double().numpy()
    win, hop = b.feature.n_vectors(int(1.0 * SR)), int(round(0.25 * SR / b.feature.hop_samples))
    want = [per_vector[e - win : e].mean() for e in range(win, vectors.shape[0] + 1, hop)]
    for s in range(2):
        np.testing.assert_allclose([v for _, v in got[s]], want, rtol=1e-4)
    # whole clips (asd-offline score) are the same scorer with the window set to the clip
    np.testing.assert_allclose(b.score_wavs([wav]), [per_vector.mean()], rtol=1e-4)


def test_a_window_level_detector_behind_the_denoiser_streams_what_it_scores_offline(tmp_path, denoiser_dir) -> None:
    """The same for a detector that scores whole windows (segment embeddings, not a mean of per-vector scores)."""
    b = _denoised_detector(tmp_path / "det", denoiser_dir, 1, model="embed_knn")
    wav = np.concatenate([noisy_pair_audio(2.0, 60 + k)[1] for k in range(2)])
    scorer = b.stream_scorer(n_streams=1, window=1.0, hop=0.25)
    got: list[float] = []
    for start in range(0, wav.size, 700):
        got += [v for _, v in scorer.accept([wav[start : start + 700]])[0]]
    vectors = b.chain.causal_stages[0].transform_clips([b.feature.extract(wav)])[0]
    win, hop = b.feature.n_vectors(int(1.0 * SR)), int(round(0.25 * SR / b.feature.hop_samples))
    want = b.detector.score([vectors[e - win : e] for e in range(win, vectors.shape[0] + 1, hop)], ["hum"] * len(got))
    assert len(got) == len(want) > 4
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_a_denoiser_stage_needs_a_denoiser_bundle_on_the_same_log_mel(tmp_path, denoiser_dir) -> None:
    with pytest.raises(ValueError, match="give the denoiser bundle"):
        build_spec("dcase_ae", {"feature": FEATURE.to_dict(), "stages": ["lstm_denoiser"]})
    with pytest.raises(ValueError, match=r"differs from the denoiser bundle's in \['n_mels'\]"):
        build_spec("dcase_ae", {"feature": {**FEATURE.to_dict(), "n_mels": 32},
                                "stages": [{"name": "lstm_denoiser", "params": {"bundle": str(denoiser_dir)}}]})
    other = tmp_path / "ae"
    from tests.helpers import make_tiny_bundle

    make_tiny_bundle(other)
    with pytest.raises(ValueError, match="not a denoiser"):
        build_spec("dcase_ae", {"feature": FEATURE.to_dict(),
                                "stages": [{"name": "lstm_denoiser", "params": {"bundle": str(other)}}]})


def test_the_source_bundle_is_read_once_per_training_and_again_when_rewritten(tmp_path, denoiser_dir,
                                                                              monkeypatch) -> None:
    import shutil

    import models.bundle
    from models.stages import lstm_denoiser

    reads: list[str] = []
    real = models.bundle.load_bundle
    monkeypatch.setattr(models.bundle, "load_bundle", lambda path, **kw: reads.append(str(path)) or real(path, **kw))
    src = tmp_path / "den"
    shutil.copytree(denoiser_dir, src)
    _denoised_detector(tmp_path / "a", src, 1)  # the feature check and the fit
    _denoised_detector(tmp_path / "b", src, 3)
    assert reads == [str(src.resolve())]
    shutil.copytree(denoiser_dir, src, dirs_exist_ok=True)
    os.utime(src / models.bundle.WEIGHTS_FILE, ns=(1, 1))  # written again (another time stamp)
    assert lstm_denoiser.LstmDenoiserStage(bundle=str(src)).source_feature() and len(reads) == 2


def test_a_detector_bundle_with_the_stage_is_self_contained(tmp_path, denoiser_dir) -> None:
    import shutil

    src = tmp_path / "den_copy"
    shutil.copytree(denoiser_dir, src)
    b = _denoised_detector(tmp_path / "det", src, 1)
    shutil.rmtree(src)  # the detector bundle carries the network: the source may go
    again = load_bundle(b.path, device="cpu")
    wav = noisy_pair_audio(2.0, 9)[1]
    np.testing.assert_allclose(again.score_wavs([wav]), b.score_wavs([wav]))


def test_noise_models_refuse_normal_clip_training_and_detectors_refuse_pairs() -> None:
    from models.training.recipe import train_bundle

    with pytest.raises(ValueError, match="noise model"):
        train_bundle([], "lstm_denoiser", "fan", "unused")
    with pytest.raises(ValueError, match="'pairs' configures the noise models"):
        build_spec("dcase_ae", {"pairs": {"snrs": [0]}})
    assert get_detector("lstm_classifier").iterative()
