"""Choosing a detector from normal clips alone: which system to train when there is no recording of a fault.

A user with a handful of normal clips cannot measure an AUC, and choosing on the anomalies of a test set is
choosing on the answer. This module gives every candidate a stand-in measured on the user's normals only:

- The normal training clips are split into `min(MAX_FOLDS, n)` seeded folds (`n >= 2`). For each fold a fresh copy
  of the candidate (its stages and detector, as configured) is fitted on the other folds; it scores the fold's clips
  as they are, and the same clips with a synthetic fault added (`PSEUDO_FAULTS` at `FAULT_LEVELS_DB`, every
  fault drawn from its own seed).
- The candidate's *pseudo-AUC* is the mean over folds of the AUC of those two sets of scores (ties count half).
  The candidate with the highest is chosen; ties go to the first in candidate order, which is alphabetical.
- Gain gate (added 2026-12-03, after the few-normals benchmark's `auto` figures were known; normal clips only):
  each fold's clips are also scored with every sample scaled by each gain of `GAIN_CHECK_DB` (-3 and +3 dB). The
  *gain AUC* at a gain is P(gained score of clip i > recorded score of clip j) over all pairs of *different* clips,
  the out-of-fold scores of every fold pooled (a clip against itself would turn a change at the numbers' precision
  into 0 or 1; over pairs of different clips an unchanged score gives exactly 0.5). A candidate whose gain AUC is
  further than `GAIN_TOLERANCE` (0.05) from 0.5 at either gain follows the microphone gain, and is chosen only
  when every candidate does (said in the log and the record). It is the rule the README's few-normals default
  applies to the benchmark's gain figures, here measured on the user's own clips; with 2-3 clips it can only see
  a gain effect larger than the clips' own spread.
- Candidates: `default_candidates()` is every registered detector that fits in one pass, takes one model per id
  and is not an ensemble (the few-normals benchmark's `auto` entry); `asd-offline select` defaults to those of
  them, in the configs that make them so, whose scores ignore the microphone gain (`GAIN_INDEPENDENT`).

The faults are additive, generic versions of the synthetic generator's (`models.synth`): a harmonic whine (a
worn bearing or gear), periodic impacts ringing at a resonance (a loose part, a chipped tooth), and a band of hiss
(rubbing, a leak). Each is scaled to `FAULT_LEVELS_DB` below the clip's RMS. They are not the faults a real machine
will have; what they measure is whether a detector notices a small added sound on top of this machine's normal
variation, from these few clips. Parametric faults (a machine that runs slower, an imbalance) are not simulated:
they would need a model of the machine.

Fixed before the selection was run on any data, and not changed after (the few-normals benchmark's `auto` row
measures what it gives on real faults): the three fault kinds and their parameter ranges, the two levels, the
fold rule and the candidate rule. It was designed after the benchmark's per-detector figures were known;
nothing in it refers to them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from models.detectors import get_detector, registered
from models.training.recipe import MAX_FOLDS, ClipLike, ModelSpec, build_spec, fold_chains, select_training_clips

log = logging.getLogger(__name__)

# `asd-offline select`'s default candidates: the one-pass detectors whose scores ignore the microphone gain
# (benchmarks/results/gain.json: gain AUC within 0.05 of 0.5 at +-3 dB), by config name (configs/ or
# configs/variants/), in the order ties are broken. A monitor must not alarm when its input gain changes.
GAIN_INDEPENDENT = ("embed_knn", "modspec_graph_level", "modspec_graph_depth")
PSEUDO_FAULTS = ("whine", "impacts", "hiss")
GAIN_CHECK_DB = (-3.0, 3.0)  # the gain gate: a candidate's held-out normals scored at these input gains ...
GAIN_TOLERANCE = 0.05  # ... must keep their AUC against the recorded clips within this of 0.5
FAULT_LEVELS_DB = (-20.0, -10.0)  # the added sound's RMS relative to the clip's


def default_candidates() -> list[str]:
    """Registered detectors that fit in one pass (cheap to fit once per fold), one model per id (`needs_ids`
    systems need several ids) and are not ensembles, in alphabetical order."""
    out = []
    for name in registered("detector"):
        cls = get_detector(name)
        if not (cls.iterative() or cls.needs_ids or cls.combines_members):
            out.append(name)
    return out


def add_fault(wav: np.ndarray, sample_rate: int, kind: str, level_db: float, rng: np.random.Generator) -> np.ndarray:
    """`wav` with one synthetic fault of `kind` added at `level_db` relative to its RMS (float32, same length)."""
    import scipy.signal

    x = np.asarray(wav, dtype=np.float64)
    n = x.size
    t = np.arange(n) / sample_rate
    top = 0.4 * sample_rate  # resonances and bands stay below the Nyquist frequency
    if kind == "whine":  # a tone and two harmonics, 100 Hz - 4 kHz fundamental
        f0 = _log_uniform(rng, 100.0, min(4000.0, top / 3))
        add = sum(a * np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 2 * np.pi))
                  for h, a in ((1, 1.0), (2, 0.5), (3, 0.25)))
    elif kind == "impacts":  # 2-25 impacts per second (5 % timing jitter), each ringing 4 ms at 0.5-6 kHz
        rate, f_res = _log_uniform(rng, 2.0, 25.0), _log_uniform(rng, 500.0, min(6000.0, top))
        tau = 0.004
        k = np.arange(int(8 * tau * sample_rate)) / sample_rate
        ring = np.exp(-k / tau) * np.sin(2 * np.pi * f_res * k)
        gaps = (1.0 / rate) * (1.0 + 0.05 * rng.standard_normal(int(np.ceil(rate * n / sample_rate)) + 2))
        onsets = (rng.uniform(0, 1.0 / rate) + np.cumsum(np.maximum(gaps, 0.2 / rate))) * sample_rate
        pulses = np.zeros(n)
        pulses[onsets[onsets < n].astype(int)] = 1.0
        add = scipy.signal.fftconvolve(pulses, ring)[:n]
    elif kind == "hiss":  # white noise in one octave, centred at 300 Hz - 6 kHz
        fc = _log_uniform(rng, 300.0, min(6000.0, top / np.sqrt(2)))
        sos = scipy.signal.butter(4, [fc / np.sqrt(2), fc * np.sqrt(2)], btype="bandpass", fs=sample_rate,
                                  output="sos")
        add = scipy.signal.sosfilt(sos, rng.standard_normal(n))
    else:
        raise ValueError(f"unknown pseudo-fault {kind!r}; known: {', '.join(PSEUDO_FAULTS)}")
    rms_x, rms_add = np.sqrt(np.mean(x**2)), np.sqrt(np.mean(np.square(add)))
    if rms_x <= 0 or rms_add <= 0:
        raise ValueError("a silent clip cannot carry a pseudo-fault (its level is the reference)")
    return (x + add * (rms_x / rms_add) * 10 ** (level_db / 20)).astype(np.float32)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _wins(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """`[i, j]`: 1 when high[i] > low[j], 0.5 on a tie, else 0."""
    diff = high[:, None] - low[None, :]
    return (diff > 0) + 0.5 * (diff == 0)


def _auc(normal: np.ndarray, faulted: np.ndarray) -> float:
    """P(faulted score > normal score), ties counted half."""
    return float(np.mean(_wins(faulted, normal)))


def gain_auc(recorded: np.ndarray, gained: np.ndarray) -> float:
    """P(gained[i] > recorded[j]) over the pairs i != j of the same clips (ties half): exactly 0.5 when the gain
    changes no score, whatever the scores."""
    return float(np.mean(_wins(gained, recorded)[~np.eye(len(recorded), dtype=bool)]))


@dataclass
class Selection:
    """What `select_detector` found: every candidate's pseudo-AUC (or why it could not be measured), the choice."""

    chosen: str
    pseudo_auc: dict[str, float]
    failed: dict[str, str] = field(default_factory=dict)
    n_clips: int = 0
    folds: int = 0
    gain_auc: dict[str, dict[str, float]] = field(default_factory=dict)  # candidate -> gain (dB) -> gain AUC

    @property
    def follows_gain(self) -> list[str]:
        """The measured candidates the gain gate keeps out (their scores move with the input gain)."""
        return [name for name, by_gain in self.gain_auc.items() if not gain_independent(by_gain)]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form a bundle's training summary and `asd-offline select --report` keep."""
        return {"chosen": self.chosen, "pseudo_auc": self.pseudo_auc, "failed": self.failed,
                "n_clips": self.n_clips, "folds": self.folds, "faults": list(PSEUDO_FAULTS),
                "fault_levels_db": list(FAULT_LEVELS_DB), "gain_auc": self.gain_auc,
                "follows_gain": self.follows_gain, "gain_tolerance": GAIN_TOLERANCE,
                "rule": "highest mean over folds of AUC(held-out normal clips, the same clips with a pseudo-fault), "
                        "among the candidates whose held-out normal scores do not move with a -3 / +3 dB gain "
                        "(AUC of gained vs recorded clips, pairs of different clips, within 0.05 of 0.5; among all "
                        "when none)"}


