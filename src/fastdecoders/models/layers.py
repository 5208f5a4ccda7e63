"""The few layers shared by more than one decoder family."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

#: one step of a decoder's spatial path, in forward order: ("conv", radius) for a stride-1 'same'-padded conv at the
#: current resolution, ("up", k) for a nearest / pixel-shuffle x k upsampling. ``None`` instead of a list of ops means
#: the output depends on the whole input (global pooling, attention over all pixels, unknown modules).
SpatialOps = list[tuple[str, int]] | None


def conv3x3(n_in: int, n_out: int, bias: bool = True, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias, stride=stride)


class Clamp(nn.Module):
    """Soft clamp to (-3, 3): keeps out-of-range latents from blowing up the first convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class TAEBlock(nn.Module):
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


def receptive_radius(ops: Iterable[tuple[str, int]]) -> int:
    """Radius, in input (latent) pixels, of the region one output pixel depends on, for ops in forward order.

    Walks backwards from the output: a conv adds its radius, a x k upsampling maps radius R to ceil(R / k) (nearest
    and pixel shuffle send output pixel p to input p // k, and ``p // k`` spans at most ceil(R / k) across p ± R).
    """
    radius = 0
    for kind, value in reversed(list(ops)):
        if kind == "conv":
            radius += value
        elif kind == "up":
            radius = -(-radius // value)
        else:
            raise ValueError(f"unknown spatial op {kind!r}")
    return radius


def module_ops(module: nn.Module) -> SpatialOps:
    """The spatial ops (see ``SpatialOps``) of a module whose forward runs its parts in order; None if unbounded.

    Modules may describe themselves with a ``spatial_ops()`` method; pointwise layers add nothing; a residual block's
    branch counts once (its skip is 1x1). Unknown modules are unbounded, so tiling never wrongly claims exactness.
    """
    if hasattr(module, "spatial_ops"):
        return module.spatial_ops()
    if isinstance(module, (Clamp, nn.ReLU, nn.SiLU, nn.Identity, nn.Tanh, nn.Sigmoid)):
        return []
    if isinstance(module, nn.BatchNorm2d):
        return None if module.training else []  # training-mode statistics span the whole batch and map
    if isinstance(module, nn.Conv2d):
        k, d, pad, stride = module.kernel_size[0], module.dilation[0], module.padding, module.stride
        if module.kernel_size[0] != module.kernel_size[1] or stride != (1, 1) or pad != (d * (k - 1) // 2,) * 2:
            return None
        return [("conv", d * (k - 1) // 2)] if k > 1 else []
    if isinstance(module, nn.Upsample):
        scale = module.scale_factor
        if module.mode != "nearest" or scale is None or float(scale) != int(scale):
            return None
        return [("up", int(scale))]
    if isinstance(module, nn.PixelShuffle):
        return [("up", module.upscale_factor)]
    if isinstance(module, TAEBlock):
        if module.pool is not None:
            return None  # TAEF2's pooled GroupNorm normalises over the whole map
        return [("conv", receptive_radius(module_ops(module.conv) or []))]
    if isinstance(module, nn.Sequential):
        return sequence_ops(module)
    return None


def sequence_ops(modules: Iterable[nn.Module]) -> SpatialOps:
    """Concatenated ops of modules run one after another; None if any is unbounded."""
    ops: list[tuple[str, int]] = []
    for module in modules:
        part = module_ops(module)
        if part is None:
            return None
        ops += part
    return ops
