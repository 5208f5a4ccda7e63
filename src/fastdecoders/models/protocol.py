"""The decode protocol: how any caller (eval, bench, tiling, the CLI, integrations) asks a decoder to decode.

Callers never inspect a decoder's type or ``forward`` signature; they call ``decode_latents`` with latents in one of
two shapes and the decoder answers for itself:

* frames ``(N, C, h, w)`` -> ``(N, 3, H, W)``; ``num_frames`` = frames per clip (frame index fastest, SVD's
  convention), None = all N frames are one clip. Image decoders ignore it (each frame alone).
* clips ``(B, C, t, h, w)`` (NCTHW) -> ``(B, 3, T, H, W)``; image decoders decode them frame by frame (T = t).

The defaults below are an image decoder's (``forward`` takes (N, C, h, w)). ``TemporalTAEDecoder`` (``forward``
takes frames + ``num_frames``), ``TAEHVDecoder`` (NCTHW clips, causal) and the diffusers-VAE decoder override them.
``tile_job`` is the one hook bounded-memory decoding (``fastdecoders.tiling``) asks for: what to cut into pieces and
the function turning one piece into RGB. Wrappers (runtime backends, tiled decoding, the switch) subclass
``LatentDecoder`` and follow the same protocol.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from fastdecoders.latents import frames_to_video, video_to_frames


@dataclass
class DecoderOutput:
    """Mirror of ``diffusers``' ``DecoderOutput``: ``sample`` is RGB in [-1, 1]."""

    sample: torch.Tensor


@dataclass
class TileJob:
    """What a bounded-memory decode cuts into pieces (spatially, along the batch, or along time for ``causal``).

    ``fn`` maps any spatial window / batch slice of ``inputs`` to RGB; ``finish`` maps the assembled output back to
    the shape ``decode_latents`` returns (e.g. frames -> clips).
    """

    kind: str  # "image" | "clips" | "temporal" | "causal" (reports and probe cache keys)
    inputs: torch.Tensor  # (N, C, h, w) or (N, C, t, h, w)
    fn: Callable[[torch.Tensor], torch.Tensor]
    radius: int | None  # receptive field of ``fn`` in pixels of ``inputs``; None: unbounded (blended tiles)
    batch_unit: int = 1  # batch chunks are multiples of this (frames of one clip for num_frames decoders)
    fixed_bytes: int = 0  # memory held throughout besides the output (features computed once)
    note: str = ""
    #: causal decoders: ``stream(latent_frames)`` -> an object with ``push(chunk) -> pixels`` and ``flush()``.
    stream: Callable[[int], Any] | None = None
    #: causal decoders: pixel frames made of a clip of t latent frames.
    pixel_frames: Callable[[int], int] | None = None
    finish: Callable[[torch.Tensor], torch.Tensor] | None = None


