"""`SelfAttention2d`: SAGAN-style self-attention over the spatial positions of a feature map.

Reference: Zhang et al., "Self-Attention Generative Adversarial Networks" (SAGAN), 2019.

Imports only torch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SAGAN_REDUCTION = 8
"""SAGAN projects queries and keys to C/8 channels (§4) to make the N×N attention map cheap."""


class SelfAttention2d(nn.Module):
    """out = x + γ · (V · softmax(QᵀK)ᵀ), attention over the H·W positions, γ learnable, γ=0 at init.

    Q and K are 1×1 convs to `channels // reduction` channels, V a 1×1 conv to `channels`. SAGAN
    initialises γ at 0 so the block starts as the identity and the network learns to lean on non-local
    evidence gradually. Note that while γ = 0 the Q/K/V convs get zero gradient; γ itself does not.

    `scaled` (default True, the seed): divide the logits by sqrt(channels) before the softmax — the
    seed says it scales "by the input channel count"; SAGAN itself does not scale (`scaled=False`).
    Memory is O(B·N²) for N = H·W positions, which is why the 5-layer CNN attends after a max-pool.
    """

    def __init__(self, channels: int, reduction: int = SAGAN_REDUCTION, scaled: bool = True) -> None:
        super().__init__()
        inner = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.scale = 1 / math.sqrt(channels) if scaled else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2)  # (B, C/r, N)
        k = self.key(x).flatten(2)  # (B, C/r, N)
        v = self.value(x).flatten(2)  # (B, C, N)
        attn = (torch.bmm(q.transpose(1, 2), k) * self.scale).softmax(dim=-1)  # (B, N, N): query × key
        out = torch.bmm(v, attn.transpose(1, 2)).view(b, c, h, w)  # out[:, :, i] = Σ_j attn[i, j] v[:, :, j]
        return x + self.gamma * out
