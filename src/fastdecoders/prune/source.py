"""The decoder a prune starts from: a registry name or weights file, a diffusers VAE folder, or ``random:SPACE``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.models import build_decoder
from fastdecoders.models.diffusers_vae import PUBLISHED, DiffusersVAEDecoder, vae_from_folder
from fastdecoders.prune.diffusers_vae import PRUNABLE
from fastdecoders.weights import load_decoder

#: latent space -> the registered original VAE that ``random:SPACE`` builds (published config, random weights)
REFERENCE_VAES = {space: name for name, (space, vae_class, _) in PUBLISHED.items() if vae_class in PRUNABLE}


def load_source(
    spec: str,
    latents: str | None,
    weights_dir: str | os.PathLike | None,
    random_init: bool,
    device: str,
    dtype: torch.dtype,
) -> torch.nn.Module:
    """A teacher decoder from a registry name / weights path, a diffusers VAE folder, or ``random:SPACE``."""
    if spec.startswith("random:"):
        teacher = reference_teacher(spec[len("random:") :])
    elif (Path(spec) / "config.json").is_file() and not (Path(spec) / "model.safetensors").is_file():
        teacher = diffusers_folder_teacher(spec, latents)
    else:
        teacher = load_decoder(spec, latents=latents, weights_dir=weights_dir, pretrained=not random_init)
    return teacher.to(device=device, dtype=dtype).eval()


def reference_teacher(space: str) -> DiffusersVAEDecoder:
    """A ``diffusers-vae`` of ``space``'s published VAE config (the registered original VAE) with random weights
    (no encoder): for structure and speed checks."""
    if space not in REFERENCE_VAES:
        raise FastDecodersError(f"random:{space}: known families {', '.join(REFERENCE_VAES)}")
    decoder = build_decoder(REFERENCE_VAES[space])
    decoder.registry_name = f"random:{space}"
    return decoder


def diffusers_folder_teacher(folder: str, latent_space: str | None) -> DiffusersVAEDecoder:
    """A diffusers VAE folder (``config.json`` + weights, loaded strictly) as a teacher; its latent space from
    ``latent_space`` or, for Wan and LTX, from the class."""
    config = json.loads((Path(folder) / "config.json").read_text())
    cls = config.get("_class_name")
    if cls not in PRUNABLE:
        raise FastDecodersError(f"{folder}/config.json is a {cls}; expected one of {', '.join(PRUNABLE)}")
    guess = {"AutoencoderKLWan": "wan2.1" if config.get("z_dim", 16) == 16 else "wan2.2",
             "AutoencoderKLLTXVideo": "ltx-video"}.get(cls)  # fmt: skip
    space = latent_space or guess
    if space is None:
        raise FastDecodersError(f"{folder}: an AutoencoderKL serves several families; pass --latents (e.g. sdxl)")
    return DiffusersVAEDecoder.from_diffusers(vae_from_folder(cls, Path(folder)), space)
