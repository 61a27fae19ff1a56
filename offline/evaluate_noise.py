"""`asd-offline evaluate` for noise-model bundles (`lstm_classifier`, `lstm_denoiser`) on paired audio.

`--data` is a pairs folder in the seed's layout (`asd-offline synth OUT --pairs` writes one); `--split test` scores
its `val/` pairs (`train` its training pairs). Per bundle:
- classifier: accuracy at its threshold (0.5) and ROC AUC, every noisy clip against every clean one, plus accuracy
  and mean probability per SNR when the file names carry one (`NNNN_<snr>dB.wav`);
- denoiser: the log-mel MSE (standardised scale and dB^2) of the denoised and of the noisy input against the clean,
  and the magnitude-spectrum SNR (`offline.denoise.spectral_snr`) of the noisy audio, of the denoised audio
  rebuilt with Griffin-Lim, and of the clean mel rebuilt the same way (the ceiling phase estimation leaves), with
  the improvement denoised minus noisy; medians over the pairs.

`REPORT_DIR/results.json` gets `{"noise_models": {LABEL: {...}}}` and `summary.md` a table of the same.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

_SNR = re.compile(r"_(-?\d+(?:\.\d+)?)dB\.wav$")


def evaluate_noise(data: Path, bundles: Sequence[tuple[str, Path, Any]], out: Path, split: str = "test"
                   ) -> dict[str, Any]:
    from models.training.noise import featurise_pairs, noise_metrics
    from offline.datasets.pairs import is_pair_folder, read_pair_folder

    if not is_pair_folder(data):
        raise ValueError(f"{data}: noise models are evaluated on a pairs folder (train|val/{{noisy,clean}}/<id>/), "
                         "e.g. one written by `asd-offline synth OUT --pairs`")
    results: dict[str, Any] = {}
    for label, path, b in bundles:
        train, val = read_pair_folder(data, b.sample_rate)
        pairs = val if split == "test" else train
        if not pairs:
            raise ValueError(f"{data}: no {'val' if split == 'test' else 'train'} pairs")
        noisy, clean = featurise_pairs(pairs, b.feature, torch.device("cpu"))
        entry: dict[str, Any] = {"bundle": str(path), "kind": b.kind, "model": b.name,
                                 **noise_metrics(b.detector, noisy, clean)}
        if b.kind == "classifier":
            entry["snr"] = _per_snr(b, pairs, noisy, clean)
        else:
            entry.update(_resynthesis(b, pairs, noisy))
        results[label] = entry
    out.mkdir(parents=True, exist_ok=True)
    doc = {"data": str(data), "split": split, "noise_models": results}
    (out / "results.json").write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    (out / "summary.md").write_text(summary_table(results) + "\n")
    return doc


def _per_snr(b: Any, pairs: Sequence[Any], noisy: list[torch.Tensor], clean: list[torch.Tensor]) -> dict[str, Any]:
    p_noisy, p_clean = b.detector.score(noisy), b.detector.score(clean)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        m = _SNR.search(p.name)
        if m:
            groups.setdefault(f"{float(m.group(1)):g}", []).append(i)
    return {snr: {"n_pairs": len(idx), "accuracy_noisy": float(np.mean(p_noisy[idx] >= b.threshold)),
                  "mean_p_noisy": float(np.mean(p_noisy[idx])), "mean_p_clean": float(np.mean(p_clean[idx]))}
            for snr, idx in sorted(groups.items(), key=lambda kv: -float(kv[0]))}


def _resynthesis(b: Any, pairs: Sequence[Any], noisy: list[torch.Tensor]) -> dict[str, Any]:
    from offline.denoise import griffin_lim, spectral_snr

    f = b.feature
    rows = []
    for pair, n_mel, d_mel in zip(pairs, noisy, b.detector.denoise(noisy)):
        rows.append((spectral_snr(pair.clean, pair.noisy, f),
                     spectral_snr(pair.clean, griffin_lim(f, d_mel.numpy()), f),
                     spectral_snr(pair.clean, griffin_lim(f, f.extract(pair.clean).numpy()), f)))
    a = np.asarray(rows)
    return {"snr_db_median": {"noisy": float(np.median(a[:, 0])), "denoised_resynthesised": float(np.median(a[:, 1])),
                              "clean_resynthesised": float(np.median(a[:, 2]))},
            "snr_improvement_db_median": float(np.median(a[:, 1] - a[:, 0]))}


def summary_table(results: dict[str, Any]) -> str:
    lines = ["| model | kind | pairs | accuracy | ROC AUC | MSE (std.) | MSE noisy | SNR gain (dB) |",
             "|---|---|---|---|---|---|---|---|"]

    def f(v: Any) -> str:
        return "" if v is None else f"{v:.3f}"

    for label, r in results.items():
        lines.append(f"| {label} | {r['kind']} | {r.get('n_pairs', '')} | {f(r.get('accuracy'))} | "
                     f"{f(r.get('roc_auc'))} | {f(r.get('mse'))} | {f(r.get('mse_noisy'))} | "
                     f"{f(r.get('snr_improvement_db_median'))} |")
    return "\n".join(lines)
