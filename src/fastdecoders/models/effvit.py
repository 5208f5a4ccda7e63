"""EffViT: a DC-AE-style decoder (ResBlocks and EfficientViT blocks) for f8 image latents.

Stages are listed shallowest (pixel side) first, as DC-AE's ``width_list`` / ``depth_list``, and run deepest first.
Upsampling follows DC-AE's decoder exactly:

* a stage with blocks, other than the deepest, starts with a x2 upsampling from the channels before it;
* a stage with no blocks is skipped entirely: it neither upsamples nor holds layers;
* the output head upsamples x2 itself when the shallowest stage is empty (DC-AE's project-out up block).

So the shallowest stage always contributes one x2, and ``spatial_factor = 2 ** (1 + number of non-empty stages
strictly between the shallowest and the deepest)``. The seed paper's widths (128, 128, 128, 256, 256, 256) with
depths (0, 5, 10, 0, 0, 0) give x8: conv_in to 256 ch at latent size, stage 2 (x2, 10 ResBlocks at 128),
stage 1 (x2, 5 ResBlocks at 128), head (x2 to RGB).

An EfficientViT block is multi-scale ReLU linear attention followed by a GLU MBConv, each with a residual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.models.base import Decoder
from fastdecoders.models.layers import SpatialOps, conv3x3, module_ops, receptive_radius, sequence_ops
from fastdecoders.registry import DecoderSpec, register

NORMS = ("bn", "rms", "ln")
ACTS = {"relu": nn.ReLU, "silu": nn.SiLU}
BLOCK_TYPES = ("res", "evit")
UPSAMPLES = ("pixel_shuffle", "interpolate")


@dataclass(frozen=True)
class EffViTConfig:
    latent_channels: int = 4
    #: channels per stage, shallowest (pixel side) first, like DC-AE's width_list.
    widths: tuple[int, ...] = (128, 128, 128, 256, 256, 256)
    #: blocks per stage, shallowest first; an empty stage is skipped and does not upsample (see the module doc).
    depths: tuple[int, ...] = (0, 5, 10, 0, 0, 0)
    #: "res" (conv-norm-act-conv-norm) or "evit" (linear attention + GLU MBConv), per stage.
    block_types: tuple[str, ...] = ("res", "res", "res", "evit", "evit", "evit")
    #: "bn" (BatchNorm, fuses into convs at inference), "rms" or "ln" (RMS/LayerNorm over channels, per pixel).
    norm: str = "bn"
    act: str = "relu"
    #: "pixel_shuffle" (conv to 4x channels, then shuffle) or "interpolate" (nearest x2, then conv).
    upsample: str = "pixel_shuffle"
    #: DC-AE's parameter-free shortcuts around conv_in (channel repeat) and each up block (repeat + shuffle).
    shortcut: bool = True
    attention_head_dim: int = 32
    #: depthwise kernel sizes of the extra attention scales (aggregated q, k, v).
    qkv_scales: tuple[int, ...] = (5,)
    #: GLU MBConv hidden channels per block channel.
    mlp_ratio: float = 4.0

    def __post_init__(self):
        n = len(self.widths)
        if n < 2:
            raise ValueError(f"need at least 2 stages (the shallowest and the deepest), got widths {self.widths}")
        if not (len(self.depths) == len(self.block_types) == n):
            raise ValueError(f"widths, depths and block_types must name the same number of stages ({n})")
        for value, allowed in ((self.norm, NORMS), (self.act, tuple(ACTS)), (self.upsample, UPSAMPLES)):
            if value not in allowed:
                raise ValueError(f"{value!r} is not one of {allowed}")
        for width, depth, kind in zip(self.widths, self.depths, self.block_types, strict=True):
            if kind not in BLOCK_TYPES:
                raise ValueError(f"block type {kind!r} is not one of {BLOCK_TYPES}")
            if kind == "evit" and depth and width % self.attention_head_dim:
                raise ValueError(f"evit width {width} is not a multiple of head dim {self.attention_head_dim}")
        if self.shortcut and self.widths[-1] % self.latent_channels:
            raise ValueError(f"shortcut repeats latent channels: {self.widths[-1]} % {self.latent_channels} != 0")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (1 + sum(depth > 0 for depth in self.depths[1:-1]))


# -- layers ---------------------------------------------------------------------------------------------------------


class ChannelNorm(nn.Module):
    """RMSNorm or LayerNorm over the channels of each pixel of an NCHW map."""

    def __init__(self, channels: int, kind: str):
        super().__init__()
        self.norm = nn.RMSNorm(channels, eps=1e-5) if kind == "rms" else nn.LayerNorm(channels, eps=1e-5)

    def spatial_ops(self) -> SpatialOps:
        return []  # per pixel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


def make_norm(channels: int, kind: str) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "bn" else ChannelNorm(channels, kind)


class UpBlock(nn.Module):
    """x2 upsampling n_in -> n_out; with ``shortcut``, plus the input's channels repeated and pixel-shuffled."""

    def __init__(self, n_in: int, n_out: int, mode: str, shortcut: bool):
        super().__init__()
        self.mode = mode
        self.conv = conv3x3(n_in, n_out * 4 if mode == "pixel_shuffle" else n_out)
        self.repeats = 0
        if shortcut:
            if (4 * n_out) % n_in:
                raise ValueError(f"up-block shortcut needs 4·{n_out} to be a multiple of {n_in}")
            self.repeats = 4 * n_out // n_in

    def spatial_ops(self) -> SpatialOps:
        conv = module_ops(self.conv)
        if conv is None:
            return None
        return [*conv, ("up", 2)] if self.mode == "pixel_shuffle" else [("up", 2), *conv]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "pixel_shuffle":
            y = F.pixel_shuffle(self.conv(x), 2)
        else:
            y = self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        if self.repeats:
            y = y + F.pixel_shuffle(x.repeat_interleave(self.repeats, dim=1), 2)
        return y


