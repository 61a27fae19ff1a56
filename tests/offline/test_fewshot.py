"""The few-normals benchmark's protocol (benchmarks/bench_fewshot.py) on a small generated data set: how units
are formed, that splits are seeded, disjoint and nested across levels, that the paired bootstrap behaves, and one
end-to-end run through `train_bundle` and `Bundle.score_wavs`."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soundfile as sf

from tests.helpers import SR, machine_audio


def _bench() -> ModuleType:
    from benchmarks import bench_fewshot

    return bench_fewshot


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest in the shared data's layout: two sets of one type, a DCASE-named set with two domains, a set
    too small to take part, and a byte-identical copy."""
    root = tmp_path_factory.mktemp("real")
    rows = []

    def add(rel: str, machine: str, mid: str, label: str, seed: int) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, machine_audio(1.0, seed, anomalous=label == "anomaly"), SR, subtype="PCM_16")
        rows.append({"path": rel, "machine": machine, "id": mid, "label": label})

    for i in range(8):
        add(f"setA/hum/n{i}.wav", "hum", "id_00", "normal", i)
    for i in range(4):
        add(f"setA/hum/a{i}.wav", "hum", "id_00", "anomaly", 100 + i)
    for i in range(5):
        add(f"setB/n{i}.wav", "hum", "id_??", "normal", 200 + i)
    add("setB/a0.wav", "hum", "id_??", "anomaly", 300)
    for d, dom in enumerate(("source", "target")):
        for i in range(4):
            add(f"dc/section_00_{dom}_train_normal_{i:04d}.wav", "buzz", "section_00", "normal", 400 + 10 * d + i)
        add(f"dc/section_00_{dom}_test_anomaly_0000.wav", "buzz", "section_00", "anomaly", 500 + d)
    for i in range(3):  # 3 normals: too few
        add(f"small/n{i}.wav", "buzz", "id_02", "normal", 600 + i)
    add("small/a0.wav", "buzz", "id_02", "anomaly", 601)
    (root / "copy").mkdir()
    (root / "copy" / "n0.wav").write_bytes((root / "setA/hum/n0.wav").read_bytes())
    rows.append({"path": "copy/n0.wav", "machine": "hum", "id": "id_00", "label": "normal"})
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "machine", "id", "label"])
        w.writeheader()
        w.writerows(rows)
    return root


def test_units_are_one_set_and_domain_each_with_enough_clips(real: Path) -> None:
    units = _bench().find_units(real)
    got = {u.name: (len(u.normals), len(u.anomalies)) for u in units}
    # the DCASE domains are two units; the 3-normal set is out; of the two identical files the one in the larger
    # set is kept (the copy's own set is then empty)
    assert got == {"buzz/section_00_source": (4, 1), "buzz/section_00_target": (4, 1), "hum/id_00": (8, 4),
                   "hum/id_??": (5, 1)}


def test_splits_are_seeded_disjoint_and_levels_nest(real: Path) -> None:
    bench = _bench()
    unit = next(u for u in bench.find_units(real) if u.name == "hum/id_00")
    half, test = bench.split(unit, 2, seed=3)
    assert (half, test) == bench.split(unit, 2, seed=3)  # seeded
    assert bench.split(unit, 2, seed=4) != (half, test)
    assert len(half) == 4 and not set(half) & set(test) and set(half) | set(test) == set(unit.normals)
    assert [bench.level_size(lv, len(half)) for lv in ("2", "4", "half", "9")] == [2, 4, 4, 4]
    tests = bench.test_clips(unit, 2, seed=3)
    assert tests[: len(test)] == test and tests[len(test):] == list(unit.anomalies)


