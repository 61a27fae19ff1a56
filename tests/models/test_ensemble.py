"""The score ensemble: its normalisation and combination maths, training (members fitted on the fit clips, the
combiner on their scores of held-out normals), the bundle with its members, offline and streamed scores equal to
the combination of the members' own scores, features computed once per distinct config, the CLI, the monitor's
pipeline, and the errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from models.bundle import Bundle, BundleError, load_bundle
from models.detectors.ensemble import ScoreEnsemble
from models.training.recipe import train_bundle
from offline.cli import main
from offline.datasets.index import load_clips
from tests.helpers import machine_audio

SR = 16000
WINDOW, HOP = 1.0, 0.5  # a hop every member's feature divides (clip statistics come in 0.1 s blocks)


def write_data(root: Path, n_train: int = 20) -> Path:
    for k in range(n_train):
        path = root / "fan" / "train" / f"normal_id_00_{k:08d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, machine_audio(1.5, k, sr=SR), SR, subtype="PCM_16")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("ensemble")
    data = write_data(tmp / "data")
    config = {"model": "ensemble", "params": {"members": list(ScoreEnsemble.quick_members)}, "holdout": 0.25,
              "threshold": "percentile:95", "window_seconds": WINDOW, "hop_seconds": HOP, "seed": 0}
    out = train_bundle(load_clips(data), "ensemble", "fan", tmp / "bundle", config, device="cpu", progress=False)
    return {"path": out, "bundle": load_bundle(out, device="cpu"), "data": data, "tmp": tmp, "config": config}


def _member_scores(b: Bundle, wavs: list[np.ndarray]) -> torch.Tensor:
    return torch.tensor(np.stack([m.score_wavs(wavs) for m in b.ordered_members()], axis=1))


def test_the_combiner_normalises_by_held_out_normals_and_combines() -> None:
    rng = np.random.default_rng(0)
    held = np.c_[rng.normal(10, 2, 50), rng.normal(-300, 40, 50)]
    X = np.c_[rng.normal(10, 4, 9), rng.normal(-300, 80, 9)]
    z = (X - held.mean(0)) / held.std(0, ddof=1)
    rank = np.stack([[((held[:, j] < x).sum() + (held[:, j] <= x).sum()) / (2 * len(held)) for x in X[:, j]]
                     for j in range(2)], axis=1)
    cases = {("zscore", "mean"): z @ [0.25, 0.75], ("zscore", "max"): (z * [1.0, 3.0]).max(1),
             ("rank", "mean"): rank @ [0.25, 0.75], ("rank", "max"): (rank * [1.0, 3.0]).max(1)}
    for (normalize, combine), expected in cases.items():
        ens = ScoreEnsemble(normalize=normalize, combine=combine, weights=[1.0, 3.0]).fit([torch.tensor(held)])
        got = ens.score_vectors(torch.tensor(X, dtype=torch.float32)).double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        # scored in groups of members (how the stream scorer runs members on different features): the same numbers
        parts = [ens.partial(torch.tensor(X[:, [j]]), [j]).numpy() for j in range(2)]
        merged = [ens.merge([p[i] for p in parts]) for i in range(len(X))]
        np.testing.assert_allclose(merged, got, rtol=1e-5, atol=1e-6)


def test_bad_combiner_settings_and_too_few_normals_are_refused() -> None:
    held = [torch.randn(10, 2)]
    with pytest.raises(ValueError, match="normalize must be one of"):
        ScoreEnsemble(normalize="minmax").fit(held)
    with pytest.raises(ValueError, match="2 non-negative numbers"):
        ScoreEnsemble(weights=[1.0]).fit(held)
    with pytest.raises(ValueError, match="at least 2 held-out"):
        ScoreEnsemble().fit([torch.randn(1, 2)])


def test_the_bundle_holds_its_members_and_learned_from_held_out_clips(trained: dict) -> None:
    b, meta = trained["bundle"], trained["bundle"].meta
    assert sorted(b.members) == ["ae", "forest", "ivector", "svm"]
    assert b.input_kind == "audio" and b.sample_rate == SR
    assert [m.name for m in b.ordered_members()] == ["iforest", "ocsvm", "dcase_ae", "ivector_gmm"]
    n_held = meta["training"]["n_normalising_clips"]
    assert n_held == 5 and meta["training"]["n_member_fit_clips"] == 15
    assert b.detector.reference_.shape == (n_held, 4)
    for m in b.ordered_members():  # each member was fitted on the 15 fit clips and thresholded on the 5 held out
        assert m.meta["training"]["n_fit_clips"] == 15 and m.meta["training"]["n_holdout_clips"] == 5
    # the config is recorded whole, members included
    assert meta["model"]["params"]["members"][0]["config"]["params"] == {"n_estimators": 20}


def test_offline_scores_are_the_combination_of_the_members_scores(trained: dict) -> None:
    b = trained["bundle"]
    wavs = [machine_audio(1.5, 100 + k, anomalous=k % 2 == 1, sr=SR) for k in range(4)]
    expected = b.detector.score_vectors(_member_scores(b, wavs).float()).double().numpy()
    np.testing.assert_allclose(b.score_wavs(wavs), expected, rtol=1e-5)
    assert b.score_wavs(wavs)[1] > b.score_wavs(wavs)[0]  # the anomalous clip scores higher


def test_members_with_one_feature_config_share_one_feature_stream(trained: dict) -> None:
    b = trained["bundle"]
    groups = b._member_groups()
    assert [g.positions for _, g in groups] == [[0, 1], [2], [3]]  # iforest and ocsvm: one clipstats computation
    scorer = b.stream_scorer(2, WINDOW, HOP)
    assert len(scorer.scorers) == 3 and len(scorer) == 2
    # the i-vector member, alone on its MFCC feature, streams from summed statistics; the shared group by windows
    assert [s.mode for s in scorer.scorers] == ["frames", "window", "statistics"]


def test_streamed_windows_equal_the_combination_of_each_members_streamed_windows(trained: dict) -> None:
    b = trained["bundle"]
    x = np.concatenate([machine_audio(2.0, 7, sr=SR), machine_audio(1.5, 8, anomalous=True, sr=SR)])
    sizes = [1, 777, 3000, 64, 5000]

    def stream(scorer) -> list[tuple[int, float]]:
        out, pos, i = [], 0, 0
        while pos < x.size:
            out += scorer.accept([x[pos : pos + sizes[i % len(sizes)]]])[0]
            pos, i = pos + sizes[i % len(sizes)], i + 1
        return out

    got = stream(b.stream_scorer(1, WINDOW, HOP))
    members = [stream(m.stream_scorer(1, WINDOW, HOP)) for m in b.ordered_members()]
    n = min(len(m) for m in members)
    assert len(got) == n == int((x.size / SR - WINDOW) / HOP) + 1
    raw = torch.tensor([[m[k][1] for m in members] for k in range(n)])
    np.testing.assert_allclose([s for _, s in got], b.detector.score_vectors(raw.float()).numpy(), rtol=1e-5)
    assert [e for e, _ in got] == [max(m[k][0] for m in members) for k in range(n)]


def test_cli_trains_and_scores_an_ensemble(trained: dict, capsys: pytest.CaptureFixture) -> None:
    tmp = trained["tmp"]
    for name in ("iforest", "ocsvm"):  # member configs named by path, relative to the ensemble config
        (tmp / f"{name}.yaml").write_text(json.dumps({"params": {"n_estimators": 10} if name == "iforest" else {}}))
    (tmp / "ens.yaml").write_text(json.dumps({
        "model": "ensemble", "holdout": 0.25, "threshold": "percentile:95",
        "params": {"members": [{"name": "a", "model": "iforest", "config": "iforest.yaml"},
                               {"model": "ocsvm", "config": "ocsvm.yaml"}], "normalize": "rank"}}))
    out = tmp / "cli_bundle"
    assert main(["train", "--data", str(trained["data"]), "--model", "ensemble", "--machine", "fan", "--config",
                 str(tmp / "ens.yaml"), "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    b = load_bundle(out, device="cpu")
    assert b.meta["model"]["params"]["members"][0]["config"]["params"] == {"n_estimators": 10}  # inlined
    assert b.detector.member_names() == ["a", "ocsvm"] == sorted(b.members)  # an unnamed member is named by its model
    wav = tmp / "probe.wav"
    sf.write(wav, machine_audio(1.5, 99, anomalous=True, sr=SR), SR, subtype="PCM_16")
    capsys.readouterr()
    assert main(["score", "--bundle", str(out), "--device", "cpu", str(wav)]) in (0,)
    line = json.loads(capsys.readouterr().out.strip())
    from models.audio import load_wav

    assert line["score"] == pytest.approx(float(b.score_wavs([load_wav(wav, SR)[0]])[0]), rel=1e-5)


def test_the_monitor_pipeline_streams_an_ensemble_bundle(trained: dict) -> None:
    from monitor.config import PipelineConfig
    from monitor.events import ScoreUpdate
    from monitor.pipeline import Pipeline
    from monitor.sources import AudioBlock, BlockQueue
    from tests.monitor.test_pipeline import StubSource

    b = trained["bundle"]
    events: list = []
    pipe = Pipeline(events.append, settings=PipelineConfig(device="cpu"))
    src = StubSource("a", BlockQueue(8), events.append)
    src.state = "online"
    pipe.add_source(src, b)
    x = machine_audio(3.0, 11, sr=SR)
    ups = []
    for k in range(0, x.size, 1600):
        ups += [e for e in pipe.process({"a": [AudioBlock(x[k : k + 1600], SR, 1000 + (k + 1600) / SR,
                                                          1000 + (k + 1600) / SR)]}) if isinstance(e, ScoreUpdate)]
    direct = [s for _, s in b.stream_scorer(1, b.window_seconds, b.hop_seconds).accept([x])[0]]
    np.testing.assert_allclose([u.score for u in ups], direct, rtol=1e-5)


def test_with_few_clips_members_fit_on_all_and_are_normalised_by_cross_fitted_scores(trained: dict,
                                                                                      tmp_path: Path) -> None:
    """4 clips and holdout 0.05 would hold out one clip: too few to normalise by, so nothing is held out and each
    member's normalising scores are its out-of-fold scores of the 4 clips (a copy fitted on the other folds)."""
    from models.training.recipe import _featurise, build_spec, cross_fitted_scores

    clips = load_clips(trained["data"])[:4]
    members = [{"name": "forest", "model": "iforest", "config": {"params": {"n_estimators": 20}}},
               {"name": "svm", "model": "ocsvm"}]
    cfg = {**trained["config"], "holdout": 0.05, "params": {"members": members}}
    b = load_bundle(train_bundle(clips, "ensemble", "fan", tmp_path / "few", cfg, device="cpu", progress=False),
                    device="cpu")
    training = b.meta["training"]
    assert training["normalising_scores"] == "cross-fitted" and training["n_normalising_clips"] == 4
    assert training["n_member_fit_clips"] == 4
    expected = []
    for m in members:
        def rebuild(m: dict = m) -> object:
            return build_spec(m["model"], {**m.get("config", {}), "threshold": cfg["threshold"]})

        feats = _featurise(clips, rebuild().feature, torch.device("cpu"), False)[0]
        expected.append(cross_fitted_scores(rebuild, feats, [c.id for c in clips], cfg["seed"]))
    np.testing.assert_allclose(b.detector.reference_.double().numpy(),  # each member's scores, sorted
                               np.sort(np.stack(expected, axis=1), axis=0), rtol=1e-5)
    for m in b.ordered_members():  # fitted on all 4, thresholded on their cross-fitted scores
        assert m.meta["training"]["n_fit_clips"] == 4 and m.meta["training"]["threshold_scores"] == "cross-fitted"


