"""Training the noise models (`lstm_classifier`, `lstm_denoiser`) from paired audio, and their validation figures.

Pairs are the same recording clean and with background noise mixed in (`offline.datasets.pairs` reads or makes
them). Both models learn from the pairs' log-mel; the classifier takes each noisy clip as "noisy" and each clean one
as "clean". The validation pairs (a separate folder, or recordings held out before mixing, so no recording is on both
sides) give the figures stored in the bundle's `training.validation` and printed by `asd-offline train`:
- classifier: accuracy at probability 0.5 and ROC AUC over the validation clips;
- denoiser: MSE of the denoised log-mel against the clean one, on the standardised clean scale the model is trained
  on (and in dB^2), beside the same error of the noisy input (what doing nothing gives).

The classifier's bundle threshold is 0.5 on the probability of "noisy" (`fixed`); a denoiser's bundle has no
threshold (0, method `none`): it decides nothing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from models.bundle import save_bundle
from models.device import describe, select_device
from models.training.recipe import build_spec

log = logging.getLogger(__name__)

NOISE_KINDS = ("classifier", "denoiser")
CLASSIFIER_THRESHOLD = 0.5


class PairLike(Protocol):
    """One training pair: the same audio clean and noisy (float32 mono at the feature's rate, equal lengths)."""

    name: str
    machine_id: str
    clean: np.ndarray
    noisy: np.ndarray


def featurise_pairs(pairs: Sequence[PairLike], feature: Any, device: torch.device
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The noisy and clean log-mel of every pair (CPU tensors)."""
    if not pairs:
        return [], []
    for p in pairs:
        if p.clean.shape != p.noisy.shape:
            raise ValueError(f"{p.name}: clean and noisy audio differ in length ({p.clean.shape[0]} vs "
                             f"{p.noisy.shape[0]} samples)")
    noisy = [f.cpu() for f in feature.extract_batch([p.noisy for p in pairs], device)]
    clean = [f.cpu() for f in feature.extract_batch([p.clean for p in pairs], device)]
    return noisy, clean


def noise_metrics(model: Any, noisy: Sequence[torch.Tensor], clean: Sequence[torch.Tensor]) -> dict[str, Any]:
    """Validation figures of a fitted noise model on paired log-mel (see the module docstring)."""
    if not noisy:
        return {}
    if model.bundle_kind == "classifier":
        from sklearn.metrics import roc_auc_score

        p = np.concatenate([model.score(list(noisy)), model.score(list(clean))])
        y = np.r_[np.ones(len(noisy)), np.zeros(len(clean))]
        return {"n_pairs": len(noisy), "accuracy": float(np.mean((p >= CLASSIFIER_THRESHOLD) == y)),
                "roc_auc": float(roc_auc_score(y, p)),
                "mean_p_noisy": float(p[: len(noisy)].mean()), "mean_p_clean": float(p[len(noisy) :].mean())}
    denoised = model.denoise(list(noisy))
    d, n, c = torch.cat(denoised), torch.cat(list(noisy)), torch.cat(list(clean))
    return {"n_pairs": len(noisy), "mse": model.standardised_error(d, c), "mse_noisy": model.standardised_error(n, c),
            "mse_db2": float((d - c).square().mean()), "mse_noisy_db2": float((n - c).square().mean())}


def train_noise_bundle(
    model_name: str,
    train: Sequence[PairLike],
    val: Sequence[PairLike],
    out: str | Path,
    config: dict[str, Any] | None = None,
    *,
    machine: str,
    data_source: str | None = None,
    device: str | None = None,
    progress: bool | None = None,
    epochs: int | None = None,
    extra_summary: dict[str, Any] | None = None,
) -> Path:
    """Fit a noise model on `train` pairs, measure it on `val`, write its bundle at `out`."""
    spec = build_spec(model_name, config, device=device, progress=progress, epochs=epochs)
    model = spec.detector
    if model.bundle_kind not in NOISE_KINDS:
        raise ValueError(f"{model_name} is a {model.bundle_kind}, not a noise model: train it on normal clips")
    if spec.stages:
        raise ValueError(f"{model_name}: noise models take no stages")
    if not train:
        raise ValueError(f"{model_name}: no training pairs")
    dev = select_device(device or model.get_params().get("device", "auto"))
    t0 = time.perf_counter()
    noisy, clean = featurise_pairs(train, spec.feature, dev)
    v_noisy, v_clean = featurise_pairs(val, spec.feature, dev)
    t_feat = time.perf_counter() - t0
    log.info("%s: %d training pairs, %d validation pairs, features on %s", model_name, len(train), len(val),
             describe(dev))
    t0 = time.perf_counter()
    model.fit_pairs(noisy, clean)
    t_fit = time.perf_counter() - t0
    metrics = noise_metrics(model, v_noisy, v_clean)
    if metrics:
        log.info("%s validation: %s", model_name, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    history = getattr(model, "history_", None) or []
    sr = spec.feature.sample_rate
    summary = {
        **(extra_summary or {}),
        "data": data_source, "n_pairs": len(train), "n_val_pairs": len(val),
        "audio_seconds": round(sum(p.clean.shape[0] for p in train) / sr, 3),
        "feature_seconds": round(t_feat, 3), "fit_seconds": round(t_fit, 3), "device": describe(dev),
        "epochs_run": len(history), "final_loss": history[-1]["loss"] if history else None,
        "loss_curve": [{k: h[k] for k in ("epoch", "loss") if k in h} for h in history],
        "validation": metrics, "seed": spec.seed,
    }
    if model.bundle_kind == "classifier":
        threshold, info = CLASSIFIER_THRESHOLD, {"method": "fixed", "value": CLASSIFIER_THRESHOLD,
                                                 "meaning": "probability that the window is noisy"}
    else:
        threshold, info = 0.0, {"method": "none", "meaning": "a denoiser decides nothing"}
    ids = sorted({p.machine_id for p in [*train, *val]})
    config_out = {**spec.config, "params": model.get_params()}
    return save_bundle(out, model, spec.feature, threshold, info, machine, ids, summary,
                       window_seconds=spec.window_seconds, hop_seconds=spec.hop_seconds, extra={"config": config_out})
