"""The decoder a prune starts from: a registry name or weights file, a diffusers VAE folder, or ``random:SPACE``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fastdecoders.prune.diffusers_vae import diffusers_folder_teacher, reference_teacher
from fastdecoders.weights import load_decoder


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
