"""The networks of Deep SVDD on feature vectors, built so that they cannot map everything onto the centre.

Ruff et al. (2018, Prop. 2) show that a bias term lets the network reach the trivial minimum (a constant output
equal to the centre c, zero loss, no information): every linear layer here is bias-free, and batch norm has no
affine parameters (its shift would be a bias). Unbounded activations (LeakyReLU, as in the reference networks)
for the same reason (Prop. 3: a bounded one saturates onto a constant). The autoencoder used for pre-training
shares the encoder module and mirrors it, under the same constraints, so its trained encoder initialises the
Deep SVDD network weight for weight.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

BN_EPS = 1e-4  # the reference networks' batch-norm epsilon
LEAK = 0.01  # F.leaky_relu's default slope, as in the reference


def _block(n_in: int, n_out: int) -> list[nn.Module]:
    return [nn.Linear(n_in, n_out, bias=False), nn.BatchNorm1d(n_out, eps=BN_EPS, affine=False),
            nn.LeakyReLU(LEAK)]


class Encoder(nn.Module):
    """dim -> hidden... -> rep_dim: bias-free linear layers, affine-free batch norm and LeakyReLU between them,
    a plain bias-free projection at the end (the representation whose distance to c is the score)."""

    def __init__(self, dim: int, hidden: Sequence[int], rep_dim: int) -> None:
        super().__init__()
        sizes = [int(dim), *[int(h) for h in hidden]]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += _block(n_in, n_out)
        layers.append(nn.Linear(sizes[-1], int(rep_dim), bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Autoencoder(nn.Module):
    """The pre-training autoencoder: `encoder` (the Deep SVDD network itself) and its mirror image as decoder."""

    def __init__(self, encoder: Encoder, dim: int, hidden: Sequence[int], rep_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        sizes = [int(rep_dim), *[int(h) for h in reversed(hidden)]]
        layers: list[nn.Module] = [nn.BatchNorm1d(int(rep_dim), eps=BN_EPS, affine=False), nn.LeakyReLU(LEAK)]
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += _block(n_in, n_out)
        layers.append(nn.Linear(sizes[-1], int(dim), bias=False))
        self.decoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
