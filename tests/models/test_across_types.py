"""Classifiers of machine ids across machine types (`across_types: true`, `Detector.learns_other_types`): the other
types' normal training clips become extra classes `<type>/<id>`, while the threshold, the cross-fitting folds and
the bundle's ids stay the machine's own, and the monitor streams such a bundle as offline; through the recipe
(stages fitted on the own clips and applied to the others), the errors on a misuse, and `asd-offline train` on a
data set of several types (`id_classifier`, `stgram_mfn` at a tiny size)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from models.bundle import load_bundle
from models.detectors.id_classifier import IdClassifier
from models.detectors.stgram_mfn.detector import StgramMfn
from models.training.recipe import Others, build_spec, fit_chain, train_bundle
from offline.cli import main
from offline.datasets.index import load_clips
from tests.offline.test_train_cli import FAST, write_dcase

ACROSS = {"params": {**IdClassifier.quick_params, "across_types": True}}  # gamma: few clips cross-fit


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fan (4 training clips) and two pumps (3 each): a user with a single machine of one type."""
    out = write_dcase(tmp_path_factory.mktemp("types"), ids=("id_00",), n_train=4)
    return write_dcase(out, machine="pump", ids=("id_01", "id_03"), n_train=3)


def test_one_machine_is_told_apart_from_the_other_types(root: Path, tmp_path: Path) -> None:
    clips = load_clips(root)
    out = train_bundle(clips, "id_classifier", "fan", tmp_path / "b", ACROSS, device="cpu", progress=False,
                       other_types=clips)  # the fan's own clips among them are not extra classes
    b = load_bundle(out, device="cpu")
    assert b.ids == ["id_00"]
    assert b.detector.learned()["ids"] == ["id_00", "pump/id_01", "pump/id_03"]
    assert b.meta["training"]["other_types"] == {"clips": 6, "types": ["pump"], "classes": 2}
    # 4 own clips are too few to hold one out for a gamma fit: the threshold comes from cross-fitted folds, each
    # fitted on the other folds' own clips and all the pumps'
    assert b.meta["training"]["threshold_scores"] == "cross-fitted"
    tests = [sf.read(c.path, dtype="float32")[0] for c in clips if c.machine == "fan" and c.split == "test"]
    scores = b.score_wavs(tests, ids=["id_00"] * len(tests))
    assert np.isfinite(scores).all() and (scores >= 0).all()
    with pytest.raises(ValueError, match="pump/id_01"):
        b.check_machine_id("pump/id_01")  # another type's class is not a source this bundle serves
    # the monitor's path: a stream of one test clip in chunks, one window over all of it, scores as offline
    scorer = b.stream_scorer(n_streams=1, window=len(tests[0]) / b.sample_rate, hop=0.25, machine_ids=["id_00"])
    chunks = [tests[0][start : start + 3000] for start in range(0, len(tests[0]), 3000)]
    streamed = [v for chunk in chunks for _, v in scorer.accept([chunk])[0]]
    np.testing.assert_allclose(streamed, scores[:1], rtol=1e-5)


def test_a_single_id_without_across_types_says_how_to_get_outliers(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="across_types: true"):
        train_bundle(load_clips(root, machine="fan"), "id_classifier", "fan", tmp_path / "b",
                     {**ACROSS, "params": IdClassifier.quick_params}, device="cpu", progress=False)


def test_misuse_is_refused_before_any_audio_is_read(root: Path, tmp_path: Path) -> None:
    fans = load_clips(root, machine="fan")
    with pytest.raises(ValueError, match="no normal training clips of any type but fan"):
        train_bundle(fans, "id_classifier", "fan", tmp_path / "a", ACROSS, progress=False, other_types=fans)
    with pytest.raises(ValueError, match="embed_knn does not learn other machine types"):
        train_bundle(fans, "embed_knn", "fan", tmp_path / "b", None, progress=False, other_types=load_clips(root))
    with pytest.raises(ValueError, match="across_types must be true or false"):
        IdClassifier(**{**IdClassifier.quick_params, "across_types": "yes"}).fit(
            [torch.randn(40, 6)] * 2, ["a", "b"])
    assert not any(tmp_path.iterdir())


def test_stages_are_fitted_on_the_own_clips_and_applied_to_the_others() -> None:
    spec = build_spec("id_classifier", {"params": {**IdClassifier.quick_params, "across_types": True},
                                        "stages": [{"name": "minmax"}]})
    g = torch.Generator().manual_seed(0)
    own = [torch.rand(40, 6, generator=g) for _ in range(2)]
    far = [100 + torch.rand(40, 6, generator=g) for _ in range(2)]  # far outside the own clips' range
    chain, seen = fit_chain(spec, own, ["id_00"] * 2, Others(far, ["pump/id_01"] * 2))
    assert all(float(c.min()) >= 0 and float(c.max()) <= 1 for c in seen)  # the own clips define the scale
    assert float(spec.stages[0].transform_clips(far)[0].min()) > 1  # the others went through it as they are
    assert chain.detector.learned()["ids"] == ["id_00", "pump/id_01"]


@pytest.mark.parametrize("model", ["id_classifier", "stgram_mfn"])
def test_cli_trains_across_the_types_of_data(model: str, root: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    quick = {"id_classifier": IdClassifier.quick_params, "stgram_mfn": StgramMfn.quick_params}[model]
    cfg = tmp_path / "across.yaml"
    cfg.write_text(yaml.safe_dump({"params": {**{k: v for k, v in quick.items() if k != "epochs"},
                                              "across_types": True}, "threshold": "percentile:90"}))
    out = tmp_path / model
    assert main(["train", "--data", str(root), "--model", model, "--machine", "fan", "--config", str(cfg),
                 "--out", str(out), *FAST]) == 0
    b = load_bundle(out, device="cpu")
    classes = b.detector.learned()["ids" if model == "id_classifier" else "classes"]
    assert b.ids == ["id_00"] and classes == ["id_00", "pump/id_01", "pump/id_03"]
    assert b.meta["training"]["other_types"]["types"] == ["pump"]
    assert b.detector.get_params()["across_types"] is True
    tests = sorted(str(p) for p in (root / "fan" / "test").glob("*.wav"))
    capsys.readouterr()
    assert main(["score", "--bundle", str(out), "--id", "id_00", "--device", "cpu", *tests]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == len(tests) and all(np.isfinite(line["score"]) for line in lines)