class ResBlock(nn.Module):
    """x + norm(conv(act(norm(conv(x))))); convs have no bias since a norm follows each."""

    def __init__(self, channels: int, norm: str, act: str):
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(channels, channels, bias=False),
            make_norm(channels, norm),
            ACTS[act](),
            conv3x3(channels, channels, bias=False),
            make_norm(channels, norm),
        )

    def spatial_ops(self) -> SpatialOps:
        body = module_ops(self.body)
        return None if body is None else [("conv", receptive_radius(body))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class MultiScaleLinearAttention(nn.Module):
    """x + norm(proj(attention)): ReLU-kernel linear attention over all pixels, O(H·W) time and memory.

    q, k, v come from a 1x1 conv; each extra scale aggregates them with a depthwise k x k conv and a per-head
    grouped 1x1 conv, and adds as many heads again. Each head computes relu(q)·(Σ relu(k) vᵀ) / (relu(q)·Σ relu(k)).
    """

    #: the 1x1 conv followed directly by ``norm``: ``fastdecoders.fast.fold_batchnorm`` folds a BatchNorm into it
    conv_before_norm = "proj"

    def __init__(self, channels: int, head_dim: int, scales: tuple[int, ...], norm: str, eps: float = 1e-15):
        super().__init__()
        self.head_dim, self.eps = head_dim, eps
        heads = channels // head_dim
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.aggregate = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(3 * channels, 3 * channels, k, padding=k // 2, groups=3 * channels, bias=False),
                nn.Conv2d(3 * channels, 3 * channels, 1, groups=3 * heads, bias=False),
            )
            for k in scales
        )
        self.proj = nn.Conv2d(channels * (1 + len(scales)), channels, 1, bias=False)
        self.norm = make_norm(channels, norm)

    def spatial_ops(self) -> SpatialOps:
        return None  # attention over all pixels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        qkv = self.qkv(x)
        qkv = torch.cat([qkv, *(aggregate(qkv) for aggregate in self.aggregate)], dim=1)
        # each run of 3·head_dim channels is one head's [q, k, v] (the convs learn that order); fp32 because the
        # sums over all pixels overflow fp16/bf16 at large sizes
        q, k, v = qkv.float().reshape(b, -1, 3 * self.head_dim, h * w).chunk(3, dim=2)  # (B, heads, d, N) each
        q, k = F.relu(q), F.relu(k)
        kv = v @ k.transpose(-1, -2)  # (B, heads, d, d): Σ_n v_n k_nᵀ
        numerator = kv @ q  # (B, heads, d, N)
        denominator = k.sum(dim=-1, keepdim=True).transpose(-1, -2) @ q  # (B, heads, 1, N)
        out = (numerator / (denominator + self.eps)).to(x.dtype).reshape(b, -1, h, w)
        return x + self.norm(self.proj(out))


