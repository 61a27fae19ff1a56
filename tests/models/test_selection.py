"""Choosing a detector from normal clips alone (models.training.selection, `asd-offline select`): the pseudo-faults
are added at the stated level, the candidate rule follows the registry, the choice is the highest pseudo-AUC, and
the chosen bundle records the selection."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from models.bundle import load_bundle
from models.detectors import get_detector, registered
from models.training.selection import (
    FAULT_LEVELS_DB,
    GAIN_CHECK_DB,
    GAIN_TOLERANCE,
    PSEUDO_FAULTS,
    add_fault,
    default_candidates,
    gain_auc,
    select_detector,
)
from offline.cli import main
from tests.helpers import machine_audio
from tests.offline.test_train_cli import write_dcase


@dataclass(frozen=True)
class _Clip:
    path: Path
    machine: str = "fan"
    id: str = "id_00"
    split: str = "train"
    label: str = "normal"


def _hum(clip: _Clip, rate: int) -> np.ndarray:
    """A steady machine hum, a new stretch of noise per clip (its seed is the clip's name)."""
    return machine_audio(4.0, int(clip.path.stem), sr=rate)


@pytest.mark.parametrize("kind", PSEUDO_FAULTS)
@pytest.mark.parametrize("level", FAULT_LEVELS_DB)
def test_a_pseudo_fault_is_added_at_its_level_below_the_clip(kind: str, level: float) -> None:
    x = machine_audio(3.0, 0, sr=16000)
    y = add_fault(x, 16000, kind, level, np.random.default_rng(1))
    assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
    added = y.astype(np.float64) - x
    ratio_db = 20 * np.log10(np.sqrt(np.mean(added**2)) / np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    assert ratio_db == pytest.approx(level, abs=0.01)
    other = add_fault(x, 16000, kind, level, np.random.default_rng(2))
    assert not np.allclose(other, y)  # each fault from its own seed: another frequency, rate or band


def test_pseudo_fault_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown pseudo-fault 'grind'"):
        add_fault(machine_audio(1.0, 0), 8000, "grind", -10.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="silent clip"):
        add_fault(np.zeros(8000, dtype=np.float32), 8000, "whine", -10.0, np.random.default_rng(0))


def test_the_default_candidates_are_every_one_pass_single_per_id_detector() -> None:
    chosen = default_candidates()
    assert chosen == sorted(chosen) and chosen
    for name in registered("detector"):
        cls = get_detector(name)
        cheap = not (cls.iterative() or cls.needs_ids or cls.combines_members)
        assert (name in chosen) == cheap, name


def test_the_choice_is_the_highest_pseudo_auc_and_faults_are_noticed() -> None:
    clips = [_Clip(Path(f"{i}.wav")) for i in range(6)]
    configs = {"embed_knn": {"model": "embed_knn"}, "modspec_graph": {"model": "modspec_graph"}}
    sel = select_detector(clips, "fan", configs, seed=3, load=_hum)
    assert set(sel.pseudo_auc) == set(configs) and not sel.failed
    eligible = [n for n in configs if n not in sel.follows_gain] or list(configs)
    assert sel.chosen == max(eligible, key=lambda n: (sel.pseudo_auc[n], -list(configs).index(n)))
    assert (sel.n_clips, sel.folds) == (6, 5)
    # a steady hum with a whine, impacts or hiss on top at -20/-10 dB: both notice most of them (0.5 would mean the
    # faults were not there, or not scored)
    assert all(v > 0.7 for v in sel.pseudo_auc.values()), sel.pseudo_auc
    again = select_detector(clips, "fan", configs, seed=3, load=_hum)
    assert again.pseudo_auc == sel.pseudo_auc  # seeded folds and faults


def test_selection_errors_are_clear_and_an_unmeasurable_candidate_is_reported() -> None:
    clips = [_Clip(Path(f"{i}.wav")) for i in range(2)]
    with pytest.raises(ValueError, match="at least 2"):
        select_detector(clips[:1], "fan", {"embed_knn": {}}, load=_hum)
    with pytest.raises(ValueError, match="no candidate"):
        select_detector(clips, "fan", {}, load=_hum)
    with pytest.raises(ValueError, match="ensemble cannot be a candidate"):
        select_detector(clips, "fan", {"ensemble": {}}, load=_hum)
    # two clips: each fold fits on one, which the i-vector back end cannot; the other candidate is still chosen
    sel = select_detector(clips, "fan", {"ivector_gmm": {}, "embed_knn": {}}, load=_hum)
    assert sel.chosen == "embed_knn" and "ivector_gmm" in sel.failed and "ivector_gmm" not in sel.pseudo_auc


def test_select_cli_trains_the_chosen_detector_and_its_bundle_says_why(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    data = write_dcase(tmp_path / "data", ids=("id_00",), n_train=6, seconds=2.0)
    report, out = tmp_path / "sel.json", tmp_path / "bundle"
    assert main(["select", "--data", str(data), "--machine", "fan", "--candidates", "embed_knn,lof",
                 "--configs", str(tmp_path / "no_configs"), "--report", str(report), "--out", str(out),
                 "--holdout", "0"]) == 0
    printed = capsys.readouterr().out
    got = json.loads(report.read_text())
    assert set(got["pseudo_auc"]) == {"embed_knn", "lof"}
    eligible = [n for n in got["pseudo_auc"] if n not in got["follows_gain"]] or list(got["pseudo_auc"])
    assert got["chosen"] == max(eligible, key=lambda n: (got["pseudo_auc"][n], n == "embed_knn"))
    assert set(got["gain_auc"]) == set(got["pseudo_auc"])
    assert f"* {got['chosen']}" in printed
    bundle = load_bundle(out, device="cpu")
    assert bundle.name == got["chosen"]
    assert bundle.meta["training"]["selection"]["pseudo_auc"] == got["pseudo_auc"]


def test_the_gain_gate_keeps_out_a_candidate_whose_scores_follow_the_input_gain(
        caplog: pytest.LogCaptureFixture) -> None:
    clips = [_Clip(Path(f"{i}.wav")) for i in range(4)]
    plain = {"model": "modspec_graph"}
    level = {"model": "modspec_graph", "feature": {"kind": "modspec", "level_norm": True}}
    sel = select_detector(clips, "fan", {"plain": plain, "level": level, "knn": {"model": "embed_knn"}}, load=_hum)
    # level-normalised features ignore a gain up to rounding, which moves no score past another clip's
    assert sel.gain_auc["level"] == sel.gain_auc["knn"] == {str(g): 0.5 for g in GAIN_CHECK_DB}
    # the study's features carry the level: a 3 dB gain moves every held-out score the same way
    assert any(abs(v - 0.5) > GAIN_TOLERANCE for v in sel.gain_auc["plain"].values()), sel.gain_auc
    assert sel.follows_gain == ["plain"] and sel.chosen in ("level", "knn")  # whatever their pseudo-AUCs
    assert sel.to_dict()["follows_gain"] == ["plain"]
    # when every candidate follows the gain, the best of them is chosen, and the log says what that means
    alone = select_detector(clips, "fan", {"plain": plain}, load=_hum)
    assert alone.chosen == "plain" and "follow the input gain" in caplog.text


def test_the_gain_auc_compares_different_clips_only() -> None:
    recorded = np.array([1.0, 2.0, 3.0, 4.0])
    assert gain_auc(recorded, recorded) == 0.5
    assert gain_auc(recorded, recorded + 1e-9) == 0.5  # a change at the numbers' precision counts for nothing
    assert gain_auc(recorded, recorded + 10) == 1.0 and gain_auc(recorded, recorded - 10) == 0.0
    assert gain_auc(recorded, recorded + 1.0) == pytest.approx(7.5 / 12)  # 6 of 12 pairs above, 3 ties


def test_two_variants_of_one_detector_compete_under_their_own_names() -> None:
    clips = [_Clip(Path(f"{i}.wav")) for i in range(4)]
    configs = {"plain": {"model": "modspec_graph"},
               "level": {"model": "modspec_graph", "feature": {"kind": "modspec", "level_norm": True}}}
    sel = select_detector(clips, "fan", configs, load=_hum)
    assert set(sel.pseudo_auc) == {"plain", "level"} and sel.chosen in configs
    assert sel.pseudo_auc["plain"] != sel.pseudo_auc["level"]  # not the same features twice


def test_select_defaults_to_the_gain_independent_configs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from models.training.selection import GAIN_INDEPENDENT
    from offline.select import candidate_configs

    repo_configs = Path(__file__).resolve().parents[2] / "configs"
    configs = candidate_configs(list(GAIN_INDEPENDENT), repo_configs)
    assert [c["model"] for c in configs.values()] == ["embed_knn", "modspec_graph", "modspec_graph"]
    assert configs["embed_knn"]["params"]["level_norm"] is True
    assert configs["modspec_graph_level"]["feature"]["level_norm"] is True
    assert configs["modspec_graph_depth"]["feature"]["log_envelope"] is True
    with pytest.raises(ValueError, match="unknown"):
        candidate_configs(["no_such_thing"], repo_configs)
    data = write_dcase(tmp_path / "data", ids=("id_00",), n_train=4, seconds=2.0)
    report = tmp_path / "sel.json"
    assert main(["select", "--data", str(data), "--machine", "fan", "--configs", str(repo_configs),
                 "--report", str(report)]) == 0
    assert set(json.loads(report.read_text())["pseudo_auc"]) | set(json.loads(report.read_text())["failed"]) == set(
        GAIN_INDEPENDENT)
