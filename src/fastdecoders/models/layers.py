"""The few layers shared by more than one decoder family."""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(n_in: int, n_out: int, bias: bool = True, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias, stride=stride)


class Clamp(nn.Module):
    """Soft clamp to (-3, 3): keeps out-of-range latents from blowing up the first convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class ResBlock(nn.Module):
    """TAESD's block: ReLU(conv-ReLU-conv-ReLU-conv(x) + skip(x)); optional pooled-GroupNorm branch (TAEF2).

    The pool branch adds a 1x1 conv -> GroupNorm -> ReLU -> 1x1 conv bottleneck to the input first: FLUX.2 latents
    needed this global normalisation for accurate distillation (see taesd's ``use_midblock_gn``).
    """

    def __init__(self, n_in: int, n_out: int, pool: bool = False, pool_groups: int = 4):
        super().__init__()
        self.conv = nn.Sequential(
            conv3x3(n_in, n_out), nn.ReLU(), conv3x3(n_out, n_out), nn.ReLU(), conv3x3(n_out, n_out)
        )
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()
        if pool:
            hidden = 4 * n_in
            self.pool = nn.Sequential(
                nn.Conv2d(n_in, hidden, 1, bias=False),
                nn.GroupNorm(pool_groups, hidden),
                nn.ReLU(),
                nn.Conv2d(hidden, n_in, 1, bias=False),
            )
        else:
            self.pool = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))
