"""Self-supervised segment embeddings scored by nearest neighbours (`ssl_knn`, issue #13): a small convolutional
encoder learns, without labels, what stays the same in a machine's sound under changes that keep its character;
a window is scored by how far its segments' embeddings are from the nearest normal ones of its machine id.

The design below was fixed before any benchmark result was seen, and no setting was chosen on test data.

Why. `embed_knn` describes a segment by fixed statistics (per-band mean and deviation); with 2-10 clips per machine
nothing can be learned per machine, but a user has more audio than that: every machine's normals (all ids, all
types) and the synthetic generator's sounds. Pre-training on all of it, unlabeled, is the one way the few-normals
regime can use a learned representation.

Segments. As `embed_knn` (`models.detectors._segments`): `segment_frames` (32, 1.06 s) consecutive 128-band log-mel
frames, scored every `segment_hop` (16) frames plus one aligned to the window's end, each segment's mean dB
subtracted (`level_norm`, default true; then a gain change of the clip changes nothing).

Pre-training (`pretrain(clips)`; `fit` runs it on its own clips when it has not been run). SimCLR
(`network.py`): two views of a stretch of audio should embed close together and far from the other stretches in the
batch. A batch is `batch_size` random stretches of `segment_frames + max_shift` frames (the generic training loop's
window batches, drawn every `crop_stride` frames of each clip with jitter); each view is
- a crop of `segment_frames` frames at a random offset within the stretch (a time shift of up to `max_shift`
  frames, 8 = 0.26 s, between the views: the same machine a moment later),
- mixed, in the power domain, with another stretch of the batch (another clip, maybe another machine) at a level
  drawn uniformly from `mix_db` ([-20, -10] dB) relative to its own mean level (the site's other sounds in the
  background: what a microphone on a factory floor also hears),
- with a gain drawn uniformly within +-`gain_db` (3 dB) when `level_norm` is off (with it on the view is
  level-normalised after mixing, so a gain is exactly nothing and is not drawn).
No frequency masking, pitch or speed change: those change what a machine sounds like, which is what a fault
does. Adam (`lr`), `epochs` passes, NT-Xent at `temperature` 0.2; no validation split (the loss of random views
says nothing about faults, and choosing an epoch on it would be arbitrary): the last epoch is kept.

Bank and score: as `embed_knn`, on the encoder's L2-normalised `embed_dim` outputs (eval mode, no augmentation)
instead of the fixed statistics: each dimension standardised over the training segments, the bank of every
training segment every `bank_hop` frames with its machine id, a segment's score its mean distance to the `k`
nearest bank segments of the window's id (the whole bank when the id is unknown), the window's the mean over its
segments. Each segment is embedded and scored on its own (batch norm in eval mode), so streaming equals offline.

What the bundle holds: the encoder's weights (the projection head is dropped), the standardisation and the bank,
plain tensors. What it cannot see: anything the augmentations teach it to ignore (a faint extra sound 10-20 dB
below the machine, a fraction of a second's shift).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from models.detectors._segments import QUICK_SEGMENTS, SEGMENT_FRAMES, SEGMENT_HOP, TRAIN_HOP
from models.detectors.base import ClipsLike, check_clips, check_state, crop_starts, register
from models.detectors.embed_knn import EmbedKnn
from models.detectors.ssl_knn.network import Contrastive, SegmentEncoder, nt_xent
from models.device import select_device
from models.training.loop import Batch, Step, TrainSettings, fit_step

_LN10_OVER_10 = math.log(10.0) / 10.0
_EMBED_CHUNK = 4096  # segments per encoder pass when embedding


def mix_db(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The dB values of the power sum of two dB spectrograms: 10 log10(10^(a/10) + 10^(b/10))."""
    return torch.logaddexp(a * _LN10_OVER_10, b * _LN10_OVER_10) / _LN10_OVER_10


