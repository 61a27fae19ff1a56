"""STgram-MFN's network (Liu et al., ICASSP 2022): a learned temporal front end (Tgram) beside the log-mel (Sgram),
both fed as two channels to a MobileFaceNet that embeds a crop in 128 dimensions, and an ArcFace head over the
machine ids.

Shapes follow the reference implementation (liuyoude/STgram-MFN) at its defaults: 128 mels x 311 frames per
10 s crop (313 there, with centred framing); MobileFaceNet's stem (3x3, stride 2), a depthwise 3x3, the bottleneck
stages [expansion t, channels c, repeats n, stride s] = [2,64,5,2], [4,128,1,2], [2,128,6,1], [4,128,1,2],
[2,128,2,1], a 1x1 conv to 512, a depthwise conv over the whole remaining map (its kernel is the map's size, 8 x 20
for 128 x 311: what makes the network fixed to one crop length, with the Tgram's LayerNorm over time), and a 1x1
conv to the 128-dim embedding. Every size is a parameter so that tests run it tiny.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MOBILEFACENET_BLOCKS = [[2, 64, 5, 2], [4, 128, 1, 2], [2, 128, 6, 1], [4, 128, 1, 2], [2, 128, 2, 1]]


def _conv_out(n: int, stride: int) -> int:
    """Output length of a 3x3 convolution with padding 1."""
    return (n - 1) // stride + 1


class ConvBlock(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> PReLU, or without the PReLU when `linear`."""

    def __init__(self, n_in: int, n_out: int, kernel: int | tuple[int, int], stride: int = 1, padding: int = 0,
                 depthwise: bool = False, linear: bool = False) -> None:
        layers: list[nn.Module] = [nn.Conv2d(n_in, n_out, kernel, stride, padding, groups=n_in if depthwise else 1,
                                             bias=False), nn.BatchNorm2d(n_out)]
        if not linear:
            layers.append(nn.PReLU(n_out))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    """MobileNetV2's inverted residual: 1x1 expand, 3x3 depthwise (with the stride), 1x1 linear projection; a
    residual connection when the shape is kept."""

    def __init__(self, n_in: int, n_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        wide = n_in * expansion
        self.residual = stride == 1 and n_in == n_out
        self.body = nn.Sequential(ConvBlock(n_in, wide, 1), ConvBlock(wide, wide, 3, stride, 1, depthwise=True),
                                  ConvBlock(wide, n_out, 1, linear=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileFaceNet(nn.Module):
    """[B, 2, n_mels, frames] -> [B, embedding]."""

    def __init__(self, n_mels: int, frames: int, blocks: Sequence[Sequence[int]], stem: int, head: int,
                 embedding: int) -> None:
        super().__init__()
        h, w = _conv_out(n_mels, 2), _conv_out(frames, 2)
        layers: list[nn.Module] = [ConvBlock(2, stem, 3, 2, 1), ConvBlock(stem, stem, 3, 1, 1, depthwise=True)]
        n_in = stem
        for t, c, n, s in blocks:
            for i in range(int(n)):
                stride = int(s) if i == 0 else 1
                layers.append(Bottleneck(n_in, int(c), stride, int(t)))
                h, w, n_in = _conv_out(h, stride), _conv_out(w, stride), int(c)
        layers += [ConvBlock(n_in, head, 1), ConvBlock(head, head, (h, w), depthwise=True, linear=True),
                   ConvBlock(head, embedding, 1, linear=True)]
        self.net = nn.Sequential(*layers)
        for m in self.modules():  # the reference's initialisation
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class TgramNet(nn.Module):
    """Raw frames [B, frames, n_fft] -> [B, n_mels, frames]: the reference's strided 1-D convolution (kernel n_fft,
    one output per frame, no bias) as a linear map of each frame, then `n_layers` x [LayerNorm over time,
    LeakyReLU 0.2, conv k3]."""

    def __init__(self, n_fft: int, n_mels: int, frames: int, n_layers: int = 3) -> None:
        super().__init__()
        self.extractor = nn.Linear(n_fft, n_mels, bias=False)
        self.encoder = nn.Sequential(*[
            nn.Sequential(nn.LayerNorm(frames), nn.LeakyReLU(0.2), nn.Conv1d(n_mels, n_mels, 3, 1, 1, bias=False))
            for _ in range(n_layers)])

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.extractor(frames).transpose(1, 2))


class ArcFace(nn.Module):
    """Additive angular margin logits (Deng et al. 2019): s * cos(theta_j) for the other classes and
    s * cos(theta_y + m) for the labelled one, with the usual fallback past pi - m that keeps it decreasing."""

    def __init__(self, embedding: int, n_classes: int, margin: float, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, embedding))
        nn.init.xavier_uniform_(self.weight)
        self.margin, self.scale = float(margin), float(scale)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(x.float()), F.normalize(self.weight.float()))
        sine = (1.0 - cosine.square()).clamp(min=0.0).sqrt()
        m = self.margin
        phi = cosine * math.cos(m) - sine * math.sin(m)
        phi = torch.where(cosine > math.cos(math.pi - m), phi, cosine - math.sin(math.pi - m) * m)
        own = F.one_hot(labels.long(), cosine.shape[1]).bool()
        return self.scale * torch.where(own, phi, cosine)


class StgramMFN(nn.Module):
    """`[B, frames, n_mels + n_fft]` crops (the `stgram` feature's frames) -> 128-dim embeddings, or ArcFace
    logits when given labels."""

    def __init__(self, n_classes: int, n_mels: int, n_fft: int, frames: int, blocks: Sequence[Sequence[int]],
                 stem: int, head: int, embedding: int, margin: float, scale: float) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.tgram = TgramNet(n_fft, n_mels, frames)
        self.mfn = MobileFaceNet(n_mels, frames, blocks, stem, head, embedding)
        self.arcface = ArcFace(embedding, n_classes, margin, scale)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings, or with `labels` the ArcFace logits (through forward, so that DistributedDataParallel sees
        the whole training computation)."""
        sgram = x[..., : self.n_mels].transpose(1, 2)  # [B, n_mels, frames]
        tgram = self.tgram(x[..., self.n_mels :])
        embedding = self.mfn(torch.stack([sgram, tgram], dim=1))
        return embedding if labels is None else self.arcface(embedding, labels)