class LatentDecoder(nn.Module):
    """The protocol: ``decode_latents``, ``decodes_clips``, ``receptive_field``, ``tile_job`` and diffusers' ``decode``.

    Defaults are an image decoder's; subclasses that take clips or ``num_frames`` override ``decode_latents`` and
    ``tile_job``.
    """

    #: rank of the latents ``forward`` takes: 4 (N, C, h, w) or 5 (B, C, t, h, w). Reading an input file's shape
    #: (a 4-d clip without its batch axis) needs it; how to call the decoder never does (``decode_latents``).
    latent_ndim: ClassVar[int] = 4
    #: float16 activations ruled out to overflow (``fastdecoders.fast.optimize`` switches others to bfloat16).
    fp16_safe: ClassVar[bool] = False

    @classmethod
    def _forward_takes_num_frames(cls) -> bool:
        """Whether ``forward`` takes frames + ``num_frames`` (SVD's convention); read once, here, by the decoder."""
        if "_takes_num_frames" not in cls.__dict__:
            cls._takes_num_frames = "num_frames" in inspect.signature(cls.forward).parameters
        return cls.__dict__["_takes_num_frames"]

    @property
    def decodes_clips(self) -> bool:
        """Whether frames of one clip depend on each other (temporal attention, causal video, video VAEs)."""
        return self.latent_ndim == 5 or self._forward_takes_num_frames()

    @property
    def receptive_field(self) -> int | None:
        """Latent pixels each side of an output pixel's position that it depends on; None if unbounded or unknown.

        ``fastdecoders.tiling`` tiles exactly when this is known (overlap >= it), and blends tiles otherwise.
        """
        return None

    def decode_latents(self, latents: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Diffusion-space frames (N, C, h, w) or NCTHW clips (B, C, t, h, w) -> RGB in [-1, 1] of the same layout.

        Converts between the two forms and whichever ``forward`` takes (NCTHW clips, frames + ``num_frames``, or
        frames one by one: an image decoder decodes clips frame by frame).
        """
        if self.latent_ndim == 5:  # forward takes clips
            if latents.ndim == 4:
                return video_to_frames(self(frames_to_video(latents, num_frames or latents.shape[0])))
            return self(latents)
        if self._forward_takes_num_frames():  # forward takes frames + num_frames
            if latents.ndim == 5:
                t = latents.shape[2]
                return frames_to_video(self(video_to_frames(latents), num_frames=t), t)
            return self(latents, num_frames=num_frames)
        if latents.ndim == 5:  # an image decoder: frame by frame
            return frames_to_video(self(video_to_frames(latents)), latents.shape[2])
        return self(latents)

    def tile_job(self, latents: torch.Tensor, num_frames: int | None = None) -> TileJob:
        """The tiling hook: ``latents`` as ``decode_latents`` takes them -> the ``TileJob`` the tiler cuts up.

        Default: ``forward`` is spatially local or its receptive field is None (blended tiles); batch chunks hold
        whole clips where frames of a clip are decoded together.
        """
        radius = self.receptive_field
        note = "" if radius is not None else f"{type(self).__name__} has no bounded receptive field"
        if self.latent_ndim == 4 and self.decodes_clips:  # frames + num_frames (SVD-style)
            return frames_job(self, latents, num_frames, note)
        if latents.ndim == 5 and self.latent_ndim == 4:  # clips for a frame-wise decoder: tile its frames
            t = latents.shape[2]
            frames = video_to_frames(latents)
            return TileJob("image", frames, self, radius, note=note, finish=lambda out: frames_to_video(out, t))
        if latents.ndim == 4 and self.latent_ndim == 5:  # frames of clips for a clip decoder
            clips = frames_to_video(latents, num_frames or latents.shape[0])
            return TileJob("image", clips, self, radius, note=note, finish=video_to_frames)
        return TileJob("image", latents, self, radius, note=note)

    def decode(self, latents: torch.Tensor, return_dict: bool = True, **kwargs: Any) -> DecoderOutput | tuple:
        """diffusers-style entry point: ``decode(z).sample`` is RGB in [-1, 1] (``forward``'s own arguments)."""
        sample = self(latents, **kwargs)
        return DecoderOutput(sample) if return_dict else (sample,)


def frames_job(decoder: LatentDecoder, latents: torch.Tensor, num_frames: int | None, note: str = "") -> TileJob:
    """The ``TileJob`` of a decoder whose ``forward`` takes frames + ``num_frames`` (SVD-style): clips are flattened
    to frames, batch chunks hold whole clips."""
    finish = None
    if latents.ndim == 5:
        num_frames, finish = latents.shape[2], (lambda out, t=latents.shape[2]: frames_to_video(out, t))
        latents = video_to_frames(latents)
    n = latents.shape[0] if num_frames is None else num_frames
    return TileJob("clips", latents, lambda x: decoder(x, num_frames=n), decoder.receptive_field, n, note=note,
                   finish=finish)  # fmt: skip


def call_kind(decoder: LatentDecoder) -> str:
    """A decoder's kind, for reports and export metadata only (never to choose how to call it: ``decode_latents``):
    ``"video"`` (``forward`` takes NCTHW clips), ``"temporal"`` (frames of a clip decoded together) or ``"image"``."""
    if decoder.latent_ndim == 5:
        return "video"
    return "temporal" if decoder.decodes_clips else "image"
