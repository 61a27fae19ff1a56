"""AEGAN-AD's networks (Jiang et al. 2023; reference: jianganbai/AEGAN-AD, `dcase20/net.py`): a DCGAN-style
convolutional autoencoder as the generator and a DCGAN discriminator with an embedding head.

Both work on square `[B, 1, isize, isize]` log-mel patches (mel bands x frames) scaled to [-1, 1]. Each
convolution halves the side (kernel 4, stride 2, padding 1) until it is 4, doubling the channels from `ndf`; every
layer but the last has a LayerNorm over (channels, height, width), the reference's setting for both networks (a
batch statistic would couple the critic's outputs within a batch, which the gradient penalty assumes they are not).
- The generator's encoder ends in a 4x4 valid convolution to an `nz`-dim code; the decoder mirrors it with
  transposed convolutions (ReLU; LeakyReLU 0.2 in the encoder) and a tanh output.
- The discriminator's embedding is a global depthwise 4x4 convolution of the last 4x4 map (one value per
  channel), then LayerNorm, LeakyReLU and a linear critic output. The embedding is what AEGAN-AD scores with.
Convolution weights start from N(0, 0.02), the DCGAN initialisation the reference applies.
"""

from __future__ import annotations

import torch
from torch import nn

_SLOPE = 0.2  # LeakyReLU slope of the encoder and the discriminator


def check_isize(isize: int) -> None:
    """The side must halve down to 4 exactly: 4 * 2^k with k >= 2 (16, 32, 64, 128, ...)."""
    if isize < 16 or isize & (isize - 1):
        raise ValueError(f"isize must be a power of 2 and at least 16, got {isize}")


def _pyramid(isize: int, ndf: int) -> tuple[nn.Sequential, int]:
    """Strided convolutions from one channel at `isize` down to 4x4: the encoder's and the discriminator's trunk;
    returns it and its output channel count."""
    layers: list[nn.Module] = []
    chan_in, chan, size = 1, ndf, isize
    while size > 4:
        size //= 2
        layers += [nn.Conv2d(chan_in, chan, 4, 2, 1, bias=False), nn.LayerNorm((chan, size, size)),
                   nn.LeakyReLU(_SLOPE)]
        chan_in, chan = chan, chan * 2
    return nn.Sequential(*layers), chan_in


class Generator(nn.Module):
    """The autoencoder: patch -> `nz`-dim code -> patch in [-1, 1]."""

    def __init__(self, isize: int, nz: int, ndf: int, ngf: int) -> None:
        super().__init__()
        check_isize(isize)
        trunk, chan = _pyramid(isize, ndf)
        self.encoder = nn.Sequential(trunk, nn.Conv2d(chan, nz, 4, 1, 0, bias=False))
        chan = ngf * isize // 8  # the decoder's width at 4x4, halved at each doubling up to isize // 2
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, chan, 4, 1, 0, bias=False), nn.LayerNorm((chan, 4, 4)),
                                   nn.ReLU()]
        size = 4
        while size < isize // 2:
            size *= 2
            layers += [nn.ConvTranspose2d(chan, chan // 2, 4, 2, 1, bias=False), nn.LayerNorm((chan // 2, size, size)),
                       nn.ReLU()]
            chan //= 2
        layers += [nn.ConvTranspose2d(chan, 1, 4, 2, 1, bias=False), nn.Tanh()]
        self.decoder = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class Discriminator(nn.Module):
    """The critic: patch -> (critic value `[B, 1]`, embedding `[B, C]`), C = ndf * isize / 8."""

    def __init__(self, isize: int, ndf: int) -> None:
        super().__init__()
        check_isize(isize)
        self.trunk, chan = _pyramid(isize, ndf)
        self.embed = nn.Sequential(nn.Conv2d(chan, chan, 4, 1, 0, groups=chan, bias=False), nn.Flatten())
        self.critic = nn.Sequential(nn.LayerNorm(chan), nn.LeakyReLU(_SLOPE), nn.Linear(chan, 1))
        self.embedding_dim = chan
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(self.trunk(x))
        return self.critic(emb), emb


class AeGan(nn.Module):
    """Both networks in one module, so that the training loop moves, wraps and checkpoints them together."""

    def __init__(self, isize: int, nz: int, ndf: int, ngf: int) -> None:
        super().__init__()
        self.generator = Generator(isize, nz, ndf, ngf)
        self.discriminator = Discriminator(isize, ndf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(x)


def dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) weights for every (transposed) convolution."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
