"""TAE-causal: a causal video decoder built from memory blocks (TAEHV's idea, our own layout), with streaming.

Inside, a clip is (B, T, C, H, W) and every layer maps frames to frames so that each output frame depends only on the
current and earlier input frames:

* ``FrameWise``: convs, ReLU, nearest x2, pixel shuffle, applied to each frame;
* ``MemBlock``: a residual conv block over concat(frame t, frame t−1) of its own input (zeros before the first frame);
* ``TimeUpsample``: a 1x1 conv to 2C channels read as two frames, except for the clip's first frame, which keeps one.
  Applied per stage, t latent frames give 1 + k·(t − 1) pixel frames, as causal video VAEs (Wan, LTX, Hunyuan) decode.

Each temporal layer takes and returns a small state (its previous input frame, or whether the clip has started), so
one code path serves both modes: ``forward`` runs the whole clip through each layer at once (O(T) memory), and
``stream()`` runs it chunk by chunk carrying the states (constant memory). They agree to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.models.base import Decoder
from fastdecoders.models.layers import Clamp, SpatialOps, conv3x3, module_ops, receptive_radius, sequence_ops


@dataclass(frozen=True)
class CausalConfig:
    latent_channels: int = 16
    #: channels per stage, latent side first.
    widths: tuple[int, ...] = (256, 128, 64, 64)
    #: memory blocks per stage.
    blocks: tuple[int, ...] = (3, 3, 3, 1)
    #: per stage but the last: whether its output is upsampled x2 in time / in space on the way to the next stage.
    temporal_upscale: tuple[bool, ...] = (False, True, True)
    spatial_upscale: tuple[bool, ...] = (True, True, True)
    #: final pixel shuffle: the last conv emits 3·p² channels per pixel, so the spatial factor is multiplied by p.
    patch_size: int = 1

    def __post_init__(self):
        n = len(self.widths)
        if len(self.blocks) != n or len(self.temporal_upscale) != n - 1 or len(self.spatial_upscale) != n - 1:
            raise ValueError(
                f"need blocks per stage ({n}) and temporal/spatial upscale flags per stage transition ({n - 1})"
            )
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_upscale)

    @property
    def spatial_factor(self) -> int:
        return 2 ** sum(self.spatial_upscale) * self.patch_size

    def pixel_frames(self, latent_frames: int) -> int:
        return 1 + self.temporal_factor * (latent_frames - 1)


# -- layers: each maps (frames (B, T, C, H, W), state) -> (frames, new state) ---------------------------------------


class FrameWise(nn.Sequential):
    """Stateless per-frame layers, run on all frames of the chunk as one batch."""

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        return super().forward(x.flatten(0, 1)).unflatten(0, x.shape[:2]), state


class MemBlock(nn.Module):
    """ReLU(conv-ReLU-conv-ReLU-conv(concat(x_t, x_{t−1})) + x_t). State: the last input frame, or None at the start."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.conv = nn.Sequential(conv3x3(2 * c, c), nn.ReLU(), conv3x3(c, c), nn.ReLU(), conv3x3(c, c))
        self.act = nn.ReLU()

    def spatial_ops(self) -> SpatialOps:
        """One conv chain over (frame t, frame t−1) stacked as channels: spatially a plain residual branch."""
        return [("conv", receptive_radius(module_ops(self.conv) or []))]

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, c, h, w = x.shape
        # [x_t, x_{t-1}] as channels, written once into one buffer (no intermediate shifted copy)
        pair = x.new_empty(b, t, 2 * c, h, w)
        pair[:, :, :c] = x
        pair[:, 0, c:] = 0 if previous is None else previous
        pair[:, 1:, c:] = x[:, :-1]
        frames = x.flatten(0, 1)
        y = self.act(self.conv(pair.flatten(0, 1)) + frames)
        return y.unflatten(0, x.shape[:2]), x[:, -1].clone()  # clone: keep one frame, not the whole chunk


