"""Calibration and evaluation inputs for pruning: latents of real photos (through the family's tiny encoder), latents
from a file, or random diffusion-space latents (enough for structure and speed checks of random-weight teachers)."""

from __future__ import annotations

import os

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.io import center_crop_resize, list_images, read_image, read_latents
from fastdecoders.latents import get_latent_space, to_pm1
from fastdecoders.progress import progress
from fastdecoders.weights import load_encoder


def load_photos(folder: str | os.PathLike, count: int | None, size: int, skip: int = 0) -> torch.Tensor:
    """(N, 3, size, size) in [0, 1]: photos ``skip .. skip+count`` of ``folder`` (sorted), resized, centre-cropped."""
    paths = list_images(folder)[skip:]
    paths = paths[:count] if count else paths
    if not paths:
        raise FastDecodersError(f"{folder} has no images after skipping {skip}")
    return torch.stack([center_crop_resize(read_image(p), size) for p in paths])


@torch.no_grad()
def encode_photos(
    images01: torch.Tensor, space_name: str, weights_dir=None, device="cpu", batch_size: int = 8
) -> torch.Tensor:
    """Diffusion-space latents of (N, 3, H, W) photos in [0, 1] by the latent space's tiny encoder."""
    space = get_latent_space(space_name)
    if space.tae_encoder is None:
        raise FastDecodersError(f"{space.name} has no tiny encoder here; pass --calib-latents (a latents file)")
    encoder = load_encoder(space.tae_encoder, weights_dir, device=device)
    batches = progress(images01.split(batch_size), desc="encode photos", unit="batch")
    chunks = [encoder(to_pm1(c.to(device))).cpu() for c in batches]
    return torch.cat(chunks)


def random_latents(
    decoder: nn.Module, count: int, height: int, width: int, frames: int = 3, seed: int = 0
) -> torch.Tensor:
    """N(0, 1) diffusion-space latents in ``decoder``'s input layout (NCHW, or NCTHW with ``frames`` latent frames)."""
    channels = decoder.latent_channels
    gen = torch.Generator().manual_seed(seed)
    if getattr(decoder, "latent_ndim", 4) == 5:
        return torch.randn(count, channels, frames, height, width, generator=gen)
    return torch.randn(count, channels, height, width, generator=gen)


def latents_file(path: str | os.PathLike, decoder: nn.Module) -> torch.Tensor:
    latents = read_latents(path)
    want = getattr(decoder, "latent_ndim", 4)
    if latents.ndim == want - 1:
        latents = latents[None]
    if latents.ndim != want or latents.shape[1] != decoder.latent_channels:
        raise FastDecodersError(
            f"{path}: expected {want}-d latents with {decoder.latent_channels} channels, got {tuple(latents.shape)}"
        )
    return latents.float()


def calibration_latents(
    teacher: nn.Module,
    *,
    latents_path: str | os.PathLike | None = None,
    photos: str | os.PathLike | None = None,
    count: int = 32,
    size: int = 256,
    frames: int = 3,
    weights_dir: str | os.PathLike | None = None,
    device: str = "cpu",
) -> tuple[torch.Tensor, str]:
    """(calibration latents in the teacher's layout, a one-line note saying what they are): a latents file, photos
    encoded by the family's tiny encoder (image teachers), or ``count`` random N(0, 1) latents of ``size`` pixels
    (video teachers: at most 8 clips of ``frames`` latent frames)."""
    if latents_path:
        return latents_file(latents_path, teacher), f"latents file {latents_path}"
    space = get_latent_space(teacher.latent_space_name)
    if photos:
        if getattr(teacher, "latent_ndim", 4) != 4:
            raise FastDecodersError("--calib photos calibrate image decoders; give video decoders --calib-latents")
        images = load_photos(photos, count, size)
        return encode_photos(images, space.name, weights_dir, device), f"{len(images)} photos of {photos} at {size}²"
    side = max(1, size // space.spatial_factor)
    count = min(count, 8) if getattr(teacher, "latent_ndim", 4) == 5 else count
    z = random_latents(teacher, count, side, side, frames)
    return z, f"{count} random N(0, 1) latents of {tuple(z.shape[1:])} (pass --calib for real-weight teachers)"
