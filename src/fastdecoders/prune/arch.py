"""``vae-decoder``: the decoder half of a diffusers VAE (AutoencoderKL, AutoencoderKLWan, AutoencoderKLLTXVideo) as a
fastdecoders ``Decoder``, so that a pruned one is a normal registered architecture (saved, loaded, benchmarked).

The config is the diffusers class name plus its ``config`` dict (with the student's narrower widths) and the list of
operator swaps (``fastdecoders.prune.ops``) applied after building. The encoder is built by diffusers' constructor
and dropped at once: a decoder never uses it, and the config sizes it small (see ``diffusers_vae.student_config``).

``forward`` takes diffusion-space latents, maps them to the raw latent with the latent space's published numbers
(LTX: the checkpoint's ``latents_mean``/``latents_std`` buffers, as its pipeline does) and returns
``vae.decode(raw).sample``: RGB in [-1, 1], NCHW for images, NCTHW for video.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.models.base import Decoder

SUPPORTED_VAES = ("AutoencoderKL", "AutoencoderKLWan", "AutoencoderKLLTXVideo")
VIDEO_VAES = ("AutoencoderKLWan", "AutoencoderKLLTXVideo")


@dataclass(frozen=True)
class VAEDecoderConfig:
    #: diffusers class, one of ``SUPPORTED_VAES``.
    vae_class: str = "AutoencoderKL"
    #: keyword arguments of that class (``vae.config`` without private keys).
    vae_config: dict = field(default_factory=dict)
    #: operator swaps applied after building: (module path inside the VAE, kind), kinds in ``fastdecoders.prune.ops``.
    swaps: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if self.vae_class not in SUPPORTED_VAES:
            raise FastDecodersError(f"vae_class must be one of {', '.join(SUPPORTED_VAES)}, got {self.vae_class!r}")

    @property
    def latent_channels(self) -> int:
        default = {"AutoencoderKL": 4, "AutoencoderKLWan": 16, "AutoencoderKLLTXVideo": 128}[self.vae_class]
        return int(self.vae_config.get("z_dim", self.vae_config.get("latent_channels", default)))


def vae_kwargs(vae: nn.Module) -> dict[str, Any]:
    """The constructor arguments of a diffusers VAE (JSON-ready: tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(vae.config).items() if not k.startswith("_")}


class VAEDecoder(Decoder):
    """(B, C, h, w) or (B, C, t, h, w) diffusion-space latents -> RGB in [-1, 1] through a diffusers VAE's decoder."""

    arch = "vae-decoder"
    config_class = VAEDecoderConfig

    def __init__(self, config: VAEDecoderConfig, vae: nn.Module | None = None):
        super().__init__(config)
        if vae is None:
            import diffusers

            vae = getattr(diffusers, config.vae_class)(**config.vae_config)
            vae.encoder = None  # decoders never encode; drop its weights
            if getattr(vae, "quant_conv", None) is not None:
                vae.quant_conv = None
        self.vae = vae
        # NCTHW video VAEs: an instance attribute shadows the class default of 4
        self.latent_ndim = 5 if config.vae_class in VIDEO_VAES else 4
        if config.swaps:
            from fastdecoders.prune.ops import apply_swaps

            apply_swaps(self.vae, config.swaps)

    @classmethod
    def wrap(cls, vae: nn.Module, latent_space: str | None = None) -> VAEDecoder:
        """Wrap an existing diffusers VAE (shared, not copied; its encoder stays where it is)."""
        name = type(vae).__name__
        if name not in SUPPORTED_VAES:
            raise FastDecodersError(f"expected a diffusers {' / '.join(SUPPORTED_VAES)}, got {name}")
        decoder = cls(VAEDecoderConfig(name, vae_kwargs(vae)), vae=vae)
        decoder.latent_space_name = latent_space
        return decoder

    def raw_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Diffusion-space latents -> what ``vae.decode`` takes."""
        from fastdecoders.latents import get_latent_space

        name = getattr(self, "latent_space_name", None)
        if name is None:
            raise FastDecodersError("this vae-decoder does not know its latent space; set latent_space_name")
        space = get_latent_space(name)
        buffers = dict(self.vae.named_buffers(recurse=False))
        mean, std = buffers.get("latents_mean"), buffers.get("latents_std")
        if mean is not None and std is not None:  # LTX: the statistics live in the weights
            scale = float(self.config.vae_config.get("scaling_factor", 1.0))
            return space.to_raw(latents, mean=mean.tolist(), std=(std / scale).tolist())
        return space.to_raw(latents)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != self.latent_ndim:
            raise FastDecodersError(
                f"{self.config.vae_class} decoder takes {self.latent_ndim}-d latents, got shape {tuple(latents.shape)}"
            )
        return self.vae.decode(self.raw_latents(latents)).sample
