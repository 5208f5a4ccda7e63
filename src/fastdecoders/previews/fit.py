"""Fit a linear preview for a VAE from photos: encode, decode with the real decoder, regress latents onto its output.

The target is the real decoder's image at the latent resolution: its output (clamped to [-1, 1]) area-averaged over
each ``f × f`` cell (``f`` = the family's spatial factor). A preview is judged against what the user would see after
the full decode, so that — not the photo — is what it should reproduce; the photo would also charge the preview for
the VAE's own reconstruction error, which no per-cell linear map can undo.
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fastdecoders.errors import FastDecodersError
from fastdecoders.eval.metrics import psnr
from fastdecoders.io import center_crop_resize, list_images, read_image
from fastdecoders.latents import LatentSpace, get_latent_space, to_01, to_pm1
from fastdecoders.models.diffusers_vae import DiffusersVAEDecoder, vae_folder, vae_latent_spaces
from fastdecoders.previews.linear import LinearPreview, fit_linear
from fastdecoders.weights import load_decoder, load_encoder


@dataclass
class Codec:
    """An encoder/decoder pair on one latent space: ``encode`` (B, 3, H, W) in [-1, 1] -> diffusion-space latents;
    ``decode`` latents -> (B, 3, H, W) in [-1, 1]."""

    name: str
    space: LatentSpace
    encode: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    encoder_name: str


def resolve_codec(vae: str, latents: str | None = None, weights_dir: str | os.PathLike | None = None) -> Codec:
    """``vae``: a diffusers image-VAE folder (its own encoder and decoder), or a decoder name/path whose latent family
    has a tiny encoder here (``taesdxl``, a trained student's file …; encoded with that family's TAE encoder)."""
    if Path(vae).exists() and vae_folder(vae) is not None:
        return _diffusers_codec(vae, latents)

    decoder = load_decoder(vae, latents=latents, weights_dir=weights_dir)
    name = latents or getattr(decoder, "latent_space_name", None)
    if name is None:
        raise FastDecodersError(f"{vae} does not say which latent space it decodes; pass --latents")
    space = get_latent_space(name)
    if space.is_video:
        raise FastDecodersError(f"linear previews are fitted on images; {space.name} is a video latent space")
    if space.tae_encoder is None:
        raise FastDecodersError(
            f"no tiny encoder for {space.name} latents here; pass the diffusers VAE folder (it has its encoder)"
        )
    encoder = load_encoder(space.tae_encoder, weights_dir=weights_dir)
    return Codec(str(vae), space, encoder, decoder, space.tae_encoder)


def _diffusers_codec(folder: str, latents: str | None) -> Codec:
    """A diffusers AutoencoderKL folder: its encoder's mode, normalised with the checkpoint's own scale/shift."""
    import json

    import diffusers


    found = vae_folder(folder)
    class_name = json.loads((found / "config.json").read_text()).get("_class_name")
    if class_name != "AutoencoderKL":
        raise FastDecodersError(f"preview fit takes an image AutoencoderKL folder, got a {class_name}")
    vae = diffusers.AutoencoderKL.from_pretrained(found).eval()
    spaces = vae_latent_spaces(vae)
    name = latents or (spaces[0].name if len(spaces) == 1 else None)
    if name is None:
        raise FastDecodersError(f"cannot tell which latent space {folder} makes; pass --latents")
    space = get_latent_space(name)
    scale, shift = vae.config.get("scaling_factor") or 1.0, vae.config.get("shift_factor") or 0.0
    # decode through the teacher wrapper with the checkpoint's own scale/shift (not the registry's)
    decoder = DiffusersVAEDecoder.from_diffusers(vae, name)
    decoder.raw_latents = lambda z: z / scale + shift

    def encode(images: torch.Tensor) -> torch.Tensor:
        return (vae.encode(images).latent_dist.mode() - shift) * scale

    return Codec(str(folder), space, encode, decoder, f"{folder} (its own encoder)")


@torch.no_grad()
def encode_pairs(codec: Codec, paths: Sequence[Path], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents (N, C, h, w), targets (N, 3, h, w) in [-1, 1]): photos centre-cropped to ``size``², encoded, decoded,
    the decoded image area-averaged to the latent resolution."""
    f = codec.space.spatial_factor
    zs, targets = [], []
    for path in paths:
        image = to_pm1(center_crop_resize(read_image(path), size, multiple=f))[None]
        z = codec.encode(image).float()
        decoded = codec.decode(z).float().clamp(-1, 1)
        zs.append(z)
        targets.append(F.avg_pool2d(decoded, f))
    return torch.cat(zs), torch.cat(targets)


def preview_psnr(preview: LinearPreview, latents: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean per-image PSNR (dB, [0, 1] range) of the preview against the decoder's latent-resolution output."""
    with torch.no_grad():
        return float(psnr(to_01(preview(latents)), to_01(targets)).mean())


def _count(paths: list[Path]) -> str:
    return f"{len(paths)} photo{'s' if len(paths) != 1 else ''}"


def split_images(paths: list[Path], every: int = 5) -> tuple[list[Path], list[Path]]:
    """(fit, held-out): every ``every``-th image is held out (deterministic; at least one of each when possible)."""
    held = paths[every - 1 :: every] if len(paths) >= every else paths[-1:] if len(paths) > 1 else []
    return [p for p in paths if p not in held], held


def fit_preview(
    vae: str,
    images: str | os.PathLike,
    *,
    eval_images: str | os.PathLike | None = None,
    latents: str | None = None,
    size: int = 256,
    max_images: int | None = None,
    weights_dir: str | os.PathLike | None = None,
) -> LinearPreview:
    """Fit a linear preview for ``vae`` (see ``resolve_codec``) on the photos in ``images``; report the PSNR on the fit
    photos and on held-out ones (``eval_images``, else every 5th photo of ``images``) in ``preview.fit``."""
    paths = list_images(images)[:max_images]
    if eval_images is not None:
        fit_paths, held_paths = paths, list_images(eval_images)
    else:
        fit_paths, held_paths = split_images(paths)
    codec = resolve_codec(vae, latents, weights_dir)
    z, target = encode_pairs(codec, fit_paths, size)
    weight, bias = fit_linear(z, target)
    preview = LinearPreview(weight, bias, codec.space.name, codec.space.spatial_factor)
    record = {
        "vae": codec.name,
        "encoder": codec.encoder_name,
        "images": f"{images} ({_count(fit_paths)})",
        "size": size,
        "target": f"decoder output clamped to [-1, 1], area-averaged over {codec.space.spatial_factor}x"
        f"{codec.space.spatial_factor} cells",
        "solver": "torch.linalg.lstsq, float64",
        "psnr_fit_db": round(preview_psnr(preview, z, target), 2),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, torch {torch.__version__}",
    }
    if held_paths:
        z_held, target_held = encode_pairs(codec, held_paths, size)
        record["heldout_images"] = f"{eval_images or images} ({_count(held_paths)})"
        record["psnr_heldout_db"] = round(preview_psnr(preview, z_held, target_held), 2)
    preview.fit = record
    return preview
