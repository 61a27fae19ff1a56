"""The variants `benchmarks.bench_noise` compares: the detector's own settings, only the log-mel swapped for the
denoiser's, so that the denoiser is the one difference between the `_80` and `_80_denoised` rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_noise import _config, all_configs


@pytest.mark.parametrize(("model", "context", "iterative"), [("dcase_ae", 5, True), ("embed_knn", 1, False)])
def test_each_detector_gets_its_shipped_config_on_the_denoisers_log_mel(model: str, context: int,
                                                                        iterative: bool) -> None:
    configs = all_configs([model], Path("den"), epochs=3)
    assert list(configs) == [f"{model}_128", f"{model}_80", f"{model}_80_denoised"]
    shipped, mel80, denoised = configs.values()
    assert shipped["feature"] == _config(model)["feature"] and "stages" not in shipped
    den = _config("lstm_denoiser")["feature"]
    assert mel80["feature"] == {**shipped["feature"], **den, "context": context} and den["n_mels"] == 80
    assert denoised == {**mel80, "stages": [{"name": "lstm_denoiser", "params": {"bundle": "den"}}]}
    assert ("epochs" in mel80["params"]) == iterative and mel80["params"].get("epochs", 3) == 3


def test_no_denoiser_no_denoised_row() -> None:
    assert list(all_configs(["embed_knn", "dcase_ae"], None, 3)) == ["embed_knn_128", "embed_knn_80",
                                                                     "dcase_ae_128", "dcase_ae_80"]
