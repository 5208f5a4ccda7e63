"""TAE: the TAESD layout (3x3 conv + ReLU residual blocks, nearest x2 upsampling, soft clamp on the input).

State-dict keys are ``nn.Sequential`` indices and, for the default stage layout, identical to the upstream TAESD
files (``taesd_decoder.safetensors`` etc.), so those load without any remapping. Width 64 is TAESD; width 192 is
the seed paper's TAE-192.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastdecoders.models.base import Decoder
from fastdecoders.models.layers import Clamp, TAEBlock, conv3x3, module_ops, receptive_radius, sequence_ops
from fastdecoders.models.protocol import TileJob
from fastdecoders.registry import DecoderSpec, register


@dataclass(frozen=True)
class TAEConfig:
    latent_channels: int = 4
    #: channels per stage, latent side first; one x2 upsampling between consecutive stages (spatial factor 2**(n-1)).
    widths: tuple[int, ...] = (64, 64, 64, 64)
    #: residual blocks per stage.
    blocks: tuple[int, ...] = (3, 3, 3, 1)
    #: TAEF2's pooled-GroupNorm branch on the first stage's blocks.
    pool: bool = False
    pool_groups: int = 4

    def __post_init__(self):
        if len(self.widths) != len(self.blocks):
            raise ValueError(f"widths {self.widths} and blocks {self.blocks} must name the same number of stages")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.widths) - 1)


def _decoder_layers(cfg: TAEConfig) -> list[nn.Module]:
    w = cfg.widths
    layers: list[nn.Module] = [Clamp(), conv3x3(cfg.latent_channels, w[0]), nn.ReLU()]
    for stage, n_blocks in enumerate(cfg.blocks):
        if stage > 0:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv3x3(w[stage - 1], w[stage], bias=False)]
        pool = cfg.pool and stage == 0
        layers += [TAEBlock(w[stage], w[stage], pool=pool, pool_groups=cfg.pool_groups) for _ in range(n_blocks)]
    layers.append(conv3x3(w[-1], 3))
    return layers


class TAEDecoder(Decoder):
    """(B, C, h, w) diffusion-space latents -> (B, 3, f·h, f·w) RGB in [-1, 1] (f = 8 by default)."""

    arch = "tae"
    config_class = TAEConfig
    fp16_safe = True  # measured headroom >= 74x on saturated latents (fastdecoders.fast)

    def __init__(self, config: TAEConfig):
        super().__init__(config)
        # layers are registered by index, as in upstream's nn.Sequential, so upstream files load key for key
        _register_sequence(self, _decoder_layers(config))

    @property
    def receptive_field(self) -> int | None:
        """19 latent pixels for the TAESD layout; None with TAEF2's pooled-GroupNorm branch (global statistics)."""
        ops = sequence_ops(self.children())
        return None if ops is None else receptive_radius(ops)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.render(latents, 0)

    def render(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Layers ``start``.. on ``x``, then the output transform: the network emits [0, 1]; diffusers' is [-1, 1]."""
        for layer in list(self.children())[start:]:
            x = layer(x)
        return x.mul(2).sub(1)

    def tile_job(self, latents: torch.Tensor, num_frames: int | None = None) -> TileJob:
        """TAEF2's pooled GroupNorm normalises over the whole map, but only at latent size: those first layers run
        once on the whole latent (cheap) and the rest, spatially bounded again, is tiled exactly."""
        split = self._global_prefix() if self.receptive_field is None and latents.ndim == 4 else None
        if split is None:
            return super().tile_job(latents, num_frames)
        layers = list(self.children())
        with torch.no_grad():
            features = latents
            for layer in layers[:split]:
                features = layer(features)
        tail = receptive_radius(sequence_ops(layers[split:]))
        fixed = features.numel() * features.element_size()
        return TileJob("image", features, lambda x: self.render(x, split), tail, fixed_bytes=fixed)

    def _global_prefix(self) -> int | None:
        """With global layers (pooled GroupNorm) only at latent size: how many leading layers to run whole."""
        layers = list(self.children())
        unbounded = [i for i, layer in enumerate(layers) if module_ops(layer) is None]
        split = unbounded[-1] + 1
        if any(isinstance(layer, nn.Upsample) for layer in layers[:split]):
            return None
        if sequence_ops(layers[split:]) is None:
            return None
        return split


@dataclass(frozen=True)
class TAEEncoderConfig:
    latent_channels: int = 4
    widths: tuple[int, ...] = (64, 64, 64, 64)
    blocks: tuple[int, ...] = (1, 3, 3, 3)
    #: TAEF2's pooled-GroupNorm branch on the last stage's blocks.
    pool: bool = False
    pool_groups: int = 4


class TAEEncoder(nn.Module):
    """(B, 3, H, W) RGB in [-1, 1] -> (B, C, H/8, W/8) diffusion-space latents. Used to make latents of real photos."""

    def __init__(self, config: TAEEncoderConfig):
        super().__init__()
        self.config = config
        w = config.widths
        layers: list[nn.Module] = [conv3x3(3, w[0])]
        for stage, n_blocks in enumerate(config.blocks):
            if stage > 0:
                layers.append(conv3x3(w[stage - 1], w[stage], stride=2, bias=False))
            pool = config.pool and stage == len(config.blocks) - 1
            layers += [TAEBlock(w[stage], w[stage], pool=pool, pool_groups=config.pool_groups) for _ in range(n_blocks)]
        layers.append(conv3x3(w[-1], config.latent_channels))
        _register_sequence(self, layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.add(1).div(2)  # upstream encoders take [0, 1]
        for layer in self.children():
            x = layer(x)
        return x


def _register_sequence(module: nn.Module, layers: list[nn.Module]) -> None:
    for index, layer in enumerate(layers):
        module.add_module(str(index), layer)


# -- registered variants --------------------------------------------------------------------------------------------


def _register_variants() -> None:
    upstream = {  # name: (latent space, latent channels, TAEF2 pool branch, hub repo in AutoencoderTiny layout)
        "taesd": ("sd1", 4, False, "madebyollin/taesd"),
        "taesdxl": ("sdxl", 4, False, "madebyollin/taesdxl"),
        "taesd3": ("sd3", 16, False, "madebyollin/taesd3"),
        "taef1": ("flux1", 16, False, "madebyollin/taef1"),
        "taef2": ("flux2", 32, True, None),  # not in diffusers' AutoencoderTiny layout: pool branch
    }
    for name, (space, channels, pool, hub) in upstream.items():
        register(DecoderSpec(
            name, "tae", TAEConfig(latent_channels=channels, pool=pool), space,
            tiny=TAEConfig(latent_channels=channels, widths=(8, 8, 8, 8), blocks=(1, 1, 1, 1), pool=pool),
            description=f"TAESD-layout decoder, 64 ch, real upstream weights ({name}_decoder)",
            weights=f"{name}_decoder", hub_id=hub,
        ))  # fmt: skip
    for space, channels in (("sdxl", 4), ("flux2", 32), ("sd1", 4)):
        register(DecoderSpec(
            f"tae192-{space}", "tae", TAEConfig(latent_channels=channels, widths=(192,) * 4), space,
            tiny=TAEConfig(latent_channels=channels, widths=(12,) * 4, blocks=(1, 1, 1, 1)),
            description="the seed paper's TAE-192 (TAESD layout, 192 ch); train it with `fastdecoders train`",
        ))  # fmt: skip
    # made in this repository (weights/switch-taef2, docs/switch.md): TAEF2 pruned to half width and distilled on the
    # CPU, and the dynamic switch between it and TAEF2 (a composite: the file names both decoders)
    register(DecoderSpec(
        "taef2-pruned50", "tae", TAEConfig(latent_channels=32, widths=(32,) * 4, pool=True), "flux2",
        tiny=TAEConfig(latent_channels=32, widths=(8, 8, 8, 8), blocks=(1, 1, 1, 1), pool=True),
        description="TAEF2 pruned to half width, distilled 4400 CPU steps (92.4% of TAEF2's PSNR, 4x fewer FLOPs)",
        file="switch-taef2/student-step4400.safetensors",
    ))  # fmt: skip
    register(DecoderSpec(
        "switch-taef2", "switch", None, "flux2", tiny=None, file="switch-taef2/switch-taef2.safetensors",
        description="dynamic switch: taef2-pruned50, or taef2 where a tiny gate predicts it falls short",
    ))  # fmt: skip


_register_variants()
