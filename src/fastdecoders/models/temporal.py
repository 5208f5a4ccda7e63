"""TAE-temporal: a TAE decoder with a temporal mid-block, decoding SVD-style batches of frames (B·T, C, h, w).

The TAE layers are exactly ``TAEDecoder``'s, under the same state-dict keys ("0.weight", "3.conv.0.weight", ...), so
a TAE decoder's weights (e.g. the upstream ``taesd_decoder.safetensors``) load into them with ``load_tae_weights``.
After the first stage (at latent resolution, where it is cheapest) sits ``TemporalMidBlock``: a spatial TAEBlock,
self-attention across the frames of each clip at every pixel, and a zero-initialised output projection, blended into
the frame-wise features with a learned mix factor like SVD's. At init the block is the identity, so the decoder is
exactly the frame-wise TAE decoder it was loaded from, and fine-tuning starts from there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.latents import frames_to_video, video_to_frames
from fastdecoders.models.base import Decoder
from fastdecoders.models.layers import SpatialOps, TAEBlock, module_ops, receptive_radius, sequence_ops
from fastdecoders.models.protocol import TileJob
from fastdecoders.models.tae import TAEConfig, TAEDecoder, _decoder_layers, _register_sequence
from fastdecoders.registry import DecoderSpec, register


@dataclass(frozen=True)
class TemporalTAEConfig:
    latent_channels: int = 4
    #: TAE stage widths and blocks, latent side first (see ``TAEConfig``); 192 is the seed paper's TAE-192.
    widths: tuple[int, ...] = (192, 192, 192, 192)
    blocks: tuple[int, ...] = (3, 3, 3, 1)
    #: channels per head of the temporal attention (widths[0] / this = heads).
    attention_head_dim: int = 64

    def __post_init__(self):
        if len(self.widths) != len(self.blocks):
            raise ValueError(f"widths {self.widths} and blocks {self.blocks} must name the same number of stages")
        if self.widths[0] % self.attention_head_dim:
            raise ValueError(f"widths[0]={self.widths[0]} is not a multiple of {self.attention_head_dim}")

    @property
    def tae_config(self) -> TAEConfig:
        return TAEConfig(latent_channels=self.latent_channels, widths=self.widths, blocks=self.blocks)

    @property
    def spatial_factor(self) -> int:
        return self.tae_config.spatial_factor


def frame_embedding(num_frames: int, channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(T, channels) sinusoidal embedding of frame indices 0..T-1 (computed, not stored: any T works)."""
    half = channels // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=device, dtype=torch.float32) / max(half, 1))
    angles = torch.arange(num_frames, device=device, dtype=torch.float32)[:, None] * freqs
    embedding = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(embedding, (0, channels - 2 * half)).to(dtype)


class TemporalMidBlock(nn.Module):
    """x + (1 − α)·proj(attend_over_frames(TAEBlock(x))), α = sigmoid(mix_factor); proj is zero at init.

    That is SVD's learned blend α·x + (1 − α)·(x + branch), written so that a zero branch returns x bit for bit.
    """

    def __init__(self, channels: int, head_dim: int):
        super().__init__()
        self.heads = channels // head_dim
        self.spatial = TAEBlock(channels, channels)
        self.norm = nn.LayerNorm(channels)
        self.frame_pos = nn.Linear(channels, channels)  # learned map of the sinusoidal frame index
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)  # identity at init: the decoder starts as the frame-wise TAE
        nn.init.zeros_(self.proj_out.bias)
        self.mix_factor = nn.Parameter(torch.zeros(()))

    def spatial_ops(self) -> SpatialOps:
        """The spatial TAEBlock; attention runs across frames at each pixel, so it adds no spatial extent."""
        return module_ops(self.spatial)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        bt, c, h, w = x.shape
        y = self.spatial(x)
        # one sequence of T tokens per clip and pixel: (B·T, C, h, w) -> (B·h·w, T, C)
        tokens = y.unflatten(0, (-1, num_frames)).permute(0, 3, 4, 1, 2).reshape(-1, num_frames, c)
        tokens = self.norm(tokens) + self.frame_pos(frame_embedding(num_frames, c, x.device, x.dtype))
        q, k, v = self.qkv(tokens).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)  # (B·h·w, heads, T, d)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, num_frames, c)
        branch = self.proj_out(attended).reshape(-1, h, w, num_frames, c).permute(0, 3, 4, 1, 2).reshape(bt, c, h, w)
        return x + (1 - torch.sigmoid(self.mix_factor)) * branch


