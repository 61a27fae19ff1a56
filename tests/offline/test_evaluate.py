"""`asd-offline evaluate` end to end on a tiny generated dataset, with bundles trained by the real training code.

The data is built so that some answers are known without running any model: fan anomalies are louder than every
fan normal (rms_level AUC must be exactly 1), pump anomalies are quieter (rms_level AUC exactly 0), and fan id_04
has no anomalous test clip (its AUC must be null).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import soundfile as sf

from models.detectors import REGISTRY, get_detector, registered
from models.training.recipe import train_bundle
from offline.cli import main
from offline.datasets.index import load_clips
from offline.evaluate import chance_scores
from offline.metrics import auc_pauc
from offline.report import summary_markdown, summary_rows
from tests import plugins

SR = 16000
DURATION = 1.0
FAN_IDS = {"id_00": 440.0, "id_02": 660.0, "id_04": 880.0}
PUMP_IDS = {"id_00": 300.0}
N_TRAIN, N_TEST = 8, 4


def tone_clip(freq: float, rng: np.random.Generator, kind: str = "normal") -> np.ndarray:
    """A machine hum (tone + a little noise). `loud` adds strong noise bursts (louder than any normal clip),
    `shifted` moves the tone and halves its level (quieter than any normal clip)."""
    t = np.arange(int(SR * DURATION)) / SR
    amp, f = (0.05, freq * 1.37) if kind == "shifted" else (0.1, freq)
    x = amp * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) + 0.01 * rng.standard_normal(t.size)
    if kind == "loud":
        burst = rng.integers(0, t.size - SR // 4)
        x[burst : burst + SR // 4] += 0.3 * rng.standard_normal(SR // 4)
    return x.astype(np.float32)


def write_dcase_dataset(root: Path, seed: int = 0) -> Path:
    """DCASE 2020 layout: fan (3 ids, anomalies louder; id_04 without test anomalies), pump (anomalies quieter)."""
    rng = np.random.default_rng(seed)
    for machine, ids, anomaly_kind in (("fan", FAN_IDS, "loud"), ("pump", PUMP_IDS, "shifted")):
        for ident, freq in ids.items():
            files = [("train", "normal", k, "normal") for k in range(N_TRAIN)]
            files += [("test", "normal", k, "normal") for k in range(N_TEST)]
            if ident != "id_04":
                files += [("test", "anomaly", k, anomaly_kind) for k in range(N_TEST)]
            for split, label, k, kind in files:
                path = root / machine / split / f"{label}_{ident}_{k:08d}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, tone_clip(freq, rng, kind), SR, subtype="PCM_16")
    return root


def train_tiny(data: Path, machine: str, out: Path, model: str = "dcase_ae") -> Path:
    """A bundle from the real training code, with the detector's quick settings (2 epochs for neural ones), on CPU,
    threshold from 40 % held-out clips (the gamma fit needs at least 3)."""
    cls = get_detector(model)
    params = dict(cls.quick_params)
    for key, value in (("epochs", 2), ("device", "cpu"), ("progress", False), ("num_threads", 1)):
        if key in cls.param_names():
            params[key] = value
    config = {"params": params, "holdout": 0.4, "seed": 0}
    if cls.quick_feature:
        config["feature"] = {**cls.default_feature, **cls.quick_feature}
    return train_bundle(load_clips(data, machine=machine), model, machine, out, config)


@pytest.fixture(scope="module")
def second_model() -> Iterator[str]:
    """The side-by-side partner of dcase_ae: the first other registered detector, else a test plug-in (trained,
    saved and loaded by the real code) until a second shipped detector exists."""
    others = [n for n in registered() if n != "dcase_ae" and not REGISTRY[n].combines_members]
    if others:
        yield others[0]
        return
    with plugins.plugins_registered():
        yield plugins.WindowQuantileGaussian.name


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, second_model: str) -> dict[str, Any]:
    """One evaluate call with three bundles: dcase_ae for fan and pump (must merge under one name) and a second
    model for fan (side by side)."""
    tmp = tmp_path_factory.mktemp("evaluate")
    data = write_dcase_dataset(tmp / "data")
    second = second_model
    bundles = [train_tiny(data, "fan", tmp / "ae_fan"), train_tiny(data, "pump", tmp / "ae_pump"),
               train_tiny(data, "fan", tmp / "second_fan", second)]
    out = tmp / "report"
    argv = ["evaluate", "--data", str(data), "--out", str(out), "--device", "cpu"]
    for b in bundles:
        argv += ["--bundle", str(b)]
    return {"data": data, "out": out, "argv": argv, "bundles": bundles, "second": second}


@pytest.fixture(scope="module")
def report(evaluated: dict[str, Any]) -> dict[str, Any]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(evaluated["argv"])
    assert rc == 0
    results = json.loads((evaluated["out"] / "results.json").read_text())
    return {**evaluated, "results": results, "stdout": buf.getvalue()}


def _is_score(v: Any) -> bool:
    return v is None or (isinstance(v, float) and 0.0 <= v <= 1.0)


def test_results_json_schema(report: dict[str, Any]) -> None:
    models = report["results"]["models"]
    expected = {"dcase_ae", "chance", "rms_level"} | {report["second"]}
    assert set(models) == expected
    assert set(models["dcase_ae"]["machines"]) == {"fan", "pump"}  # two bundles, one model name
    for name, model in models.items():
        assert set(model["mean"]) == {"auc", "pauc"}
        assert _is_score(model["mean"]["auc"]) and model["mean"]["auc"] is not None
        for machine, entry in model["machines"].items():
            assert _is_score(entry["auc"]) and _is_score(entry["pauc"])
            ids = entry["ids"]
            assert set(ids) == set(FAN_IDS if machine == "fan" else PUMP_IDS), (name, machine)
            for ident, v in ids.items():
                assert _is_score(v["auc"]) and _is_score(v["pauc"])
                if ident == "id_04":  # normals only: no AUC can exist
                    assert v["auc"] is None and v["pauc"] is None
                else:
                    assert v["auc"] is not None and (v["n_normal"], v["n_anomaly"]) == (N_TEST, N_TEST)
            defined = [v["auc"] for v in ids.values() if v["auc"] is not None]
            assert entry["auc"] == pytest.approx(np.mean(defined))
        machine_aucs = [m["auc"] for m in model["machines"].values()]
        assert model["mean"]["auc"] == pytest.approx(np.mean(machine_aucs))
    # the raw file keeps null (not NaN, not a made-up number) for the one-class id
    assert '"auc": null' in (report["out"] / "results.json").read_text()


def test_reference_models_are_what_they_claim(report: dict[str, Any]) -> None:
    models = report["results"]["models"]
    level = models["rms_level"]["machines"]
    assert level["fan"]["auc"] == pytest.approx(1.0)  # fan anomalies are louder, by construction
    assert level["pump"]["auc"] == pytest.approx(0.0)  # pump anomalies are quieter
    assert models["rms_level"]["kind"] == models["chance"]["kind"] == "reference"
    assert "threshold" not in level["fan"]
    # chance is the seeded draw documented in evaluate.py: recompute it from the clip order (id, path)
    fan = sorted((c for c in load_clips(report["data"], machine="fan") if c.split == "test"),
                 key=lambda c: (c.id, str(c.path)))
    s = chance_scores("fan", len(fan), seed=0)
    ids = np.array([c.id for c in fan])
    y = np.array([c.is_anomaly for c in fan], dtype=int)
    for ident in ("id_00", "id_02"):
        assert models["chance"]["machines"]["fan"]["ids"][ident]["auc"] == pytest.approx(
            auc_pauc(y[ids == ident], s[ids == ident]).auc
        )


def test_chance_scores_are_seeded_per_machine() -> None:
    a = chance_scores("fan", 50, seed=0)
    assert np.array_equal(a, chance_scores("fan", 50, seed=0))
    assert not np.array_equal(a, chance_scores("pump", 50, seed=0))
    assert not np.array_equal(a, chance_scores("fan", 50, seed=1))


def _read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_submission_files_match_results(report: dict[str, Any]) -> None:
    folder = report["out"] / "dcase_ae" / "submission"
    expected = {f"{kind}_{m}_{i}.csv" for kind in ("anomaly_score", "decision_result")
                for m, ids in (("fan", FAN_IDS), ("pump", PUMP_IDS)) for i in ids}
    assert {p.name for p in folder.iterdir()} == expected
    models = report["results"]["models"]["dcase_ae"]["machines"]
    for machine, ids in (("fan", FAN_IDS), ("pump", PUMP_IDS)):
        bundle_json = report["out"].parent / f"ae_{machine}" / "bundle.json"
        stored = json.loads(bundle_json.read_text())["threshold"]
        assert models[machine]["threshold"] == pytest.approx(stored["value"])
        assert models[machine].get("threshold_per_id", {}) == pytest.approx(stored["per_id"])
        for ident in ids:
            threshold = stored["per_id"].get(ident, stored["value"])  # an id's own threshold decides its clips
            scores = _read_rows(folder / f"anomaly_score_{machine}_{ident}.csv")
            decisions = dict(_read_rows(folder / f"decision_result_{machine}_{ident}.csv"))
            names = [r[0] for r in scores]
            n_expected = N_TEST * (1 if ident == "id_04" else 2)
            assert len(names) == n_expected and all(n.endswith(".wav") and f"_{ident}_" in n for n in names)
            s = np.array([float(r[1]) for r in scores])
            assert [decisions[n] for n in names] == [str(int(v > threshold)) for v in s]
            got = auc_pauc([n.startswith("anomaly") for n in names], s)
            assert models[machine]["ids"][ident]["auc"] == (None if got.auc is None else pytest.approx(got.auc))
            assert models[machine]["ids"][ident]["pauc"] == (None if got.pauc is None else pytest.approx(got.pauc))


def test_model_csv(report: dict[str, Any]) -> None:
    rows = list(csv.DictReader((report["out"] / "dcase_ae" / "results.csv").open()))
    model = report["results"]["models"]["dcase_ae"]
    by_key = {(r["machine"], r["id"], r["snr"]): r for r in rows}
    assert by_key[("fan", "id_04", "")]["auc"] == ""
    assert float(by_key[("fan", "id_00", "")]["auc"]) == pytest.approx(model["machines"]["fan"]["ids"]["id_00"]["auc"])
    assert float(by_key[("pump", "mean", "")]["pauc"]) == pytest.approx(model["machines"]["pump"]["pauc"])
    assert float(by_key[("all", "mean", "")]["auc"]) == pytest.approx(model["mean"]["auc"])
    assert float(by_key[("all", "hmean", "")]["auc"]) == pytest.approx(model["hmean"]["auc"])
    assert (report["out"] / "rms_level" / "results.csv").is_file()


def test_plots_are_valid_pngs(report: dict[str, Any]) -> None:
    from matplotlib.image import imread

    folder = report["out"] / "dcase_ae"
    for name in ("confusion_fan.png", "confusion_pump.png", "confusion_p95_fan.png", "scores_fan.png",
                 "scores_pump.png"):
        path = folder / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        img = imread(path)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert img[..., :3].std() > 0.01  # something was drawn


def test_side_by_side_table(report: dict[str, Any]) -> None:
    results, second = report["results"], report["second"]
    md = (report["out"] / "summary.md").read_text()
    header = md.splitlines()[0]
    for col in ("fan AUC", "fan pAUC", "pump AUC", "mean AUC", "beats level"):
        assert col in header
    first_table = md.split("\n\n")[0].splitlines()
    table_rows = [line for line in first_table if line.startswith("| ") and "model" not in line]
    assert [r.split("|")[1].strip() for r in table_rows] == list(results["models"])
    # the thresholds' calibration: what each bundle expected of its threshold, beside the test normals
    assert "expected false alarms [95 % CI]" in md
    for name in {"dcase_ae", second}:
        for machine, entry in results["models"][name]["machines"].items():
            cal = entry["threshold_calibration"]
            conf = entry["confusion"]
            assert cal["test_false_alarm_rate"] == conf["fp"] / (conf["fp"] + conf["tn"])
            assert cal["false_alarm_rate_interval"][0] <= cal["false_alarm_rate"] <= cal["false_alarm_rate_interval"][1]
    for name in results["models"]:
        assert name in report["stdout"]
    header_cells, rows = summary_rows(results)
    verdict = {r[0]: r[-1] for r in rows}
    level = results["models"]["rms_level"]["machines"]
    for name in {"dcase_ae", second}:
        model = results["models"][name]
        ref = np.mean([level[m]["auc"] for m in model["machines"]])
        assert verdict[name] == ("yes" if model["mean"]["auc"] > ref else "NO")
    assert verdict["chance"] == verdict["rms_level"] == "-"


def test_beats_level_marker_on_handmade_results() -> None:
    def model(aucs: dict[str, float]) -> dict[str, Any]:
        machines = {m: {"auc": a, "pauc": a, "ids": {}} for m, a in aucs.items()}
        mean = float(np.mean(list(aucs.values())))
        return {"machines": machines, "mean": {"auc": mean, "pauc": mean}, "hmean": {"auc": mean, "pauc": mean}}

    results = {"models": {
        "good": model({"fan": 0.9}),  # level on fan alone is 0.8: beaten
        "mixed": model({"fan": 0.7, "pump": 0.62}),  # worse on fan, better on pump; 0.66 > level's 0.65
        "tie": model({"fan": 0.8}),  # equal is not better
        "bad": model({"pump": 0.4}),
        "rms_level": model({"fan": 0.8, "pump": 0.5}),
    }}
    _, rows = summary_rows(results)
    assert {r[0]: r[-1] for r in rows} == {"good": "yes", "mixed": "yes", "tie": "NO", "bad": "NO", "rms_level": "-"}
    assert "| bad |" in summary_markdown(results)


def test_manifest_with_snr_and_unlabeled_clips(evaluated: dict[str, Any], tmp_path: Path) -> None:
    """Manifest input: SNR known -> per-SNR figures; unlabeled test clips -> scored into the submission, no AUC."""
    fan = [c for c in load_clips(evaluated["data"], machine="fan") if c.split == "test"]
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "machine", "id", "split", "label", "snr"])
        for k, c in enumerate(fan):
            label = "" if c.id == "id_04" else c.label  # id_04 becomes an unlabeled evaluation-style id
            w.writerow([c.path, "fan", c.id, "test", label, "6dB" if k % 2 else "-6dB"])
    out = tmp_path / "report"
    rc = main(["evaluate", "--data", str(manifest), "--bundle", str(evaluated["bundles"][0]), "--out", str(out),
               "--device", "cpu", "--no-plots"])
    assert rc == 0
    fan_entry = json.loads((out / "results.json").read_text())["models"]["dcase_ae"]["machines"]["fan"]
    assert set(fan_entry["snr"]) == {"6dB", "-6dB"}
    assert fan_entry["ids"]["id_04"]["auc"] is None
    assert fan_entry["confusion"]["tn"] + fan_entry["confusion"]["fp"] == 2 * N_TEST  # labeled normals only
    assert len(_read_rows(out / "dcase_ae" / "submission" / "anomaly_score_fan_id_04.csv")) == N_TEST
    snr_rows = [r for r in csv.DictReader((out / "dcase_ae" / "results.csv").open()) if r["snr"] == "6dB"]
    assert {r["id"] for r in snr_rows} == {"id_00", "id_02", "id_04", "mean"}
    assert not list(out.glob("*/*.png"))
    for snr in ("6dB", "-6dB"):  # the study's decisions at the 95th percentile of training scores, per SNR
        conf = fan_entry["snr"][snr]["confusion_train_p95"]
        assert conf["threshold"] == fan_entry["confusion_train_p95"]["threshold"]
    assert sum(fan_entry["snr"][snr]["confusion_train_p95"][k] for snr in ("6dB", "-6dB")
               for k in ("tn", "fp", "fn", "tp")) == 4 * N_TEST  # the labeled clips, split by SNR
    md = (out / "summary.md").read_text()
    assert "AUC per SNR" in md and "fan 6dB AUC" in md and "fan -6dB AUC" in md
    assert md.index("fan 6dB AUC") < md.index("fan -6dB AUC")  # high to low, as the study reads


def test_decisions_at_the_95th_percentile_of_training_scores(report: dict[str, Any]) -> None:
    """The MIMII study's rule, beside the bundle threshold: the bundle records its training clips' score
    percentiles, and the report's counts are the decisions `score > p95` on the test scores it wrote."""
    entry = report["results"]["models"]["dcase_ae"]["machines"]["fan"]
    stored = json.loads((report["out"].parent / "ae_fan" / "bundle.json").read_text())["training"]
    p95 = stored["train_score_percentiles"]["95"]
    assert stored["train_score_percentiles"]["90"] <= p95 <= stored["train_score_percentiles"]["99"]
    conf = entry["confusion_train_p95"]
    assert conf["threshold"] == pytest.approx(p95)
    folder = report["out"] / "dcase_ae" / "submission"
    y, s = [], []
    for ident in FAN_IDS:  # id_04's clips are all labeled normal: they count as negatives
        rows = _read_rows(folder / f"anomaly_score_fan_{ident}.csv")
        y += [r[0].startswith("anomaly") for r in rows]
        s += [float(r[1]) for r in rows]
    y, d = np.array(y), np.array(s) > p95
    assert (conf["tn"], conf["fp"], conf["fn"], conf["tp"]) == (
        int((~y & ~d).sum()), int((~y & d).sum()), int((y & ~d).sum()), int((y & d).sum()))