def test_ensemble_errors_are_clear(trained: dict, tmp_path: Path) -> None:
    clips, cfg = load_clips(trained["data"]), trained["config"]
    one = {**cfg, "params": {"members": [{"model": "iforest"}]}}
    with pytest.raises(ValueError, match="at least 2 members"):
        train_bundle(clips, "ensemble", "fan", tmp_path / "x", one)
    twice = {**cfg, "params": {"members": [{"name": "a", "model": "iforest"}, {"name": "a", "model": "ocsvm"}]}}
    with pytest.raises(ValueError, match="used once"):
        train_bundle(clips, "ensemble", "fan", tmp_path / "x", twice)
    nested = {**cfg, "params": {"members": [{"model": "iforest"}, {"model": "ensemble"}]}}
    with pytest.raises(ValueError, match="cannot be a member"):
        train_bundle(clips, "ensemble", "fan", tmp_path / "x", nested)
    pair = {**cfg, "params": {"members": [{"model": "iforest"}, {"model": "ocsvm"}]}}
    with pytest.raises(ValueError, match="at least 2"):
        train_bundle(clips[:1], "ensemble", "fan", tmp_path / "x", pair)
    needs_two = {**cfg, "params": {"members": [{"model": "iforest"}, {"model": "ivector_gmm"}]}}
    with pytest.raises(ValueError, match=r"cross-fitting ivector_gmm \(2 folds of 2 clips, each copy fitted on 1\)"):
        train_bundle(clips[:2], "ensemble", "fan", tmp_path / "x", needs_two)
    broken = tmp_path / "broken"
    shutil.copytree(trained["path"], broken)
    shutil.rmtree(broken / "members" / "svm")
    with pytest.raises(BundleError, match="member 'svm'"):
        load_bundle(broken, device="cpu")
