"""The segment encoder of `ssl_knn` and its contrastive objective (SimCLR: Chen et al., ICML 2020).

The encoder reads one level-normalised log-mel segment `[frames, n_mels]` with the mel bands as channels: `blocks`
1-D convolutions over time (kernel 3, `width` channels, batch norm, ReLU), then each channel's mean and standard
deviation over time, mapped linearly to `embed_dim` values. Bands as channels keep where in the spectrum a pattern
sits, much of a machine's character (a fan's blade-pass harmonics, a pump's hum), and make every layer one dense
matrix product: a 2-D image network over the same segment cost 8x more CPU time per step for the few minutes of
pre-training this regime affords. The mean and deviation over time mirror `embed_knn`'s statistics, learned. The
representation scored downstream is this `embed_dim` vector, L2-normalised.

The projection head (SimCLR's g: Linear, ReLU, Linear to `proj_dim`) exists only for the training loss; SimCLR
shows that the representation before it transfers better than the one after, because the head learns to forget
what the augmentations change.

NT-Xent: for a batch of B pairs of views, each view's positive is the other view of its pair and its negatives
are the other 2B - 2 views; cross-entropy over cosine similarities divided by a temperature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegmentEncoder(nn.Module):
    """`[B, frames, n_mels]` -> `[B, embed_dim]` (not normalised; `embed` normalises)."""

    def __init__(self, n_mels: int, width: int, blocks: int, embed_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = int(n_mels)
        for _ in range(int(blocks)):
            layers += [nn.Conv1d(channels, int(width), 3, padding=1, bias=False), nn.BatchNorm1d(int(width)),
                       nn.ReLU()]
            channels = int(width)
        self.conv = nn.Sequential(*layers)
        self.out = nn.Linear(2 * channels, int(embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.transpose(1, 2))  # [B, width, time]
        return self.out(torch.cat([h.mean(dim=2), h.std(dim=2)], dim=1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The scored representation: the encoder output on the unit sphere."""
        return F.normalize(self(x), dim=1)


class Contrastive(nn.Module):
    """The encoder with SimCLR's projection head, trained together; only the encoder is kept."""

    def __init__(self, encoder: SegmentEncoder, embed_dim: int, proj_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.Linear(int(embed_dim), int(embed_dim)), nn.ReLU(),
                                  nn.Linear(int(embed_dim), int(proj_dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss for the pairs (z1[i], z2[i]): mean cross-entropy of each view against the 2B - 1 others,
    its pair partner being the right answer."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    sim = (z @ z.T) / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, target)