def test_labels_put_variants_of_one_model_side_by_side(evaluated: dict[str, Any], tmp_path: Path) -> None:
    fan_bundle = str(evaluated["bundles"][0])
    out = tmp_path / "report"
    rc = main(["evaluate", "--data", str(evaluated["data"]), "--out", str(out), "--device", "cpu", "--no-plots",
               "--bundle", f"plain={fan_bundle}", "--bundle", f"again+copy={fan_bundle}"])
    assert rc == 0
    models = json.loads((out / "results.json").read_text())["models"]
    assert list(models) == ["plain", "again+copy", "chance", "rms_level"]
    assert models["plain"]["model"] == models["again+copy"]["model"] == "dcase_ae"
    assert models["plain"]["machines"]["fan"]["ids"] == models["again+copy"]["machines"]["fan"]["ids"]
    assert (out / "again_copy" / "results.csv").is_file()  # the folder name is the label made file-safe


def test_errors_name_the_problem(evaluated: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fan_bundle = str(evaluated["bundles"][0])
    base = ["evaluate", "--data", str(evaluated["data"]), "--out", str(tmp_path / "r"), "--device", "cpu"]
    assert main(base + ["--bundle", fan_bundle, "--bundle", fan_bundle]) == 2
    assert "both 'dcase_ae' for machine type 'fan'" in capsys.readouterr().err
    assert main(base + ["--bundle", f"chance={fan_bundle}"]) == 2
    assert "'chance' is reserved" in capsys.readouterr().err
    only_pump = tmp_path / "pump.csv"
    pump = [c for c in load_clips(evaluated["data"], machine="pump")]
    only_pump.write_text("path,machine,id,split,label\n" + "".join(
        f"{c.path},pump,{c.id},{c.split},{c.label}\n" for c in pump))
    assert main(["evaluate", "--data", str(only_pump), "--bundle", fan_bundle, "--out", str(tmp_path / "r2")]) == 2
    assert "no test clips of machine type 'fan'" in capsys.readouterr().err