def gain_independent(gain_auc: Mapping[str, float]) -> bool:
    """The gain gate: every gain AUC within `GAIN_TOLERANCE` of 0.5."""
    return all(abs(v - 0.5) <= GAIN_TOLERANCE for v in gain_auc.values())


def select_detector(
    clips: Sequence[ClipLike],
    machine: str,
    configs: Mapping[str, dict[str, Any]],
    *,
    ids: Sequence[str] | None = None,
    seed: int = 0,
    load: Callable[[ClipLike, int], np.ndarray] | None = None,
) -> Selection:
    """Pseudo-AUC of each candidate (`configs`: name -> training config, in the order ties are broken; the
    config's `model`, else the name, is the detector, so that two variants of one detector can compete) on the
    normal training clips of `machine`; the highest wins. `load(clip, sample_rate)` reads a clip (default: the
    training reader, resampling as training does)."""
    if not configs:
        raise ValueError("no candidate detectors to choose from")
    for name, config in configs.items():
        cls = get_detector(config.get("model", name))
        if cls.bundle_kind != "detector" or cls.combines_members:
            raise ValueError(f"{name} cannot be a candidate: only single detectors trained on normal clips can")
    chosen = select_training_clips(clips, machine, ids)
    n = len(chosen)
    if n < 2:
        raise ValueError(f"{n} normal training clip(s): choosing a detector needs at least 2 (each fold's clips are "
                         "scored by a model fitted on the others)")
    k = min(MAX_FOLDS, n)
    clip_ids = [c.id for c in chosen]
    read = load or _read
    audio: dict[int, list[np.ndarray]] = {}  # sample rate -> clips
    faulted: dict[int, list[list[np.ndarray]]] = {}  # sample rate -> per clip, its faulted versions
    scores: dict[str, float] = {}
    by_gain: dict[str, dict[str, float]] = {}
    failed: dict[str, str] = {}
    for name, config in configs.items():
        try:
            model = config.get("model", name)
            spec = build_spec(model, config, device="cpu", progress=False)
            rate = spec.feature.sample_rate
            if rate not in audio:
                audio[rate] = [read(c, rate) for c in chosen]
                faulted[rate] = [_faulted_versions(w, rate, seed, i) for i, w in enumerate(audio[rate])]
            feats = [f.cpu() for f in spec.feature.extract_batch(audio[rate], "cpu")]
            fault_feats = [[f.cpu() for f in spec.feature.extract_batch(v, "cpu")] for v in faulted[rate]]
            gain_feats = {g: [f.cpu() for f in spec.feature.extract_batch(
                [w * np.float32(10 ** (g / 20)) for w in audio[rate]], "cpu")] for g in GAIN_CHECK_DB}

            def rebuild(model: str = model, config: dict[str, Any] = config) -> ModelSpec:
                return build_spec(model, config, device="cpu", progress=False)

            aucs = []
            recorded, gained = np.empty(n), {g: np.empty(n) for g in GAIN_CHECK_DB}  # out-of-fold, pooled
            for held, chain in fold_chains(rebuild, feats, clip_ids, seed):
                held_ids = [clip_ids[i] for i in held]
                normal = np.asarray(chain.score_windows([feats[i] for i in held], held_ids), dtype=np.float64)
                bad_feats = [f for i in held for f in fault_feats[i]]
                bad_ids = [clip_ids[i] for i in held for _ in fault_feats[i]]
                aucs.append(_auc(normal, np.asarray(chain.score_windows(bad_feats, bad_ids), dtype=np.float64)))
                recorded[held] = normal
                for g in GAIN_CHECK_DB:
                    gained[g][held] = chain.score_windows([gain_feats[g][i] for i in held], held_ids)
            scores[name] = float(np.mean(aucs))
            by_gain[name] = {str(g): gain_auc(recorded, v) for g, v in gained.items()}
            log.info("selection %s/%s: %s pseudo-AUC %.3f, gain AUC %s (%d folds of %d clips)", machine,
                     ",".join(ids or []) or "all ids", name, scores[name],
                     " / ".join(f"{v:.2f}" for v in by_gain[name].values()), k, n)
        except ValueError as err:  # e.g. too few clips per fold for this model: said, not hidden
            failed[name] = str(err)
            log.warning("selection %s: %s cannot be measured: %s", machine, name, err)
    if not scores:
        raise ValueError(f"no candidate could be measured on {n} clips: {failed}")
    eligible = {name: v for name, v in scores.items() if gain_independent(by_gain[name])}
    if not eligible:
        log.warning("selection %s: every candidate's scores follow the input gain (%s): choosing among all of them; "
                    "fix the microphone's gain, or the monitor will alarm when it changes", machine,
                    ", ".join(scores))
        eligible = scores
    best = max(eligible.values())
    winner = next(name for name in configs if eligible.get(name) == best)
    return Selection(chosen=winner, pseudo_auc=scores, failed=failed, n_clips=n, folds=k, gain_auc=by_gain)


def _faulted_versions(wav: np.ndarray, sample_rate: int, seed: int, index: int) -> list[np.ndarray]:
    """One version per fault kind and level, each fault from its own seed (clip, kind, level): the same faults for
    every candidate."""
    out = []
    for a, kind in enumerate(PSEUDO_FAULTS):
        for b, level in enumerate(FAULT_LEVELS_DB):
            rng = np.random.default_rng([seed, index, a, b])
            out.append(add_fault(wav, sample_rate, kind, level, rng))
    return out


def _read(clip: ClipLike, sample_rate: int) -> np.ndarray:
    from models.audio import WavReader

    return WavReader(clip.path, sample_rate=sample_rate, resample=True).read()


__all__ = ["FAULT_LEVELS_DB", "GAIN_CHECK_DB", "GAIN_INDEPENDENT", "GAIN_TOLERANCE", "PSEUDO_FAULTS", "Selection",
           "add_fault", "default_candidates", "gain_auc", "gain_independent", "select_detector"]