class ContrastiveStep(Step):
    """SimCLR on window batches `[B, frames + max_shift, n_mels]`: two augmented views per stretch, NT-Xent."""

    def __init__(self, module: Contrastive, frames: int, max_shift: int, mix: Sequence[float] | None,
                 gain_db: float, level_norm: bool, temperature: float, seed: int) -> None:
        super().__init__(module)
        self.frames, self.max_shift = frames, max_shift
        self.mix = None if mix is None else (float(mix[0]), float(mix[1]))
        self.gain_db, self.level_norm, self.temperature = gain_db, level_norm, temperature
        self.gen = torch.Generator().manual_seed(seed)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """One augmented view of each stretch of `x` (the module docstring's list)."""
        B = x.shape[0]
        rand = lambda *shape: torch.rand(*shape, generator=self.gen).to(x.device)  # noqa: E731
        offset = torch.randint(0, self.max_shift + 1, (B,), generator=self.gen).to(x.device)
        v = x[torch.arange(B, device=x.device)[:, None], offset[:, None] + torch.arange(self.frames, device=x.device)]
        if self.mix is not None and B > 1:
            partner = (torch.arange(B) + torch.randint(1, B, (B,), generator=self.gen)) % B
            other = v[partner.to(x.device)]
            lo, hi = self.mix
            rel = lo + (hi - lo) * rand(B)
            shift = v.mean(dim=(1, 2)) - other.mean(dim=(1, 2)) + rel
            v = mix_db(v, other + shift[:, None, None])
        if self.level_norm:
            v = v - v.mean(dim=(1, 2), keepdim=True)
        elif self.gain_db > 0:
            v = v + (2 * rand(B) - 1)[:, None, None] * self.gain_db
        return v

    def loss(self, batch: Batch) -> torch.Tensor:
        x = batch.x.float()
        return nt_xent(self.module(self.view(x)), self.module(self.view(x)), self.temperature)


