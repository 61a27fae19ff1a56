"""MFCC: the orthonormal DCT-II of the log-mel spectrum, a compact spectral envelope for small detectors (GMMs,
i-vectors, kNN) that a 128-dim log-mel would swamp.

The log-mel dB comes from `MelComputer` itself (power 2, `10*log10(mel + EPS)`), so an MFCC is by construction the
DCT of the log-mel the `logmel` kind computes with the same settings; the DCT is one matmul with a precomputed
[n_mels, n_mfcc] matrix. librosa's usual `power_to_db(top_db=80)` is deliberately not applied: that floor is
relative to the clip's loudest bin, which a stream cannot know before the clip ends, so it would break
streaming == offline. With `ref=1.0, amin=1e-10, top_db=None` librosa agrees with this kind wherever a mel energy
exceeds 1e-10 (-100 dB); below that, ours keeps falling towards EPS instead of clipping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
import torch

from models.features.base import StftFeature, register_feature
from models.features.logmel import LogMelConfig, MelComputer


@register_feature
@dataclass(frozen=True)
class MfccConfig(StftFeature):
    """Hyper-parameters of the MFCC front end.

    `n_mels=64` rather than log-mel's 128: the 20 kept coefficients describe the envelope, which 64 bands (about
    47 Hz apart below 1 kHz at 16 kHz / n_fft 1024) already resolve; the finer detail 128 bands add is what the
    truncation to `n_mfcc` throws away, at twice the filterbank cost. Framing equals log-mel's (1024 / 512), so
    the frames of the two kinds pair one to one.
    """

    kind = "mfcc"

    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 64
    n_mfcc: int = 20
    fmin: float = 0.0
    fmax: float | None = None
    context: int = 1  # consecutive frames concatenated into one vector

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive("n_mels", "n_mfcc")
        if self.n_mfcc > self.n_mels:
            raise ValueError(f"mfcc: n_mfcc={self.n_mfcc} exceeds n_mels={self.n_mels} (the DCT has n_mels terms)")
        self._check_band(self.fmin, self.fmax)

    @property
    def frame_dim(self) -> int:
        return self.n_mfcc

    def mel_config(self) -> LogMelConfig:
        """The log-mel settings whose dB this kind transforms (power 2, no context)."""
        return LogMelConfig(
            sample_rate=self.sample_rate,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            n_mels=self.n_mels,
            power=2.0,
            fmin=self.fmin,
            fmax=self.fmax,
        )

    def make_computer(self, device: torch.device) -> "MfccComputer":
        return MfccComputer(self, device)


def dct_matrix(n_mels: int, n_mfcc: int) -> np.ndarray:
    """[n_mels, n_mfcc] float32 with `logmel_rows @ M` == `scipy.fft.dct(logmel_rows, type=2, norm="ortho")[:, :n_mfcc]`
    (row i is the DCT of the i-th unit vector)."""
    return np.ascontiguousarray(scipy.fft.dct(np.eye(n_mels), type=2, norm="ortho", axis=-1)[:, :n_mfcc], np.float32)


class MfccComputer(MelComputer):
    """`MelComputer`'s filterbank and dB, then the DCT matmul, block by block (the same blocks as log-mel, so each
    block's intermediates stay in cache and every matmul has a row count that is a multiple of 16)."""

    def __init__(self, cfg: MfccConfig, device: torch.device) -> None:
        super().__init__(cfg.mel_config(), device)  # self.cfg is the LogMelConfig that `mel` and `db_` read
        self.mfcc_cfg = cfg
        self.dct = torch.from_numpy(dct_matrix(cfg.n_mels, cfg.n_mfcc)).to(device)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """[rows, n_fft] windowed frames (consumed) -> [rows, n_mfcc]."""
        return self.in_blocks(frames, self.FRAMES_PER_BLOCK, self._mfcc)

    def _mfcc(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.mm(self.db_(self.mel(frames)), self.dct)