def test_auc_counts_ties_half_and_the_paired_bootstrap_of_a_perfect_detector(real: Path) -> None:
    bench = _bench()
    assert bench.auc(np.array([0.0, 1.0]), np.array([1.0, 2.0])) == pytest.approx(0.875)
    units = bench.find_units(real)
    runs: dict[str, list] = {"perfect": [], "inverted": []}
    for seed in range(3):
        perfect, inverted = {}, {}
        for k, u in enumerate(units):
            n0 = len(bench.split(u, k, seed)[1])
            s = np.r_[np.zeros(n0), np.ones(len(u.anomalies))] + np.linspace(0, 0.1, n0 + len(u.anomalies))
            perfect[u.name], inverted[u.name] = s.tolist(), (-s).tolist()
        runs["perfect"].append({"seed": seed, "scores": perfect})
        runs["inverted"].append({"seed": seed, "scores": inverted})
    runs["rms_level"] = runs["inverted"]  # a reference to be paired with
    out = bench.summarise(runs, units, n_boot=200)
    assert out["perfect"]["mean_auc"] == 1.0 and out["perfect"]["ci95"] == [1.0, 1.0]
    assert out["inverted"]["mean_auc"] == 0.0
    assert out["perfect"]["vs"]["rms_level"]["diff"] == 1.0 and out["perfect"]["vs"]["rms_level"]["ci95"] == [1.0, 1.0]
    assert set(out["perfect"]["machines"]) == {"buzz", "hum"}


def test_one_split_end_to_end_through_train_bundle(real: Path, tmp_path: Path) -> None:
    bench = _bench()
    out = tmp_path / "results"
    rc = bench.main(["--models", "iforest", "--real-dir", str(real), "--splits", "1", "--levels", "2,half",
                     "--bootstrap", "50", "--name", "fs", "--out-dir", str(out)])  # one clip-statistics vector a clip
    assert rc == 0
    doc = json.loads((out / "fs.json").read_text())
    summary = doc["levels"]["half"]["summary"]
    assert set(summary) == {"rms_level", "chance", "iforest"}
    # 2-4 training vectors are few for a forest, yet the whine the anomalies add is found; a scoring path that lost
    # the clips' order or ids would sit at 0.5 (as 2 vectors do: every clip isolated alike)
    iforest = summary["iforest"]
    assert iforest["mean_auc"] > 0.55 and iforest["ci95"][0] <= iforest["mean_auc"] <= iforest["ci95"][1]
    assert doc["levels"]["2"]["summary"]["iforest"]["mean_auc"] == 0.5
    assert summary["rms_level"]["gain_correlation"] == pytest.approx(1.0)
    assert "rms_level" in summary["iforest"]["vs"]
    assert len(doc["levels"]["2"]["runs"]["iforest"]) == 1 and doc["units"][0]["train_half"] == 2
    assert "other_types" not in doc  # no detector here learns other machine types


def test_a_classifier_across_types_also_fits_the_other_types_training_clips(real: Path, tmp_path: Path) -> None:
    bench = _bench()
    units = bench.find_units(real)
    entry = "id_classifier:across_types=true:segment_frames=8:segment_hop=4:train_hop=2"  # 1 s clips
    _, bundles, _ = bench.train_units(entry, units, 0, "2", None, bench.Audio(), tmp_path / "work")
    for k, unit in enumerate(units):
        own = sorted(u.id for u in units if u.machine == unit.machine)
        others = sorted(u.name for u in units if u.machine != unit.machine)
        assert bundles[k].ids == own and bundles[k].detector.learned()["ids"] == sorted(own + others)
        # 2 training clips per unit at this level, of every unit of the other type
        assert bundles[k].meta["training"]["other_types"]["clips"] == 2 * len(others)
    out = tmp_path / "results"
    assert bench.main(["--models", entry, "--real-dir", str(real), "--splits", "1", "--levels", "2",
                       "--bootstrap", "20", "--name", "across", "--out-dir", str(out)]) == 0
    doc = json.loads((out / "across.json").read_text())
    assert doc["other_types"] == bench.OTHER_TYPES and doc["protocol"] in bench.__doc__


