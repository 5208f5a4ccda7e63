"""Decoder architectures, by name, and ``build_decoder`` (a registered name -> a randomly initialised decoder).

A new family is a new file (which registers its named variants at its bottom) plus one line here. Importing this
package imports every model file, so every named decoder is registered once it has run.
"""

from __future__ import annotations

from typing import Any

from fastdecoders.models.base import Decoder, DecoderOutput
from fastdecoders.models.diffusers_vae import DiffusersVAEDecoder  # original VAEs (teachers) and pruned ones
from fastdecoders.models.effvit import EffViTDecoder
from fastdecoders.models.tae import TAEConfig, TAEDecoder, TAEEncoder, TAEEncoderConfig
from fastdecoders.models.taehv import TAEHVDecoder
from fastdecoders.models.temporal import TemporalTAEDecoder
from fastdecoders.registry import DecoderSpec, get_spec

ARCHITECTURES: dict[str, type[Decoder]] = {
    cls.arch: cls
    for cls in (TAEDecoder, EffViTDecoder, TemporalTAEDecoder, TAEHVDecoder, DiffusersVAEDecoder)
}


def build_decoder(name_or_spec: str | DecoderSpec, tiny: bool = False, config: Any = None) -> Decoder:
    """A randomly initialised decoder of a registered name (its tiny test config with ``tiny=True``)."""
    spec = name_or_spec if isinstance(name_or_spec, DecoderSpec) else get_spec(name_or_spec)
    cls = ARCHITECTURES[spec.arch]
    decoder = cls(config if config is not None else (spec.tiny if tiny else spec.config))
    decoder.latent_space_name = spec.latents
    decoder.registry_name = spec.name
    return decoder


__all__ = [
    "ARCHITECTURES",
    "Decoder",
    "DecoderOutput",
    "TAEConfig",
    "TAEDecoder",
    "TAEEncoder",
    "TAEEncoderConfig",
    "build_decoder",
]
