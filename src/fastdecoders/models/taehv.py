"""TAEHV: the tiny causal video autoencoder layout of madebyollin/taehv (taehv, taew2_1, taecvx, taeltx_2, …).

Our implementation of that layout; its state-dict keys and shapes are the upstream files' (``encoder.{i}.*``,
``decoder.{i}.*``), so every published file (and LightX2V's LightTAE files, same layout) loads without remapping. It is
also the student layout ``fastdecoders train`` uses for video latents.

A clip is (B, T, C, H, W) inside. Every layer maps a chunk of frames plus a small state to output frames plus the new
state, and each output frame depends only on the current and earlier input frames:

* ``FrameMemory`` (upstream ``MemBlock``): a residual conv block over concat(frame t, frame t−1 of its own input);
  ``WideFrameMemory`` (the ``_super`` decoders' ``SuperMemBlock``): 7x7 depthwise + inverted bottleneck, no ReLU out.
  State: the last input frame (zeros before the first).
* ``TimeSplit`` (``TGrow``): a 1x1 conv to s·C channels read as s consecutive frames. Stateless.
* ``TimeFold`` (``TPool``): s consecutive frames stacked as channels, then a 1x1 conv. State: frames not yet folded.
* everything else (convs, ReLU, nearest x2, pixel shuffle, soft clamp) runs on each frame.

The decoder makes ``temporal_factor`` frames of every latent frame; which leading frames the original VAE does not
emit (3 of the first 4 for Wan, none for even CogVideoX clips, 3 per 5-latent unit for MiniMax H3) is the latent
space's rule (``LatentSpace.frames_dropped`` / ``frame_chunk`` in ``fastdecoders.latents``), applied here.

One code path serves both modes: ``forward`` runs the whole clip through each layer at once (O(T) memory) and
``stream()`` runs it chunk by chunk carrying the states, depth first below each time split (O(1) memory in T; peak
about one full-resolution frame of activations). Both agree to float rounding (fp32 <= 1e-5).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.latents import LatentSpace, frames_to_video, get_latent_space, video_to_frames
from fastdecoders.models.base import Decoder
from fastdecoders.models.layers import Clamp, SpatialOps, conv3x3, module_ops, receptive_radius, sequence_ops
from fastdecoders.models.protocol import LatentDecoder, TileJob
from fastdecoders.registry import DecoderSpec, register


@dataclass(frozen=True)
class TAEHVConfig:
    latent_channels: int = 16
    #: pixel (un)shuffle factor at the RGB end: 1 (f8), 2 (f16: taew2_2, taehv1_5, taeh3), 4 (f32: taeltx).
    patch_size: int = 1
    #: "base" (MemBlocks, nearest x2) or "super" (the ``_super`` files: wide memory blocks, pixel shuffle x2).
    variant: str = "base"
    #: decoder channels per stage, latent side first (upstream: base (256, 128, 64, 64), super (512, 256, 128, 64)).
    widths: tuple[int, ...] = (256, 128, 64, 64)
    #: per decoder stage transition: x2 in time (``TGrow`` stride 2) and x2 in space.
    temporal_upscale: tuple[bool, bool, bool] = (False, True, True)
    spatial_upscale: tuple[bool, bool, bool] = (True, True, True)
    #: whether the model holds the encoder (upstream files do; a training student may not).
    encoder: bool = True
    encoder_width: int = 64
    #: per encoder stage: /2 in time (``TPool`` stride 2).
    temporal_downscale: tuple[bool, bool, bool] = (True, True, False)
    #: memory blocks per stage (upstream: 3).
    blocks: int = 3

    def __post_init__(self):
        if self.variant not in ("base", "super"):
            raise ValueError(f"variant must be 'base' or 'super', got {self.variant!r}")
        if len(self.widths) != 4 or len(self.temporal_upscale) != 3 or len(self.spatial_upscale) != 3:
            raise ValueError("need 4 decoder widths and 3 temporal/spatial upscale flags")
        if len(self.temporal_downscale) != 3 or self.patch_size < 1 or self.blocks < 1:
            raise ValueError("need 3 temporal downscale flags, patch_size >= 1 and blocks >= 1")

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_upscale)

    @property
    def encoder_temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_downscale)

    @property
    def spatial_factor(self) -> int:
        return 2 ** sum(self.spatial_upscale) * self.patch_size


# -- layers: each maps (frames (B, T, C, H, W), state) -> (frames, new state) ---------------------------------------


class _Temporal(nn.Module):
    """Marker base: a layer that takes and returns a state."""


class FrameMemory(_Temporal):
    """ReLU(conv-ReLU-conv-ReLU-conv(concat(x_t, x_{t−1})) + x_t). State: the last input frame, or None at the start."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.conv = nn.Sequential(conv3x3(2 * c, c), nn.ReLU(), conv3x3(c, c), nn.ReLU(), conv3x3(c, c))

    def spatial_ops(self) -> SpatialOps:
        return [("conv", receptive_radius(module_ops(self.conv) or []))]

    def combine(self, pair: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(pair) + x)

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, c, h, w = x.shape
        # [x_t, x_{t-1}] as channels, written once into one buffer (no intermediate shifted copy)
        pair = x.new_empty(b, t, 2 * c, h, w)
        pair[:, :, :c] = x
        pair[:, 0, c:] = 0 if previous is None else previous
        pair[:, 1:, c:] = x[:, :-1]
        y = self.combine(pair.flatten(0, 1), x.flatten(0, 1))
        return y.unflatten(0, (b, t)), x[:, -1].clone()  # clone: keep one frame, not the whole chunk


