"""Decoder architectures, by name. A new family is a new file plus one line here."""

from __future__ import annotations

from fastdecoders.models.base import Decoder, DecoderOutput
from fastdecoders.models.causal import CausalTAEDecoder
from fastdecoders.models.effvit import EffViTDecoder
from fastdecoders.models.tae import TAEConfig, TAEDecoder, TAEEncoder, TAEEncoderConfig
from fastdecoders.models.teachers import DiffusersVAEDecoder  # the original VAEs (teachers)
from fastdecoders.models.temporal import TemporalTAEDecoder
from fastdecoders.prune.arch import VAEDecoder  # pruned diffusers VAE decoders (fastdecoders prune)

ARCHITECTURES: dict[str, type[Decoder]] = {
    cls.arch: cls
    for cls in (TAEDecoder, EffViTDecoder, TemporalTAEDecoder, CausalTAEDecoder, VAEDecoder, DiffusersVAEDecoder)
}

__all__ = ["ARCHITECTURES", "Decoder", "DecoderOutput", "TAEConfig", "TAEDecoder", "TAEEncoder", "TAEEncoderConfig"]