class TimeUpsample(nn.Module):
    """x2 frames: a 1x1 conv to 2C channels read as two consecutive frames. State: whether the clip has started."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 1)

    def spatial_ops(self) -> SpatialOps:
        return []  # 1x1 conv

    def forward(self, x: torch.Tensor, started: bool | None) -> tuple[torch.Tensor, bool]:
        b, t, c, h, w = x.shape
        y = self.conv(x.flatten(0, 1)).reshape(b, 2 * t, c, h, w)  # channels [:C] -> frame 2i, [C:] -> frame 2i+1
        if not started:
            y = y[:, 1:]  # the clip's first frame stays one frame (1 + k·(t − 1) arithmetic): keep its later half
        return y, True


def _layers(cfg: CausalConfig) -> list[nn.Module]:
    w = cfg.widths
    layers: list[nn.Module] = [FrameWise(Clamp(), conv3x3(cfg.latent_channels, w[0]), nn.ReLU())]
    for stage, n_blocks in enumerate(cfg.blocks):
        layers += [MemBlock(w[stage]) for _ in range(n_blocks)]
        if stage == len(w) - 1:
            break
        if cfg.temporal_upscale[stage]:
            layers.append(TimeUpsample(w[stage]))
        upsample = [nn.Upsample(scale_factor=2, mode="nearest")] if cfg.spatial_upscale[stage] else []
        layers.append(FrameWise(*upsample, conv3x3(w[stage], w[stage + 1], bias=False)))
    shuffle = [nn.PixelShuffle(cfg.patch_size)] if cfg.patch_size > 1 else []
    layers.append(FrameWise(conv3x3(w[-1], 3 * cfg.patch_size**2), *shuffle))
    return layers


# -- decoder --------------------------------------------------------------------------------------------------------


class CausalTAEDecoder(Decoder):
    """(B, C, t, h, w) diffusion-space latents -> (B, 3, 1 + k·(t − 1), f·h, f·w) RGB in [-1, 1]; causal in time."""

    arch = "tae-causal"
    config_class = CausalConfig
    latent_ndim = 5

    def __init__(self, config: CausalConfig):
        super().__init__(config)
        self.layers = nn.ModuleList(_layers(config))

    @property
    def receptive_field(self) -> int | None:
        """Spatial radius in latent pixels (every layer is causal in time and spatially local)."""
        ops = sequence_ops(self.layers)
        return None if ops is None else receptive_radius(ops)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode a whole clip, each layer on all frames at once (fast; activations are O(T) memory).

        Args:
            latents: (B, C, t, h, w) diffusion-space latents, NCTHW, t >= 1.

        Returns:
            (B, 3, T, f·h, f·w) RGB, about [-1, 1] (not clamped), T = 1 + k·(t − 1) (k = ``temporal_factor``).
            Pixel frame 0 comes from latent frame 0 alone; frames 1 + k·(j − 1) .. k·j from latent frames 0..j.
        """
        self.check_latents(latents)
        if latents.shape[2] < 1:
            raise FastDecodersError(f"{self.arch}: need at least 1 latent frame, got shape {tuple(latents.shape)}")
        return self.run(latents, self.initial_state())[0]

    def stream(self) -> StreamingDecoder:
        """A streaming decoder: push latent frames in chunks of any size, get their pixel frames back at once."""
        return StreamingDecoder(self)

    def initial_state(self) -> list[Any]:
        return [None] * len(self.layers)

    def run(self, latents: torch.Tensor, states: list[Any]) -> tuple[torch.Tensor, list[Any]]:
        """Decode the next chunk of a clip whose earlier chunks left ``states``: (pixels NCTHW, new states)."""
        b, _, t, h, w = latents.shape
        f = self.config.spatial_factor
        if t == 0:  # nothing to decode, and the states stay as they are
            return latents.new_empty(b, 3, 0, f * h, f * w), states
        x = latents.transpose(1, 2)  # NCTHW -> (B, T, C, H, W): frames next to the batch axis
        new_states = []
        for layer, state in zip(self.layers, states, strict=True):
            x, state = layer(x, state)
            new_states.append(state)
        return x.transpose(1, 2), new_states

    def check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 5 or latents.shape[1] != self.config.latent_channels:
            raise FastDecodersError(
                f"{self.arch}: expected NCTHW latents (B, {self.config.latent_channels}, t, h, w), "
                f"got {tuple(latents.shape)}"
            )