class GLUMBConv(nn.Module):
    """x + norm(project(a * act(gate))), where (a, gate) = depthwise3x3(act(expand(x))): the EViT block's FFN."""

    conv_before_norm = "project"  # see MultiScaleLinearAttention

    def __init__(self, channels: int, ratio: float, norm: str, act: str):
        super().__init__()
        hidden = int(channels * ratio)
        self.expand = nn.Conv2d(channels, 2 * hidden, 1)
        self.depthwise = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.project = nn.Conv2d(hidden, channels, 1, bias=False)
        self.norm = make_norm(channels, norm)
        self.act = ACTS[act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.depthwise(self.act(self.expand(x))).chunk(2, dim=1)
        return x + self.norm(self.project(a * self.act(gate)))


class EfficientViTBlock(nn.Sequential):
    def __init__(self, channels: int, cfg: EffViTConfig):
        super().__init__(
            MultiScaleLinearAttention(channels, cfg.attention_head_dim, cfg.qkv_scales, cfg.norm),
            GLUMBConv(channels, cfg.mlp_ratio, cfg.norm, cfg.act),
        )


# -- decoder --------------------------------------------------------------------------------------------------------


def _stage(cfg: EffViTConfig, index: int, n_in: int) -> nn.Sequential:
    """Stage ``index`` (0 = shallowest): an up block unless it is the deepest, then its blocks."""
    width = cfg.widths[index]
    layers: list[nn.Module] = []
    if index < len(cfg.widths) - 1:
        layers.append(UpBlock(n_in, width, cfg.upsample, cfg.shortcut))
    for _ in range(cfg.depths[index]):
        block = ResBlock(width, cfg.norm, cfg.act) if cfg.block_types[index] == "res" else EfficientViTBlock(width, cfg)
        layers.append(block)
    return nn.Sequential(*layers)


class EffViTDecoder(Decoder):
    """(B, C, h, w) diffusion-space latents -> (B, 3, f·h, f·w) RGB in [-1, 1] (f = 8 for the seed config)."""

    arch = "effvit"
    config_class = EffViTConfig
    fp16_safe = True  # its only wide sums, the linear attention's, run in float32 (fastdecoders.fast)

    def __init__(self, config: EffViTConfig):
        super().__init__(config)
        cfg = config
        self.conv_in = conv3x3(cfg.latent_channels, cfg.widths[-1])
        self.in_repeats = cfg.widths[-1] // cfg.latent_channels if cfg.shortcut else 0
        # stages run deepest first; keys are the stage's index in ``widths`` so configs map onto names directly
        self.stages = nn.ModuleDict()
        channels = cfg.widths[-1]
        for index in reversed(range(len(cfg.widths))):
            if cfg.depths[index]:
                self.stages[str(index)] = _stage(cfg, index, channels)
                channels = cfg.widths[index]
        self.norm_out = make_norm(channels, cfg.norm)
        self.act_out = ACTS[cfg.act]()
        # the shallowest stage always contributes one x2: on entry if it has blocks, else here (DC-AE's rule)
        self.conv_out = conv3x3(channels, 3) if cfg.depths[0] else UpBlock(channels, 3, cfg.upsample, shortcut=False)

    @property
    def receptive_field(self) -> int | None:
        """Latent pixels for ResBlock-only configs in eval mode; None with attention (or training-mode BatchNorm)."""
        ops = sequence_ops([self.conv_in, *self.stages.values(), self.norm_out, self.act_out, self.conv_out])
        return None if ops is None else receptive_radius(ops)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) diffusion-space latents -> (B, 3, f·h, f·w) RGB, about [-1, 1] (not clamped)."""
        if latents.ndim != 4 or latents.shape[1] != self.config.latent_channels:
            raise FastDecodersError(
                f"{self.arch}: expected latents (B, {self.config.latent_channels}, h, w), got {tuple(latents.shape)}"
            )
        x = self.conv_in(latents)
        if self.in_repeats:
            x = x + latents.repeat_interleave(self.in_repeats, dim=1)
        for stage in self.stages.values():
            x = stage(x)
        return self.conv_out(self.act_out(self.norm_out(x)))


# -- registered variants --------------------------------------------------------------------------------------------


def _register_variants() -> None:
    tiny = {"widths": (8, 8, 8, 16, 16, 16), "attention_head_dim": 8, "mlp_ratio": 2.0}
    register(DecoderSpec(
        "effvit-sdxl", "effvit", EffViTConfig(), "sdxl",
        tiny=EffViTConfig(depths=(0, 1, 1, 0, 0, 0), **tiny),
        description="the seed paper's EfficientViT/DC-AE-block decoder: ResBlocks at 128 ch, BatchNorm, ReLU, f8",
    ))  # fmt: skip
    register(DecoderSpec(
        "effvit-attn-sdxl", "effvit", EffViTConfig(depths=(0, 5, 10, 0, 0, 2)), "sdxl",
        tiny=EffViTConfig(depths=(0, 1, 1, 0, 0, 1), **tiny),
        description="effvit-sdxl plus 2 EfficientViT (linear attention) blocks at latent size, 256 ch, f8",
    ))  # fmt: skip


_register_variants()