class TemporalTAEDecoder(Decoder):
    """(B·T, C, h, w) diffusion-space latents + ``num_frames`` -> (B·T, 3, 8h, 8w) RGB in [-1, 1], like SVD's VAE."""

    arch = "tae-temporal"
    config_class = TemporalTAEConfig
    fp16_safe = True  # the TAE layers (fastdecoders.fast); its attention is softmax-normalised

    def __init__(self, config: TemporalTAEConfig):
        super().__init__(config)
        layers = _decoder_layers(config.tae_config)
        _register_sequence(self, layers)  # same keys as TAEDecoder, so TAE weights load as they are
        self.num_tae_layers = len(layers)
        # TAE layers are [Clamp, conv, ReLU, *stage-0 blocks, upsample, ...]: the mid-block goes after stage 0
        self.temporal_index = 3 + config.blocks[0]
        self.temporal = TemporalMidBlock(config.widths[0], config.attention_head_dim)

    def forward(self, latents: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Decode B clips of ``num_frames`` frames each, flattened clip by clip (frame index fastest), like SVD.

        Args:
            latents: (B·T, C, h, w) diffusion-space latents.
            num_frames: frames per clip, T; None treats the whole batch as one clip.

        Returns:
            (B·T, 3, 8h, 8w) RGB, about [-1, 1] (not clamped).
        """
        if latents.ndim != 4 or latents.shape[1] != self.config.latent_channels:
            raise FastDecodersError(
                f"{self.arch}: expected latents (B·T, {self.config.latent_channels}, h, w), got {tuple(latents.shape)}"
            )
        num_frames = latents.shape[0] if num_frames is None else num_frames
        if not isinstance(num_frames, int) or num_frames < 1 or latents.shape[0] % num_frames:
            raise FastDecodersError(
                f"{self.arch}: {latents.shape[0]} latent frames do not split into clips of num_frames={num_frames}"
            )
        x = latents
        for index in range(self.num_tae_layers):
            if index == self.temporal_index:
                x = self.temporal(x, num_frames)
            x = getattr(self, str(index))(x)
        return x.mul(2).sub(1)  # the TAE layers emit [0, 1]; diffusers' convention is [-1, 1]

    def tile_job(self, latents: torch.Tensor, num_frames: int | None = None) -> TileJob:
        """Frames mix once at latent size (``temporal_features``); the frame-wise rest (``render_frames``) is tiled."""
        finish = None
        if latents.ndim == 5:
            t = num_frames = latents.shape[2]
            latents, finish = video_to_frames(latents), (lambda out: frames_to_video(out, t))
        frames = latents.shape[0] if num_frames is None else num_frames
        with torch.no_grad():
            features = self.temporal_features(latents, frames)  # frames mix here, at latent size, once
        fixed = features.numel() * features.element_size()
        return TileJob("temporal", features, self.render_frames, self.render_receptive_field, 1, fixed, finish=finish)

    @property
    def receptive_field(self) -> int | None:
        """Spatial radius in latent pixels of the whole decoder (the temporal block spans all frames of a clip)."""
        layers = [getattr(self, str(i)) for i in range(self.num_tae_layers)]
        ops = sequence_ops([*layers[: self.temporal_index], self.temporal, *layers[self.temporal_index :]])
        return None if ops is None else receptive_radius(ops)

    @property
    def render_receptive_field(self) -> int | None:
        """Spatial radius, in pixels of the ``temporal_features`` map (latent size), of ``render_frames``."""
        ops = sequence_ops(getattr(self, str(i)) for i in range(self.temporal_index, self.num_tae_layers))
        return None if ops is None else receptive_radius(ops)

    def temporal_features(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        """The part of ``forward`` that mixes frames, at latent size: (B·T, C, h, w) -> (B·T, widths[0], h, w).

        ``render_frames(temporal_features(z, T))`` is ``forward(z, T)``; rendering is frame-wise, so it can run on
        any subset of frames (memory-bounded video decoding, ``fastdecoders.tiling``).
        """
        x = latents
        for index in range(self.temporal_index):
            x = getattr(self, str(index))(x)
        return self.temporal(x, num_frames)

    def render_frames(self, features: torch.Tensor) -> torch.Tensor:
        """Frame-wise rest of ``forward``: (N, widths[0], h, w) features -> (N, 3, 8h, 8w) RGB in about [-1, 1]."""
        x = features
        for index in range(self.temporal_index, self.num_tae_layers):
            x = getattr(self, str(index))(x)
        return x.mul(2).sub(1)

    def load_tae_weights(self, tae_state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a ``TAEDecoder`` state dict (or an upstream TAESD decoder file's) into the TAE layers.

        Keys map one to one; the temporal block keeps its (identity) initialisation. Every TAE key must be present.
        """
        tae_keys = {key for key in self.state_dict() if not key.startswith("temporal.")}
        missing, unexpected = sorted(tae_keys - set(tae_state_dict)), sorted(set(tae_state_dict) - tae_keys)
        if missing or unexpected:
            raise FastDecodersError(f"not a matching TAE state dict: missing {missing}, unexpected {unexpected}")
        try:
            self.load_state_dict(dict(tae_state_dict), strict=False)
        except RuntimeError as error:  # shape mismatch: a TAE of other widths or channels
            raise FastDecodersError(f"TAE weights do not fit {self.config}: {error}".replace("\n", " ")) from None

    @classmethod
    def from_tae(cls, tae: TAEDecoder, attention_head_dim: int = 64) -> TemporalTAEDecoder:
        """A temporal decoder that starts as exactly ``tae`` (same layout, its weights, identity mid-block)."""
        c = tae.config
        config = TemporalTAEConfig(c.latent_channels, c.widths, c.blocks, attention_head_dim)
        decoder = cls(config)
        decoder.load_tae_weights(tae.state_dict())
        return decoder


# -- registered variants --------------------------------------------------------------------------------------------


def _register_variants() -> None:
    register(DecoderSpec(
        "tae-temporal-svd", "tae-temporal", TemporalTAEConfig(), "svd",
        tiny=TemporalTAEConfig(widths=(12,) * 4, blocks=(1, 1, 1, 1), attention_head_dim=4),
        description="TAE-192 with a temporal attention mid-block for SVD; decode(z, num_frames=T)",
    ))  # fmt: skip


_register_variants()
