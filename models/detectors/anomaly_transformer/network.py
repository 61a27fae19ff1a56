"""The Anomaly Transformer's network (Xu et al., ICLR 2022): an encoder of anomaly-attention layers that
reconstructs a sequence of frames, and the association discrepancy between each layer's two attention maps.

Each anomaly-attention layer computes, per head, the *series association* (the usual softmax(Q K^T / sqrt(d))
rows: which frames a frame attends to) and a *prior association*: a Gaussian over the distance |i - j| whose
width sigma_i is learned per frame and per head from the layer's input (one linear map to `n_heads` values,
squashed as the reference does: sigmoid(5 s) + 1e-5, then 3^sigma - 1, so sigma lies in (0, 2) frames), each row
normalised to sum to 1. Only the series association mixes the values; the prior enters the training loss only.

Shapes and defaults follow the reference implementation (thuml/Anomaly-Transformer): a token embedding (a
circular convolution of kernel 3 over time, no bias, Kaiming-normal initialised) plus sinusoidal positions;
`layers` x [anomaly attention, residual, LayerNorm, position-wise feed-forward d_model -> d_ff -> d_model (the
reference's 1x1 convolutions, here the equal linear maps), residual, LayerNorm]; a final LayerNorm; a linear map
back to the input dimension. GELU, dropout 0 by default (the reference builds the model with its defaults).
Every size is a parameter so that tests run it tiny.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

KL_EPS = 1e-4  # the reference's floor inside both logarithms of the KL divergence


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """`[length, d_model]` fixed positional encodings (Vaswani et al.): sin on even, cos on odd columns."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq)[:, : d_model // 2]
    return pe


def gaussian_prior(sigma: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Prior association `[B, H, L, L]` from widths `sigma` `[B, H, L]` (already squashed, > 0) and the frame
    distances |i - j| `[L, L]`: N(|i - j|; 0, sigma_i) per row, each row normalised to sum to 1."""
    s = sigma.float()[..., None]
    density = torch.exp(-distances.square() / (2.0 * s.square())) / (math.sqrt(2.0 * math.pi) * s)
    return density / density.sum(dim=-1, keepdim=True)


def squash_sigma(raw: torch.Tensor) -> torch.Tensor:
    """The reference's map from the sigma projection's output to a width in frames: 3^(sigmoid(5 s) + 1e-5) - 1."""
    return torch.pow(3.0, torch.sigmoid(5.0 * raw.float()) + 1e-5) - 1.0


def kl_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of every row of `[B, H, L, L]` association maps, averaged over heads: `[B, L]` (with the
    reference's 1e-4 floor inside the logarithms)."""
    return (p * (torch.log(p + KL_EPS) - torch.log(q + KL_EPS))).sum(dim=-1).mean(dim=1)


def association_discrepancy(series: Sequence[torch.Tensor], prior: Sequence[torch.Tensor]) -> torch.Tensor:
    """AssDis per frame `[B, L]`: the symmetric KL between each layer's prior and series associations, averaged
    over heads and layers (no detaching: the minimax losses below choose which side learns)."""
    return torch.stack([kl_rows(p, s) + kl_rows(s, p) for s, p in zip(series, prior)]).mean(dim=0)


def minimax_terms(series: Sequence[torch.Tensor], prior: Sequence[torch.Tensor]) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """The two batch means of the association discrepancy the minimax training uses, as the reference:

    - `series_term`: with the prior detached, so only the series association (Q and K) learns from it; the
      maximise phase's loss is `mse - k * series_term` (the series association is pushed away from the prior);
    - `prior_term`: with the series association detached, so only the prior (the sigma projection) learns from
      it; the minimise phase's loss is `mse + k * prior_term` (the prior is pulled towards the series).
    """
    series_term = association_discrepancy(series, [p.detach() for p in prior]).mean()
    prior_term = association_discrepancy([s.detach() for s in series], prior).mean()
    return series_term, prior_term


class AnomalyAttention(nn.Module):
    """Multi-head anomaly attention over `[B, L, d_model]`: returns the attended values `[B, L, d_model]`, the
    series association `[B, H, L, L]` and the prior association `[B, H, L, L]` (rows sum to 1, float32)."""

    def __init__(self, d_model: int, n_heads: int, frames: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        self.n_heads = n_heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.sigma = nn.Linear(d_model, n_heads)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        idx = torch.arange(frames, dtype=torch.float32)
        # not learned and rebuilt from `frames`: kept out of the state dict
        self.register_buffer("distances", (idx[:, None] - idx[None, :]).abs(), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, L, D = x.shape
        H = self.n_heads
        q = self.query(x).view(B, L, H, -1).transpose(1, 2)  # [B, H, L, E]
        k = self.key(x).view(B, L, H, -1).transpose(1, 2)
        v = self.value(x).view(B, L, H, -1).transpose(1, 2)
        logits = (q @ k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
        series = torch.softmax(logits, dim=-1)
        sigma = squash_sigma(self.sigma(x)).transpose(1, 2)  # [B, H, L]
        prior = gaussian_prior(sigma, self.distances[:L, :L])
        mixed = (self.dropout(series).to(v.dtype) @ v).transpose(1, 2).reshape(B, L, D)
        return self.out(mixed), series, prior


class EncoderLayer(nn.Module):
    """Anomaly attention and a position-wise feed-forward block, each with a residual and a LayerNorm after it."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, frames: int, dropout: float) -> None:
        super().__init__()
        self.attention = AnomalyAttention(d_model, n_heads, frames, dropout)
        self.ff1 = nn.Linear(d_model, d_ff)
        self.ff2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attended, series, prior = self.attention(x)
        x = self.norm1(x + self.dropout(attended))
        y = self.dropout(self.ff2(self.dropout(F.gelu(self.ff1(x)))))
        return self.norm2(x + y), series, prior


class AnomalyTransformerNet(nn.Module):
    """`[B, L, dim]` standardised frames (L <= `frames`) -> (reconstruction `[B, L, dim]`, per-layer series
    associations, per-layer prior associations)."""

    def __init__(self, dim: int, frames: int, d_model: int, n_heads: int, layers: int, d_ff: int,
                 dropout: float) -> None:
        super().__init__()
        self.token = nn.Conv1d(dim, d_model, kernel_size=3, padding=1, padding_mode="circular", bias=False)
        nn.init.kaiming_normal_(self.token.weight, mode="fan_in", nonlinearity="leaky_relu")
        self.register_buffer("positions", sinusoidal_positions(frames, d_model), persistent=False)
        self.embed_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList([EncoderLayer(d_model, n_heads, d_ff, frames, dropout) for _ in range(layers)])
        self.norm = nn.LayerNorm(d_model)
        self.projection = nn.Linear(d_model, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        h = self.token(x.transpose(1, 2)).transpose(1, 2) + self.positions[: x.shape[1]]
        h = self.embed_dropout(h)
        series, prior = [], []
        for layer in self.layers:
            h, s, p = layer(h)
            series.append(s)
            prior.append(p)
        return self.projection(self.norm(h)), series, prior