def test_auto_chooses_per_unit_from_training_clips_and_records_why(real: Path, tmp_path: Path) -> None:
    """The `auto` entry: every unit gets the candidate with the highest pseudo-AUC on its own training clips among
    those that pass the gain gate, and the run keeps each unit's table."""
    from models.training.selection import default_candidates

    bench = _bench()
    out = tmp_path / "results"
    assert bench.main(["--models", "auto", "--real-dir", str(real), "--splits", "1", "--levels", "half",
                       "--bootstrap", "20", "--name", "auto", "--out-dir", str(out)]) == 0
    doc = json.loads((out / "auto.json").read_text())
    assert "auto" in doc["levels"]["half"]["summary"]
    (run,) = doc["levels"]["half"]["runs"]["auto"]
    assert set(run["selected"]) == set(run["scores"]) == {u.name for u in bench.find_units(real)}
    for unit, sel in run["selected"].items():
        assert set(sel["pseudo_auc"]) | set(sel["failed"]) == set(default_candidates()), unit
        eligible = {n: v for n, v in sel["pseudo_auc"].items() if n not in sel["follows_gain"]} or sel["pseudo_auc"]
        best = max(eligible.values())
        assert sel["chosen"] == min(n for n, v in eligible.items() if v == best), unit
    assert set(doc["models"]["auto"]["candidates"]) == set(default_candidates())
    from benchmarks.fewshot_recommend import recommend

    rec = recommend(doc)["half"]
    means = {n: [s["pseudo_auc"][n] for s in run["selected"].values() if n in s["pseudo_auc"]]
             for n in default_candidates()}
    means = {n: sum(v) / len(v) for n, v in means.items() if v}
    assert rec["mean_pseudo_auc"] == pytest.approx(means)
    assert rec["recommended"] == max(sorted(means), key=lambda n: means[n])
    assert sum(rec["times_chosen"].values()) == len(run["selected"])


def test_pairing_two_stored_runs_equals_one_run_with_both(real: Path, tmp_path: Path) -> None:
    """benchmarks/fewshot_pair: the paired summary of two stored runs is what one run with both would write."""
    from benchmarks import fewshot_pair

    bench, out = _bench(), tmp_path / "results"
    common = ["--real-dir", str(real), "--splits", "1", "--levels", "half", "--bootstrap", "50", "--epochs", "1",
              "--out-dir", str(out)]
    for models, name in (("iforest:none,dcase_ae", "both"), ("iforest:none", "a"), ("dcase_ae", "b")):
        assert bench.main(["--models", models, "--name", name, *common]) == 0
    docs = {n: json.loads((out / f"{n}.json").read_text()) for n in ("both", "a", "b")}
    merged = fewshot_pair.merge(docs["a"], docs["b"], real)
    assert merged["levels"]["half"]["summary"] == docs["both"]["levels"]["half"]["summary"]
    assert "dcase_ae" in merged["levels"]["half"]["summary"]["iforest-noae"]["vs"]
    other = {**docs["b"], "splits": 2}
    with pytest.raises(ValueError, match="splits"):
        fewshot_pair.merge(docs["a"], other, real)
    assert fewshot_pair.main([str(out / "a.json"), str(out / "b.json"), "--name", "ab", "--real-dir", str(real),
                              "--out-dir", str(out)]) == 0
    assert json.loads((out / "ab.json").read_text())["sources"] == ["a.json", "b.json"]


def test_variants_set_a_hyper_parameter_or_a_feature_setting() -> None:
    from benchmarks.common import model_config

    label, config = model_config("modspec_graph:feature.log_envelope=true:n_clusters=4")
    assert label == "modspec_graph+feature.log_envelope-true+n_clusters-4"
    assert config["feature"]["log_envelope"] is True and config["feature"]["n_mels"] == 32  # the rest as shipped
    assert config["params"]["n_clusters"] == 4 and "log_envelope" not in config["params"]


