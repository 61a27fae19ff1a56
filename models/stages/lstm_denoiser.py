"""The LSTM mel denoiser as a stage: a detector trained and scored on denoised log-mel.

The denoiser is trained on its own, from paired noisy/clean audio (`asd-offline train --model lstm_denoiser`);
this stage copies a denoiser bundle's network into the detector's bundle (`params: {bundle: DENOISER_DIR}`), so the
detector bundle stays self-contained and declares in its `stages` that it expects denoised input. Nothing is
learned from the detector's normal clips.

It is a `causal` stage: the LSTM runs over a stream's frames in order, so a frame's denoised value depends on all
earlier frames of the stream. Offline, each clip is denoised from a fresh state (`transform_clips`); the monitor
carries each stream's `(h, c)` across hops (`stream_transform`), which gives the same frames as the offline pass
over the same audio. Detectors whose vectors stack `context` frames (the DCASE AE's 5) work too: the stage takes
the frames apart, denoises each frame once, and stacks the denoised frames again.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from models.detectors.base import ClipsLike, check_clips
from models.stages.base import Stage, register_stage


@dataclass
class DenoiserState:
    """One stream's carried state: the LSTM's `(h, c)` and the last `context - 1` denoised frames."""

    lstm: tuple[torch.Tensor, torch.Tensor]
    tail: torch.Tensor


def _bundle_key(path: str) -> tuple[str, int]:
    """The bundle folder and the time its weights were last written: a rewritten bundle is read again."""
    from models.bundle import WEIGHTS_FILE

    weights = Path(path) / WEIGHTS_FILE
    return str(Path(path).resolve()), weights.stat().st_mtime_ns if weights.exists() else -1


@functools.lru_cache(maxsize=4)
def _load_source(path: str, written_ns: int) -> Any:
    """The denoiser bundle, read once for the feature check and every fit of a training run (cross-fitting builds a
    fresh stage per fold). Its network is only read from, never changed, so the stages can share it."""
    from models.bundle import load_bundle

    return load_bundle(path, device="cpu")


@register_stage
class LstmDenoiserStage(Stage):
    """Denoised log-mel from the `lstm_denoiser` bundle at `bundle` (read once, at fit)."""

    name = "lstm_denoiser"
    granularity = "causal"

    def __init__(self, bundle: str | None = None) -> None:
        self.bundle = bundle

    def source_feature(self) -> dict[str, Any]:
        """The feature config (context aside) the source denoiser was trained on, for the recipe's check."""
        return self._source().meta["feature"]

    def check_feature(self, feature: Any) -> None:
        """ValueError unless the detector's feature is the denoiser's (any `context`): a denoiser trained on other
        frames would clean the wrong thing."""
        mine = {k: v for k, v in feature.to_dict().items() if k != "context"}
        theirs = {k: v for k, v in self.source_feature().items() if k != "context"}
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ValueError(f"{self.name}: the detector's feature differs from the denoiser bundle's in {diff} "
                             f"({json.dumps({k: mine.get(k) for k in diff})} vs "
                             f"{json.dumps({k: theirs.get(k) for k in diff})}); train both on the same log-mel")

    def _source(self) -> Any:
        from models.bundle import BundleError

        if not self.bundle:
            raise ValueError(f"{self.name}: give the denoiser bundle to use: stages: [{{name: {self.name}, params: "
                             "{bundle: DENOISER_DIR}}]")
        source = _load_source(*_bundle_key(self.bundle))
        if source.kind != "denoiser":
            raise BundleError(f"{self.bundle}: a {source.kind} bundle ({source.name}), not a denoiser")
        return source

    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "LstmDenoiserStage":
        checked = check_clips(clips, what=f"{self.name}.fit clips")
        den = self._source().detector
        dim = checked[0].shape[1]
        if dim % den.dim_:
            raise ValueError(f"{self.name}: vectors of {dim} values are not whole frames of the denoiser's "
                             f"{den.dim_} bands")
        self._adopt(den, dim // den.dim_)
        return self

    def _adopt(self, denoiser: Any, context: int) -> None:
        self.denoiser_, self.context_ = denoiser, int(context)

    # -- transforms ---------------------------------------------------------------------------------------------------

    def out_dim(self) -> int:
        self._check_fitted()
        return int(self.denoiser_.dim_) * self.context_

    def transform_clips(self, clips: ClipsLike) -> list[torch.Tensor]:
        """Each clip denoised from a fresh state (the offline pass)."""
        self._check_fitted()
        checked = check_clips(clips, dim=self.out_dim(), what=f"{self.name}.transform clips")
        return self.stream_transform(checked, [None] * len(checked))[0]

    @torch.no_grad()
    def stream_transform(self, vectors: Sequence[torch.Tensor], states: Sequence[DenoiserState | None]
                         ) -> tuple[list[torch.Tensor], list[DenoiserState]]:
        """The next vectors of several streams (each `[k_i, out_dim]`, k_i >= 1) and their carried states (None:
        the stream's start) -> their denoised vectors and new states. Streams with the same number of new frames
        go through the LSTM in one batched call."""
        self._check_fitted()
        F, c = int(self.denoiser_.dim_), self.context_
        frames = []
        for v, st in zip(vectors, states):  # the frames these vectors add (a stream's first vector brings c)
            v = v.float()
            frames.append(torch.cat([v[0].view(c, F), v[1:, -F:]]) if st is None else v[:, -F:])
        denoised: list[torch.Tensor | None] = [None] * len(frames)
        new_lstm: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(frames)
        groups: dict[int, list[int]] = {}
        for i, f in enumerate(frames):
            groups.setdefault(f.shape[0], []).append(i)
        for idx in groups.values():
            x = torch.stack([frames[i] for i in idx])
            prior = [states[i] for i in idx]
            h0 = None
            if all(p is not None for p in prior):
                h0 = (torch.cat([p.lstm[0] for p in prior], dim=1), torch.cat([p.lstm[1] for p in prior], dim=1))
            elif any(p is not None for p in prior):  # a mix of new and continuing streams: new ones start at zero
                h0 = self._mixed_start(prior)
            y, (h, cc) = self.denoiser_.denoise_step(x, h0)
            for k, i in enumerate(idx):
                denoised[i] = y[k]
                new_lstm[i] = (h[:, k : k + 1].clone(), cc[:, k : k + 1].clone())
        out, new_states = [], []
        for v, st, d, lstm in zip(vectors, states, denoised, new_lstm):
            assert d is not None and lstm is not None
            full = d if st is None else torch.cat([st.tail, d])
            stacked = full.unfold(0, c, 1).transpose(1, 2).reshape(-1, c * F) if c > 1 else full
            out.append(stacked)
            new_states.append(DenoiserState(lstm, full[full.shape[0] - (c - 1) :].clone()))
        return out, new_states

    def _mixed_start(self, prior: Sequence[DenoiserState | None]) -> tuple[torch.Tensor, torch.Tensor]:
        den = self.denoiser_
        zero = torch.zeros(int(den.layers), 1, int(den.hidden))
        return (torch.cat([zero if p is None else p.lstm[0] for p in prior], dim=1),
                torch.cat([zero if p is None else p.lstm[1] for p in prior], dim=1))

    # -- state ----------------------------------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "denoiser_")

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {f"denoiser.{k}": v for k, v in self.denoiser_.state_dict().items()}

    def learned(self) -> dict[str, Any]:
        if not self.is_fitted:
            return {}
        return {"context": self.context_, "denoiser": {"hidden": int(self.denoiser_.hidden),
                                                       "layers": int(self.denoiser_.layers)}}

    def load_state_dict(self, state: dict[str, torch.Tensor], learned: dict[str, Any] | None = None
                        ) -> "LstmDenoiserStage":
        from models.detectors.lstm_noise import LstmDenoiser

        arch = (learned or {}).get("denoiser")
        context = (learned or {}).get("context")
        if not isinstance(arch, dict) or not isinstance(context, int) or context < 1:
            raise ValueError(f"{self.name}: learned metadata needs 'context' and 'denoiser': {{hidden, layers}}")
        den = LstmDenoiser(hidden=int(arch["hidden"]), layers=int(arch["layers"]), device="cpu", progress=False)
        den.load_state_dict({k[len("denoiser."):]: v for k, v in state.items() if k.startswith("denoiser.")})
        extra = sorted(k for k in state if not k.startswith("denoiser."))
        if extra:
            raise ValueError(f"{self.name}: unexpected state keys {extra}")
        self._adopt(den, context)
        return self
