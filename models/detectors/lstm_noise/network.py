"""One network for both noise models: a unidirectional LSTM over log-mel frames and a linear read-out.

The classifier reads out the last hidden state (one logit: noisy vs clean); the denoiser reads out every hidden
state (one clean frame per input frame). Unidirectional on purpose: a frame's output depends only on the frames up
to it, so the monitor can run the network incrementally, carrying `(h, c)` across hops, and get what the offline
pass over the same audio gets.
"""

from __future__ import annotations

import torch
from torch import nn

LstmState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each [layers, batch, hidden]


class MelLstm(nn.Module):
    """`[B, T, n_in] -> [B, T, n_out]` (a read-out of every hidden state) and the final `(h, c)`."""

    def __init__(self, n_in: int, hidden: int, layers: int, n_out: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_in, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor, state: LstmState | None = None) -> tuple[torch.Tensor, LstmState]:
        h, state = self.lstm(x, state)
        return self.head(h), state

    def last(self, x: torch.Tensor) -> torch.Tensor:
        """The read-out of the last hidden state only `[B, n_out]` (the classifier's logit)."""
        h, _ = self.lstm(x)
        return self.head(h[:, -1])