def test_gain_benchmark_tells_a_level_sensitive_variant_from_a_level_invariant_one(tmp_path: Path) -> None:
    """benchmarks/bench_gain: the modulation spectrum in dB moves with the gain, its level-normalised variant not
    (full-band clips at the features' 16 kHz, so that no band sits at the dB floor, where no gain moves it)."""
    from benchmarks import bench_gain

    root = tmp_path / "real"
    (root / "set").mkdir(parents=True)
    rows = []
    for i, label in enumerate(["normal"] * 12 + ["anomaly"] * 3):
        sf.write(root / "set" / f"{label}{i}.wav", machine_audio(1.0, i, anomalous=label == "anomaly", sr=16000), 16000,
                 subtype="FLOAT")
        rows.append({"path": f"set/{label}{i}.wav", "machine": "hum", "id": "id_00", "label": label})
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "machine", "id", "label"])
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "results"
    assert bench_gain.main(["--models", "modspec_graph,modspec_graph:feature.level_norm=true", "--real-dir", str(root),
                            "--splits", "1", "--name", "g", "--out-dir", str(out)]) == 0
    doc = json.loads((out / "g.json").read_text())
    plain, normed = doc["models"]["modspec_graph"], doc["models"]["modspec_graph+feature.level_norm-true"]
    assert set(plain["gain_auc"]) == {str(g) for g in bench_gain.GAINS_DB}
    assert plain["gain_auc"]["6.0"] == 1.0 and plain["gain_auc"]["-6.0"] == 1.0  # 6 dB away from every normal
    assert all(abs(v - 0.5) < 0.1 for v in normed["gain_auc"].values()), normed["gain_auc"]
    assert normed["anomaly_auc"] > 0.6  # the whine is still heard by its spectrum (part of what it added was level)


def test_the_default_rule_leaves_one_type_out_and_drops_gain_dependent_detectors() -> None:
    from benchmarks.fewshot_default import gain_independent, leave_one_type_out, type_aucs

    def doc(label: str, machines: dict[str, float]) -> dict:
        return {"levels": {"half": {"summary": {label: {"machines": machines}, "chance": {"machines": {}}}}}}

    results = [doc("steady", {"a": 0.7, "b": 0.7, "c": 0.7}), doc("spiky", {"a": 0.9, "b": 0.9, "c": 0.2}),
               doc("loud", {"a": 1.0, "b": 1.0, "c": 1.0})]
    gain = {"models": {"steady": {"gain_auc": {"-3.0": 0.52, "3.0": 0.49}},
                       "spiky": {"gain_auc": {"-3.0": 0.5, "3.0": 0.5}},
                       "loud": {"gain_auc": {"-3.0": 0.2, "3.0": 0.9}}}}
    ok = gain_independent([gain])
    assert ok == {"steady": True, "spiky": True, "loud": False}
    aucs = type_aucs(results)["half"]
    assert "chance" not in aucs
    r = leave_one_type_out({k: v for k, v in aucs.items() if ok[k]})
    # leaving c out, spiky wins on a and b (0.9) and gets 0.2 on c; leaving a or b out, steady wins (0.7 > 0.55)
    assert {t: h["chosen"] for t, h in r["held_out"].items()} == {"a": "steady", "b": "steady", "c": "spiky"}
    assert r["rule_mean_auc"] == pytest.approx((0.7 + 0.7 + 0.2) / 3)
    assert r["chosen_on_all_types"] == "steady" and r["its_mean_auc"] == pytest.approx(0.7)  # 0.7 > 0.667