class StreamingDecoder:
    """Decodes a clip chunk by chunk with constant memory; get one with ``CausalTAEDecoder.stream()``.

    State is one frame per memory block and one flag per time upsampler, whatever the clip length. The decoder never
    looks ahead, so ``push`` returns every pixel frame its latent frames complete and ``flush`` has none left to
    add; concatenating all outputs along T equals ``decoder(whole_clip)`` (fp32: within 1e-5) however the clip is
    split. Runs under ``torch.no_grad``: with autograd the states would keep every earlier chunk's graph alive.
    """

    def __init__(self, decoder: CausalTAEDecoder):
        self.decoder = decoder
        self.states = decoder.initial_state()
        self._shape: tuple[int, ...] | None = None  # (B, C, h, w) of this clip's chunks
        self._empty: dict[str, Any] = {}  # dtype/device/shape of an empty output for flush

    @torch.no_grad()
    def push(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, t_chunk, h, w) next latent frames (any t_chunk >= 0) -> (B, 3, n, f·h, f·w) new pixel frames.

        n is 1 + k·(t_chunk − 1) for the clip's first non-empty chunk and k·t_chunk after it.
        """
        self.decoder.check_latents(latents)
        b, c, _, h, w = latents.shape
        if self._shape is not None and self._shape != (b, c, h, w):
            raise FastDecodersError(
                f"stream: a chunk of shape {tuple(latents.shape)} cannot continue a clip of (B, C, h, w) {self._shape}"
            )
        self._shape = (b, c, h, w)
        pixels, self.states = self.decoder.run(latents, self.states)
        self._empty = {"size": (b, 3, 0, *pixels.shape[3:]), "dtype": pixels.dtype, "device": pixels.device}
        return pixels

    def flush(self) -> torch.Tensor:
        """End the clip and reset, so the next ``push`` starts a new one; returns the frames still pending.

        There are none (shape (B, 3, 0, H, W)): causal layers decode every pushed frame at once.
        """
        pending = torch.empty(**self._empty) if self._empty else torch.empty(0, 3, 0, 0, 0)
        self.states, self._shape, self._empty = self.decoder.initial_state(), None, {}
        return pending


# -- registered variants --------------------------------------------------------------------------------------------


def _register_variants() -> None:
    from fastdecoders.latents import get_latent_space
    from fastdecoders.registry import DecoderSpec, register

    x4 = {"temporal_upscale": (False, True, True), "spatial_upscale": (True, True, True)}
    x8 = {"temporal_upscale": (True, True, True), "spatial_upscale": (True, True, True)}
    variants = {  # latent space: (channels, upscale flags, patch size) -> f8, f16 (patch 2), f32 (patch 4)
        "wan2.1": (16, x4, 1),
        "wan2.2": (48, x4, 2),
        "hunyuan-video": (16, x4, 1),
        "ltx-video": (128, x8, 4),
    }
    for space, (channels, upscale, patch) in variants.items():
        config = CausalConfig(latent_channels=channels, patch_size=patch, **upscale)
        tiny = CausalConfig(channels, widths=(8, 8, 8, 8), blocks=(1, 1, 1, 1), patch_size=patch, **upscale)
        latents = get_latent_space(space)
        if (config.temporal_factor, config.spatial_factor) != (latents.temporal_factor, latents.spatial_factor):
            raise ValueError(f"tae-causal-{space}: factors do not match the {space} latent space")
        register(DecoderSpec(
            f"tae-causal-{space}", "tae-causal", config, space, tiny=tiny,
            description=f"causal memory-block video decoder for {latents.description} latents; stream() for chunks",
        ))  # fmt: skip


_register_variants()