@register
class SslKnn(EmbedKnn):
    """Mean over a window's segments of the distance from each segment's self-supervised embedding to the
    nearest training segments of the same machine id, the whole type's when the id is unknown."""

    name = "ssl_knn"
    pretrains = True
    quick_params = {**QUICK_SEGMENTS, "bank_hop": 2, "width": 32, "blocks": 1, "embed_dim": 16, "proj_dim": 8,
                    "max_shift": 2, "crop_stride": 4, "epochs": 2, "batch_size": 16, "progress": False,
                    "num_threads": 1}
    int_params = ("segment_frames", "segment_hop", "bank_hop", "k", "width", "blocks", "embed_dim", "proj_dim",
                  "crop_stride", "epochs", "batch_size")

    def __init__(self, segment_frames: int = SEGMENT_FRAMES, segment_hop: int = SEGMENT_HOP, bank_hop: int = TRAIN_HOP,
                 k: int = 1, level_norm: bool = True, width: int = 128, blocks: int = 3, embed_dim: int = 128,
                 proj_dim: int = 64, temperature: float = 0.2, max_shift: int = 8,
                 mix_db: Sequence[float] | None = (-20.0, -10.0), gain_db: float = 3.0, crop_stride: int = 8,
                 epochs: int = 20, batch_size: int = 128, lr: float = 1e-3, seed: int = 0, device: str = "auto",
                 progress: bool = True, num_threads: int | None = None) -> None:
        super().__init__(segment_frames=segment_frames, segment_hop=segment_hop, bank_hop=bank_hop, k=k,
                         level_norm=level_norm)
        self.width = width
        self.blocks = blocks
        self.embed_dim = embed_dim
        self.proj_dim = proj_dim
        self.temperature = temperature
        self.max_shift = max_shift
        self.mix_db = None if mix_db is None else [float(v) for v in mix_db]  # a list, as from JSON and YAML
        self.gain_db = gain_db
        self.crop_stride = crop_stride
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        self.device = device
        self.progress = progress
        self.num_threads = num_threads

    def _check_params(self) -> None:
        super()._check_params()
        if isinstance(self.max_shift, bool) or not isinstance(self.max_shift, int) or self.max_shift < 0:
            raise ValueError(f"{self.name}: max_shift must be a non-negative integer, got {self.max_shift!r}")
        if self.mix_db is not None and (len(self.mix_db) != 2 or not self.mix_db[0] <= self.mix_db[1]):
            raise ValueError(f"{self.name}: mix_db must be [low, high] in dB with low <= high, or null for no "
                             f"mixing, got {self.mix_db!r}")
        for name in ("temperature", "lr"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{self.name}: {name} must be positive, got {getattr(self, name)!r}")
        if not float(self.gain_db) >= 0:
            raise ValueError(f"{self.name}: gain_db must be >= 0, got {self.gain_db!r}")

    # -- pre-training ------------------------------------------------------------------------------------------------

    def _build(self, n_mels: int) -> SegmentEncoder:
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG state
            torch.manual_seed(int(self.seed))
            return SegmentEncoder(n_mels, int(self.width), int(self.blocks), int(self.embed_dim))

    def pretrain(self, clips: ClipsLike) -> "SslKnn":
        """Train the encoder, self-supervised, on unlabeled clips `[T, n_mels]` (any ids, any types); `fit` then
        keeps it and builds the bank of its own clips."""
        self._check_params()
        checked = check_clips(clips, what=f"{self.name}.pretrain clips")
        stretch = int(self.segment_frames) + int(self.max_shift)
        usable = [c for c in checked if c.shape[0] >= stretch]
        if not usable:
            raise ValueError(f"{self.name}: no pre-training clip has the {stretch} frames of one training stretch "
                             f"(segment_frames + max_shift)")
        n_mels = usable[0].shape[1]
        device = select_device(self.device)
        encoder = self._build(n_mels)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed) + 1)
            model = Contrastive(encoder, int(self.embed_dim), int(self.proj_dim))
        step = ContrastiveStep(model, int(self.segment_frames), int(self.max_shift), self.mix_db,
                               float(self.gain_db), bool(self.level_norm), float(self.temperature), int(self.seed))
        settings = TrainSettings.of(self, device, validation_split=0.0, window=stretch,
                                    window_stride=int(self.crop_stride), desc=f"{self.name} pre-training")
        self.history_ = fit_step(step, torch.cat(usable).float(), [c.shape[0] for c in usable], settings)
        self.pretrain_clips_ = len(usable)
        self._set_encoder(encoder, device)
        return self

    def _set_encoder(self, encoder: SegmentEncoder, device: torch.device) -> None:
        self.encoder_ = encoder.to(device).eval()
        self.device_ = device

    @property
    def is_pretrained(self) -> bool:
        return hasattr(self, "encoder_")

    # -- the embedding embed_knn's bank and scoring use ------------------------------------------------------------

    def fit(self, clips: ClipsLike, ids: Sequence[str] | None = None) -> "SslKnn":
        if not self.is_pretrained:
            self.pretrain(clips)
        return super().fit(clips, ids)

    @torch.no_grad()
    def _embed(self, clips: Sequence[torch.Tensor], hop: int, what: str) -> list[torch.Tensor]:
        frames = int(self.segment_frames)
        short = [i for i, c in enumerate(clips) if c.shape[0] < frames]
        if short:
            raise ValueError(f"{self.name}: {what}[{short[0]}] has {clips[short[0]].shape[0]} frames, fewer than one "
                             f"segment of segment_frames={frames}: give longer clips or windows")
        segs, counts = [], []
        for c in clips:
            starts = torch.tensor(crop_starts(c.shape[0], frames, hop))
            segs.append(c.float()[starts[:, None] + torch.arange(frames)])
            counts.append(len(starts))
        S = torch.cat(segs)
        if self.level_norm:
            S = S - S.mean(dim=(1, 2), keepdim=True)
        out = [self.encoder_.embed(S[s : s + _EMBED_CHUNK].to(self.device_)).cpu()
               for s in range(0, S.shape[0], _EMBED_CHUNK)]
        return list(torch.cat(out).double().split(counts))

    def _embedding_width(self, dim: int) -> int:
        return int(self.embed_dim)

    # -- state -------------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = super().state_dict()
        state.update({f"encoder.{k}": v.detach().cpu() for k, v in self.encoder_.state_dict().items()})
        return state

    def learned(self) -> dict[str, Any]:
        out = super().learned()
        if out and hasattr(self, "pretrain_clips_"):
            out["pretrain_clips"] = self.pretrain_clips_
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor], learned: dict[str, Any] | None = None) -> "SslKnn":
        self._check_params()
        dim = (learned or {}).get("dim")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"{self.name}: learned['dim'] (the number of mel bands) is needed to rebuild the encoder")
        if not isinstance(state, dict):
            raise ValueError(f"{self.name}: state must be a dict of tensors, got {type(state).__name__}")
        encoder = self._build(dim)
        enc_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        check_state(enc_state, encoder.state_dict(), f"{self.name} encoder")
        encoder.load_state_dict(enc_state)
        self._set_encoder(encoder, select_device(self.device))
        if isinstance((learned or {}).get("pretrain_clips"), int):
            self.pretrain_clips_ = int(learned["pretrain_clips"])
        return super().load_state_dict({k: v for k, v in state.items() if not k.startswith("encoder.")}, learned)
