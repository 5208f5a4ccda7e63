"""A long clip to an MP4 with constant memory: a streaming video decoder's frames go to the video encoder as they come.

>>> decoder = fastdecoders.load_decoder("taew2_1")
>>> fastdecoders.video.write_stream(decoder, latents, "clip.mp4", fps=16)   # latents (1, 16, t, h, w), diffusion space

Peak memory is one latent chunk's activations plus the encoder's buffers, whatever the clip length; the pixels are
exactly the parallel ``decoder(latents)``'s (streaming equals parallel decoding, fp32 within 1e-5).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.io import write_video_frames
from fastdecoders.latents import ncthw_to_ntchw, to_01


def _check(decoder: torch.nn.Module, latents: torch.Tensor) -> None:
    if not hasattr(decoder, "stream"):
        name = getattr(decoder, "registry_name", None) or type(decoder).__name__
        raise FastDecodersError(f"{name} cannot stream (a causal video decoder such as taew2_1 can)")
    if not isinstance(latents, torch.Tensor) or latents.ndim != 5 or latents.shape[0] != 1:
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise FastDecodersError(f"streaming to a video needs one clip of NCTHW latents (1, C, t, h, w), got {shape}")
    decoder.check_latents(latents)
    decoder.pixel_frames(latents.shape[2])  # the family's frame rule, before anything is written


def stream_frames(decoder: torch.nn.Module, latents: torch.Tensor, chunk: int = 1) -> Iterator[torch.Tensor]:
    """Yield the (3, H, W) RGB frames in [0, 1] of one clip (1, C, t, h, w), decoding ``chunk`` latent frames at a
    time; every frame is yielded as soon as its latent frames are in."""
    _check(decoder, latents)
    if chunk < 1:
        raise FastDecodersError(f"chunk: expected >= 1 latent frames, got {chunk}")
    param = next(decoder.parameters())
    stream = decoder.stream(latent_frames=latents.shape[2])
    for t0 in range(0, latents.shape[2], chunk):
        piece = latents[:, :, t0 : t0 + chunk].to(param.device, param.dtype)
        yield from to_01(ncthw_to_ntchw(stream.push(piece))[0].float()).cpu().unbind(0)
    stream.flush()


def write_stream(
    decoder: torch.nn.Module,
    latents: torch.Tensor,
    path: str | os.PathLike,
    fps: float = 16.0,
    chunk: int = 1,
    crf: int = 18,
) -> dict:
    """Decode one clip of diffusion-space latents (1, C, t, h, w) straight into an H.264 MP4 (atomically: nothing is
    written on failure). Returns ``{"path", "frames"}``."""
    _check(decoder, latents)
    written, count = write_video_frames(stream_frames(decoder, latents, chunk), Path(path), fps, crf)
    return {"path": str(written), "frames": count}