def test_pretraining_benchmark_keeps_the_protocol_and_pairs_with_a_fewshot_run(real: Path, tmp_path: Path) -> None:
    """benchmarks/bench_pretrain: the same units, splits and test clips as bench_fewshot (so fewshot_pair merges
    the two), one pre-training per split and level over every unit's training clips and the synthetic set."""
    from benchmarks import bench_pretrain, fewshot_pair

    out = tmp_path / "results"
    quick = "ssl_knn:segment_frames=8:segment_hop=4:bank_hop=2:width=16:embed_dim=16:max_shift=2:epochs=1"
    common = ["--real-dir", str(real), "--splits", "1", "--levels", "half", "--bootstrap", "20", "--out-dir", str(out)]
    assert bench_pretrain.main(["--models", quick, "--synth", "1", "--name", "pre", *common]) == 0
    assert _bench().main(["--models", "iforest:none", "--name", "fs", *common]) == 0
    doc = json.loads((out / "pre.json").read_text())
    label = "ssl_knn+segment_frames-8+segment_hop-4+bank_hop-2+width-16+embed_dim-16+max_shift-2+epochs-1+pretrained"
    assert set(doc["levels"]["half"]["summary"]) == {"rms_level", "chance", label}
    assert doc["synthetic_clips"] == 6 and "pre-trained once" in doc["pretraining"]
    merged = fewshot_pair.merge(json.loads((out / "fs.json").read_text()), doc, real)
    assert {label, "iforest-noae"} <= set(merged["levels"]["half"]["summary"])
    with pytest.raises(SystemExit, match="not a detector that pre-trains"):
        bench_pretrain.main(["--models", "embed_knn", "--synth", "0", "--name", "x", *common])


def test_synthetic_learning_curve_runs_every_count_and_seed_and_averages_them(tmp_path: Path) -> None:
    """benchmarks/synth_curve: the development set apart from the real benchmark, through the user's commands."""
    from benchmarks import synth_curve

    out = tmp_path / "results"
    assert synth_curve.main(["--models", "modspec_graph,modspec_graph:scale_shrinkage=2", "--machines", "fan",
                             "--train-clips", "2,3", "--seeds", "1,2", "--test-clips", "6", "--name", "c",
                             "--out", str(out)]) == 0
    doc = json.loads((out / "c.json").read_text())
    assert [(r["seed"], r["train_clips"]) for r in doc["runs"]] == [(1, 2), (1, 3), (2, 2), (2, 3)]
    entry = doc["summary"]["modspec_graph+scale_shrinkage-2"]
    aucs = [r["results"]["modspec_graph+scale_shrinkage-2"]["mean"]["auc"] for r in doc["runs"]]
    assert entry["auc"] == pytest.approx(np.mean(aucs))
    assert entry["train_clips"]["3"]["auc"] == pytest.approx(np.mean(aucs[1::2]))
    assert {"chance", "rms_level"} <= set(doc["summary"]) and doc["data"]["ids"] == 1


def test_calibration_benchmark_counts_false_alarms_on_unseen_normals_against_the_bundles_statement(
        real: Path, tmp_path: Path) -> None:
    """benchmarks/bench_calibration: each unit's bundle (threshold cross-fitted as `asd-offline train` sets it) is
    checked on the unit's test normals; the pooled rate is the records' exceedances over their normals."""
    from benchmarks import bench_calibration

    out = tmp_path / "results"
    assert bench_calibration.main(["--models", "iforest", "--real-dir", str(real), "--splits", "2", "--levels",
                                   "4", "--name", "cal", "--out-dir", str(out)]) == 0
    doc = json.loads((out / "cal.json").read_text())
    level = doc["models"]["iforest"]["levels"]["4"]
    records, summary = level["records"], level["summary"]
    assert len(records) == 2 * len(doc["units"])
    assert all(r["stated"]["scores"] == "cross-fitted" and r["stated"]["n_scores"] in (2, 4) for r in records)
    assert all(r["test_normals"] == len(bench_calibration.fewshot.split(u, k, s)[1])
               for s in range(2) for k, (u, r) in enumerate(zip(bench_calibration.fewshot.find_units(real),
                                                                 records[s * len(doc["units"]):])))
    pooled = sum(r["false_alarms"] for r in records) / sum(r["test_normals"] for r in records)
    assert summary["realised_rate_pooled"] == pytest.approx(pooled)
    assert set(summary["units"]) == set(doc["units"])