class WideFrameMemory(FrameMemory):
    """The ``_super`` decoders' block: x_t + (7x7 depthwise -> 1x1 x2 -> ReLU -> 1x1)(concat(x_t, x_{t−1}))."""

    def __init__(self, channels: int):
        nn.Module.__init__(self)
        c = channels
        self.conv = nn.Sequential(
            nn.Conv2d(2 * c, 2 * c, 7, padding=3, groups=2 * c, bias=False),
            nn.Conv2d(2 * c, 4 * c, 1),
            nn.ReLU(),
            nn.Conv2d(4 * c, c, 1, bias=False),
        )

    def spatial_ops(self) -> SpatialOps:
        return [("conv", 3)]

    def combine(self, pair: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.conv(pair) + x


class TimeSplit(_Temporal):
    """x s frames: a 1x1 conv to s·C channels read as s consecutive frames (channel block i -> frame s·t + i)."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def spatial_ops(self) -> SpatialOps:
        return []

    def forward(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        b, t, c, h, w = x.shape
        return self.conv(x.flatten(0, 1)).reshape(b, t * self.stride, c, h, w), state


class TimeFold(_Temporal):
    """/ s frames: s consecutive frames stacked as channels (earliest first), then a 1x1 conv back to C channels.

    State: the frames of an incomplete group (fewer than s), waiting for the next chunk.
    """

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels * stride, channels, 1, bias=False)

    def spatial_ops(self) -> SpatialOps:
        return []

    def forward(self, x: torch.Tensor, pending: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if pending is not None:
            x = torch.cat([pending, x], 1)
        b, t, c, h, w = x.shape
        n = t - t % self.stride
        rest = x[:, n:].clone() if n < t else None
        groups = x[:, :n].reshape(b * n // self.stride, self.stride * c, h, w)
        return self.conv(groups).reshape(b, n // self.stride, c, h, w), rest


def per_frame(layers: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Stateless layers run on every frame of the chunk (B, T, C, H, W) as one batch."""
    y = x.flatten(0, 1)
    for layer in layers:
        y = layer(y)
    return y.unflatten(0, x.shape[:2])


# -- the layouts (index for index as upstream's nn.Sequential, so the keys match) -----------------------------------


def decoder_layers(cfg: TAEHVConfig) -> list[nn.Module]:
    w, n = cfg.widths, cfg.blocks
    layers: list[nn.Module] = []
    for stage in range(3):
        up, t_up = (2 if cfg.spatial_upscale[stage] else 1), (2 if cfg.temporal_upscale[stage] else 1)
        if cfg.variant == "super":
            if stage == 0:
                layers.append(nn.Conv2d(cfg.latent_channels, w[0], 1, bias=False))
            layers += [WideFrameMemory(w[stage]) for _ in range(n)]
            layers += [conv3x3(w[stage], w[stage + 1] * up**2), nn.ReLU(), nn.PixelShuffle(up)]
            layers.append(TimeSplit(w[stage + 1], t_up))
        else:
            if stage == 0:
                layers += [Clamp(), conv3x3(cfg.latent_channels, w[0]), nn.ReLU()]
            layers += [FrameMemory(w[stage]) for _ in range(n)]
            layers += [nn.Upsample(scale_factor=up), TimeSplit(w[stage], t_up), conv3x3(w[stage], w[stage + 1], False)]
    if cfg.variant == "base":
        layers.append(nn.ReLU())
    layers.append(conv3x3(w[3], 3 * cfg.patch_size**2))
    return layers


def encoder_layers(cfg: TAEHVConfig) -> list[nn.Module]:
    c = cfg.encoder_width
    layers: list[nn.Module] = [conv3x3(3 * cfg.patch_size**2, c), nn.ReLU()]
    for stage in range(3):
        layers += [TimeFold(c, 2 if cfg.temporal_downscale[stage] else 1), conv3x3(c, c, bias=False, stride=2)]
        layers += [FrameMemory(c) for _ in range(cfg.blocks)]
    layers.append(conv3x3(c, cfg.latent_channels))
    return layers


class _Layers(nn.ModuleList):
    """An upstream ``nn.Sequential`` by index (so the keys match), run as steps: each temporal layer, and each run of
    stateless layers between them as one per-frame batch."""

    @property
    def steps(self) -> list[_Temporal | list[nn.Module]]:
        """The layers grouped into steps, from the current children (so a swapped or patched module is the one run)."""
        steps: list[_Temporal | list[nn.Module]] = []
        for layer in self:
            if isinstance(layer, _Temporal):
                steps.append(layer)
            elif steps and isinstance(steps[-1], list):
                steps[-1].append(layer)
            else:
                steps.append([layer])
        return steps

    def initial_state(self) -> list[Any]:
        return [None] * len(self.steps)

    def run(self, x: torch.Tensor, states: list[Any], start: int = 0, depth_first: bool = False) -> torch.Tensor | None:
        """(B, T, C, H, W) frames from step ``start`` on, updating ``states`` in place; None if no frame came out.

        ``depth_first`` sends the frames a time split makes through the rest one at a time (streaming: bounded peak).
        """
        steps = self.steps
        for i in range(start, len(steps)):
            step = steps[i]
            if isinstance(step, list):
                x = per_frame(step, x)
            else:
                x, states[i] = step(x, states[i])
            if x.shape[1] == 0:
                return None
            if depth_first and x.shape[1] > 1 and i + 1 < len(steps) and isinstance(step, TimeSplit):
                outs = [self.run(x[:, j : j + 1], states, i + 1, True) for j in range(x.shape[1])]
                outs = [o for o in outs if o is not None]
                return torch.cat(outs, 1) if outs else None
        return x


# -- the model --------------------------------------------------------------------------------------------------------


class TAEHVDecoder(Decoder):
    """(B, C, t, h, w) diffusion-space latents -> (B, 3, T, f·h, f·w) RGB in [-1, 1] (unclamped); causal in time.

    T follows the latent space's frame rule (``LatentSpace.pixel_frames``; Wan: 1 + 4·(t − 1)). With the encoder
    (``config.encoder``), ``encode`` maps (B, 3, T, H, W) RGB in [-1, 1] to diffusion-space latents.
    """

    arch = "taehv"
    config_class = TAEHVConfig
    latent_ndim = 5

    def __init__(self, config: TAEHVConfig):
        super().__init__(config)
        if config.encoder:
            self.encoder = _Layers(encoder_layers(config))
        self.decoder = _Layers(decoder_layers(config))
        self.requires_grad_(True)

    def requires_grad_(self, requires_grad: bool = True) -> TAEHVDecoder:
        """As ``nn.Module``'s, except that the bundled encoder stays frozen: it serves ``encode`` only, training a
        decoder never updates it, and DDP must not wait for gradients it never gets."""
        super().requires_grad_(requires_grad)
        if self.config.encoder:
            self.encoder.requires_grad_(False)
        return self

    @property
    def has_encoder(self) -> bool:
        return self.config.encoder

    @property
    def receptive_field(self) -> int | None:
        """Spatial radius in latent pixels (every layer is causal in time and spatially local)."""
        ops = sequence_ops(self.decoder)
        return None if ops is None else receptive_radius(ops)

    @property
    def frame_space(self) -> LatentSpace | None:
        """The latent space whose frame rule applies (None: the plain causal rule, 1 + k·(t − 1))."""
        name = getattr(self, "latent_space_name", None)
        space = get_latent_space(name) if name else None
        if space is not None and space.is_causal and space.temporal_factor != self.config.temporal_factor:
            raise FastDecodersError(
                f"{self.arch}: this decoder makes {self.config.temporal_factor} frames per latent frame, but "
                f"{space.name} latents stand for {space.temporal_factor}"
            )
        return space

    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames this decoder makes of ``latent_frames`` (the latent space's rule)."""
        space = self.frame_space
        if space is None:
            return 1 + self.config.temporal_factor * (latent_frames - 1)
        return space.pixel_frames(latent_frames)

    def check_latents(self, latents: torch.Tensor) -> None:
        c = self.config.latent_channels
        if not isinstance(latents, torch.Tensor) or latents.ndim != 5 or latents.shape[1] != c:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise FastDecodersError(f"{self.arch}: expected NCTHW latents (B, {c}, t, h, w), got {shape}")

    # -- decoding ---------------------------------------------------------------------------------------------------

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode a whole clip, each layer on all frames at once (fast; activations are O(t) memory).

        Args:
            latents: (B, C, t, h, w) diffusion-space latents, NCTHW; t as the latent space allows.

        Returns:
            (B, 3, T, f·h, f·w) RGB, about [-1, 1] (not clamped), T = ``pixel_frames(t)`` of the latent space.
        """
        self.check_latents(latents)
        if latents.shape[2] < 1:
            raise FastDecodersError(f"{self.arch}: need at least 1 latent frame, got shape {tuple(latents.shape)}")
        gate = FrameGate(self, latents.shape[2])
        raw = self.decoder.run(latents.transpose(1, 2), self.decoder.initial_state())
        return gate.keep(raw).transpose(1, 2)

    def tile_job(self, latents: torch.Tensor, num_frames: int | None = None) -> TileJob:
        """Causal in time: the tiler pushes chunks of latent frames through ``stream`` (and may tile each spatially)."""
        finish = None
        if latents.ndim == 4:
            latents, finish = frames_to_video(latents, num_frames or latents.shape[0]), video_to_frames
        self.check_latents(latents)
        radius = self.receptive_field
        note = "" if radius is not None else f"{type(self).__name__} has no bounded receptive field"
        return TileJob("causal", latents, self, radius, note=note, stream=lambda t: self.stream(latent_frames=t),
                       pixel_frames=self.pixel_frames, finish=finish)  # fmt: skip

    def stream(self, latent_frames: int | None = None) -> VideoStream:
        """A streaming decoder: push latent frames in chunks of any size, get their pixel frames back at once.

        ``latent_frames`` (the whole clip's count) is needed only where the frame rule depends on it (CogVideoX).
        """
        return VideoStream(self, latent_frames)

    # -- encoding ---------------------------------------------------------------------------------------------------

    def encode(self, video: torch.Tensor, parallel: bool = True) -> torch.Tensor:
        """(B, 3, T, H, W) RGB in [-1, 1] -> (B, C, t, H/f, W/f) diffusion-space latents.

        T is padded at the end with copies of the last frame to whole groups of ``temporal_factor`` (Wan: 17 frames
        -> 5 latents), as upstream does. MiniMax H3 encodes units of 17 frames, each after 3 black frames, and drops
        the last 3 latents. ``parallel=False`` runs frame by frame (activations O(1) in T; same numbers).
        """
        if not self.config.encoder:
            raise FastDecodersError(f"{getattr(self, 'registry_name', None) or self.arch} was built without an encoder")
        p, f = self.config.patch_size, self.config.spatial_factor
        if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != 3:
            shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise FastDecodersError(f"{self.arch}.encode: expected RGB clips (B, 3, T, H, W) in [-1, 1], got {shape}")
        if video.shape[2] < 1 or video.shape[-2] % f or video.shape[-1] % f:
            raise FastDecodersError(
                f"{self.arch}.encode: need >= 1 frame and H, W multiples of {f}, got {tuple(video.shape)}"
            )
        x = video.transpose(1, 2).add(1).div(2)  # upstream encoders take [0, 1]
        space, k = self.frame_space, self.config.encoder_temporal_factor
        units = [x]
        if space is not None and space.frame_chunk:  # MiniMax H3: independent 17-frame units after black frames
            lead, size = k - 1, space.frame_chunk * k - (k - 1)
            x = _pad_end(x, size)
            zeros = x.new_zeros(x.shape[0], lead, *x.shape[2:])
            units = [torch.cat([zeros, u], 1) for u in x.split(size, 1)]
        out = [self._encode_unit(_pad_end(u, k), p, parallel) for u in units]
        z = torch.cat(out, 1)
        if space is not None and space.tail_latents:
            z = z[:, : -space.tail_latents]
        return z.transpose(1, 2)

    def _encode_unit(self, x: torch.Tensor, patch: int, parallel: bool) -> torch.Tensor:
        if patch > 1:
            x = F.pixel_unshuffle(x.flatten(0, 1), patch).unflatten(0, x.shape[:2])
        states = self.encoder.initial_state()
        if parallel:
            return self.encoder.run(x, states)
        out = [self.encoder.run(x[:, i : i + 1], states) for i in range(x.shape[1])]
        return torch.cat([o for o in out if o is not None], 1)

    @classmethod
    def fit_config(cls, config: TAEHVConfig, state: dict[str, torch.Tensor], source: str) -> TAEHVConfig:
        """``config`` with the encoder kept only if ``state`` (an upstream file) holds one; one error naming both
        variants when the file's shapes are another variant's (e.g. taew2_1's file under the name taew2_2)."""
        found = config_from_state_dict(state, source)
        expected = replace(config, encoder=found.encoder)
        if found != expected:
            raise FastDecodersError(f"{source} holds a TAEHV of {describe(found)}; expected {describe(expected)}")
        return expected


def describe(config: TAEHVConfig) -> str:
    """A one-line summary of the shape-relevant settings, for errors."""
    return (
        f"{config.latent_channels} latent channels, patch {config.patch_size}, {config.variant} decoder "
        f"{config.widths}, x{config.temporal_factor} in time"
    )


class StillImages(LatentDecoder):
    """A TAEHV model as an image decoder: (B, C, h, w) latents -> (B, 3, H, W) in [-1, 1], each a one-frame clip (the
    first latent frame of a clip decodes to exactly one frame). For photo round trips (``fastdecoders roundtrip``)."""

    latent_ndim = 4

    def __init__(self, model: TAEHVDecoder):
        super().__init__()
        self.model = model
        self.latent_space_name = getattr(model, "latent_space_name", None)
        self.registry_name = getattr(model, "registry_name", None)
        self.encoder = StillEncoder(model)

    @property
    def latent_channels(self) -> int:
        return self.model.latent_channels

    @property
    def receptive_field(self) -> int | None:
        return self.model.receptive_field

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 4:
            raise FastDecodersError(f"expected image latents (B, C, h, w), got {tuple(latents.shape)}")
        return self.model(latents[:, :, None])[:, :, 0]


class StillEncoder(nn.Module):
    """(B, 3, H, W) photos in [-1, 1] -> (B, C, h, w) latents with a TAEHV model's encoder (one-frame clips)."""

    def __init__(self, model: TAEHVDecoder):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode(images[:, :, None])[:, :, 0]


def _pad_end(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """(B, T, ...) padded at the end with copies of the last frame to a multiple of ``multiple`` frames."""
    n = -x.shape[1] % multiple
    return torch.cat([x, x[:, -1:].expand(-1, n, *x.shape[2:])], 1) if n else x


class FrameGate:
    """Counts a clip's decoded frames (``temporal_factor`` per latent frame) and lets through the ones the VAE emits:
    all but the first ``frames_dropped`` of each unit (the whole clip, or ``frame_chunk`` latent frames)."""

    def __init__(self, decoder: TAEHVDecoder, latent_frames: int | None):
        space = decoder.frame_space
        self.k = decoder.config.temporal_factor
        if space is None:
            self.drop, self.unit = self.k - 1, None
        else:
            if latent_frames is None and space.even_clips_uncut:
                raise FastDecodersError(
                    f"{space.name}: streaming needs the clip's latent frame count ({space.frame_rule()}); "
                    f"pass decoder.stream(latent_frames=t)"
                )
            if latent_frames is not None:
                space.check_latent_frames(latent_frames)
            self.drop = space.frames_dropped(latent_frames or 1)
            self.unit = space.frame_chunk * self.k if space.frame_chunk else None
        self.seen = 0  # raw frames counted so far

    def keep(self, raw: torch.Tensor | None) -> torch.Tensor | None:
        """(B, n, C, H, W) raw frames (the next n of the clip) -> the ones kept, or None for none."""
        if raw is None:
            return None
        index = torch.arange(self.seen, self.seen + raw.shape[1])
        self.seen += raw.shape[1]
        position = index % self.unit if self.unit else index
        kept = (position >= self.drop).nonzero().flatten()
        if kept.numel() == raw.shape[1]:
            return to_pm1_frames(raw)
        return to_pm1_frames(raw[:, kept.to(raw.device)]) if kept.numel() else None


def to_pm1_frames(raw: torch.Tensor) -> torch.Tensor:
    """The network's pre-shuffle output (B, n, 3·p², h, w) in about [0, 1] -> (B, n, 3, p·h, p·w) in [-1, 1]."""
    p = int(math.isqrt(raw.shape[2] // 3))
    if p > 1:
        raw = F.pixel_shuffle(raw.flatten(0, 1), p).unflatten(0, raw.shape[:2])
    return raw.mul(2).sub(1)


class VideoStream:
    """Decodes a clip chunk by chunk with constant memory; get one with ``TAEHVDecoder.stream()``.

    State is one frame per memory block whatever the clip length, and below each time split frames go through the
    rest of the decoder one at a time, so the peak is about one full-resolution frame of activations. The decoder
    never looks ahead: ``push`` returns every pixel frame its latent frames complete and ``flush`` has none left to
    add. Concatenating all outputs along T equals ``decoder(whole_clip)`` (fp32: within 1e-5) however the clip is
    split. Runs under ``torch.no_grad``: with autograd the states would keep every earlier chunk's graph alive.
    """

    def __init__(self, decoder: TAEHVDecoder, latent_frames: int | None = None):
        self.decoder = decoder
        self.latent_frames = latent_frames
        self._reset()

    def _reset(self) -> None:
        self.states = self.decoder.decoder.initial_state()
        self.gate = FrameGate(self.decoder, self.latent_frames)
        self._shape: tuple[int, ...] | None = None  # (B, C, h, w) of this clip's chunks
        self._pushed = 0

    def _empty(self, b: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        f = self.decoder.config.spatial_factor
        return like.new_empty(b, 3, 0, f * h, f * w)

    @torch.no_grad()
    def push(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, t_chunk, h, w) next latent frames (any t_chunk >= 0) -> (B, 3, n, f·h, f·w) new pixel frames."""
        self.decoder.check_latents(latents)
        b, c, t, h, w = latents.shape
        if self._shape is not None and self._shape != (b, c, h, w):
            raise FastDecodersError(
                f"stream: a chunk of shape {tuple(latents.shape)} cannot continue a clip of (B, C, h, w) {self._shape}"
            )
        self._shape = (b, c, h, w)
        self._pushed += t
        if self.latent_frames is not None and self._pushed > self.latent_frames:
            raise FastDecodersError(f"stream: {self._pushed} latent frames pushed into a clip of {self.latent_frames}")
        if t == 0:
            return self._empty(b, h, w, latents)
        raw = self.decoder.decoder.run(latents.transpose(1, 2), self.states, depth_first=True)
        pixels = self.gate.keep(raw)
        return self._empty(b, h, w, latents) if pixels is None else pixels.transpose(1, 2)

    def frames(self, latents: torch.Tensor, chunk: int = 1) -> Iterator[torch.Tensor]:
        """Push ``latents`` (B, C, t, h, w) ``chunk`` latent frames at a time; yield each (B, 3, H, W) pixel frame."""
        for t0 in range(0, latents.shape[2], chunk):
            yield from self.push(latents[:, :, t0 : t0 + chunk]).unbind(2)
        self.flush()

    def flush(self) -> torch.Tensor:
        """End the clip and reset, so the next ``push`` starts a new one; returns the frames still pending.

        There are none (shape (B, 3, 0, H, W)): causal layers decode every pushed frame at once.
        """
        if self.latent_frames is not None and self._pushed not in (0, self.latent_frames):
            raise FastDecodersError(f"stream: clip ended after {self._pushed} of {self.latent_frames} latent frames")
        b, _, h, w = self._shape or (0, 0, 0, 0)
        f = self.decoder.config.spatial_factor
        pending = torch.empty(b, 3, 0, f * h, f * w)
        self._reset()
        return pending


# -- reading a config from an upstream state dict ---------------------------------------------------------------------


def config_from_state_dict(state: dict[str, torch.Tensor], source: str = "state dict") -> TAEHVConfig:
    """The ``TAEHVConfig`` of an upstream-layout state dict, from its tensor shapes (never its file name)."""
    bad = f"{source} is not a TAEHV-layout state dict:"

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise FastDecodersError(f"{bad} no {key!r}")
        return tuple(state[key].shape)

    super_ = "decoder.0.weight" in state
    first = shape("decoder.0.weight" if super_ else "decoder.1.weight")
    # time splits / folds are the 1x1 convs held as '{i}.conv.weight' (memory blocks hold '{i}.conv.0.weight')
    splits = sorted(int(k.split(".")[1]) for k in state if k.startswith("decoder.") and k.endswith(".conv.weight"))
    if len(splits) != 3:
        raise FastDecodersError(f"{bad} {len(splits)} time-split layers, expected 3")
    grow = [shape(f"decoder.{i}.conv.weight") for i in splits]
    blocks = sum(1 for k in state if k.startswith("decoder.") and k.endswith(".conv.0.weight")) // 3
    last = max(int(k.split(".")[1]) for k in state if k.startswith("decoder."))
    out = shape(f"decoder.{last}.weight")[0]
    patch = math.isqrt(out // 3)
    if 3 * patch * patch != out:
        raise FastDecodersError(f"{bad} last conv has {out} outputs, expected 3·p²")
    if super_:
        widths = (first[0], *(g[1] for g in grow))
        up = tuple(shape(f"decoder.{i - 3}.weight")[0] != g[1] for i, g in zip(splits, grow, strict=True))
    else:
        widths = (first[0], *(g[1] for g in grow[1:]), shape(f"decoder.{last}.weight")[1])
        up = (True, True, True)  # nearest x2 has no weights; every published file upsamples at every stage
    encoder = any(k.startswith("encoder.") for k in state)
    folds = sorted(int(k.split(".")[1]) for k in state if k.startswith("encoder.") and k.endswith(".conv.weight"))
    if encoder and len(folds) != 3:
        raise FastDecodersError(f"{bad} {len(folds)} encoder time-fold layers, expected 3")
    down = tuple(shape(f"encoder.{i}.conv.weight")[1] != shape(f"encoder.{i}.conv.weight")[0] for i in folds)
    return TAEHVConfig(
        latent_channels=first[1],
        patch_size=patch,
        variant="super" if super_ else "base",
        widths=widths,
        temporal_upscale=tuple(g[0] != g[1] for g in grow),
        spatial_upscale=up,
        encoder=encoder,
        encoder_width=shape("encoder.0.weight")[0] if encoder else 64,
        temporal_downscale=down if encoder else (True, True, False),
        blocks=max(blocks, 1),
    )


def is_taehv_state_dict(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("decoder.") for k in state) and all(
        k.split(".")[0] in ("encoder", "decoder") and k.split(".")[1].isdigit() for k in state
    )


# -- registered variants --------------------------------------------------------------------------------------------

_X4 = {"temporal_upscale": (False, True, True), "temporal_downscale": (True, True, False)}
_X8 = {"temporal_upscale": (True, True, True), "temporal_downscale": (True, True, True)}
_SUPER = {"variant": "super", "widths": (512, 256, 128, 64)}

#: upstream file stem -> (latent space, config overrides). madebyollin/taehv's files; the same settings TAEHV derives
#: from each file name (taew2_2: 48 ch, patch 2; taehv1_5: 32 ch, patch 2; taeh3: 24 ch, patch 2; taeltx: 128 ch,
#: patch 4, x8 in time), here checked against the file's shapes when it loads.
PUBLISHED: dict[str, tuple[str, dict[str, Any]]] = {
    "taehv": ("hunyuan-video", {}),
    "taehv1_5": ("hunyuan-video-1.5", {"latent_channels": 32, "patch_size": 2}),
    "taehv1_5_super": ("hunyuan-video-1.5", {"latent_channels": 32, "patch_size": 2, **_SUPER}),
    "taew2_1": ("wan2.1", {}),
    "taew2_2": ("wan2.2", {"latent_channels": 48, "patch_size": 2}),
    "taew2_2_super": ("wan2.2", {"latent_channels": 48, "patch_size": 2, **_SUPER}),
    "taecvx": ("cogvideox", {}),
    "taeos1_3": ("opensora-1.3", {}),
    "taeltx_2": ("ltx-2", {"latent_channels": 128, "patch_size": 4, **_X8}),
    "taeltx2_3": ("ltx-2", {"latent_channels": 128, "patch_size": 4, **_X8}),
    "taeh3": ("minimax-h3", {"latent_channels": 24, "patch_size": 2}),
}

#: other registered names: a published file read as another family that shares its latents, and the student layout
#: for families without a published file (train these; they have no weights).
ALIASES: dict[str, tuple[str, str | None, dict[str, Any]]] = {  # name -> (latent space, weights stem, overrides)
    "taew2_1-qwen-image": ("qwen-image", "taew2_1", {}),
    "taehv-ltx-video": ("ltx-video", None, {"latent_channels": 128, "patch_size": 4, "encoder": False, **_X8}),
}


def _tiny(config: TAEHVConfig) -> TAEHVConfig:
    widths = (16, 8, 8, 8) if config.variant == "super" else (8, 8, 8, 8)
    return replace(config, widths=widths, encoder_width=8, blocks=1)


def _register_variants() -> None:
    entries = {stem: (space, stem, overrides) for stem, (space, overrides) in PUBLISHED.items()} | ALIASES
    for name, (space_name, stem, overrides) in entries.items():
        config = TAEHVConfig(**overrides)
        space = get_latent_space(space_name)
        if (config.temporal_factor, config.spatial_factor) != (space.temporal_factor, space.spatial_factor):
            raise ValueError(f"{name}: factors do not match the {space_name} latent space")
        what = f"upstream weights ({stem}.pth / .safetensors)" if stem else "no weights: a student to train"
        register(DecoderSpec(
            name, "taehv", config, space_name, tiny=_tiny(config), weights=stem,
            description=f"TAEHV-layout causal video decoder + encoder for {space.description}; {what}; streams",
        ))  # fmt: skip


_register_variants()
