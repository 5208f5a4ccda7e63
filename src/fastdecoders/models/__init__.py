"""Decoder architectures, by name. A new family is a new file plus one line here."""

from __future__ import annotations

from fastdecoders.models.base import Decoder, DecoderOutput
from fastdecoders.models.effvit import EffViTDecoder
from fastdecoders.models.tae import TAEConfig, TAEDecoder, TAEEncoder, TAEEncoderConfig
from fastdecoders.models.taehv import TAEHVDecoder
from fastdecoders.models.teachers import DiffusersVAEDecoder  # original VAEs (teachers) and pruned ones
from fastdecoders.models.temporal import TemporalTAEDecoder

ARCHITECTURES: dict[str, type[Decoder]] = {
    cls.arch: cls
    for cls in (TAEDecoder, EffViTDecoder, TemporalTAEDecoder, TAEHVDecoder, DiffusersVAEDecoder)
}

__all__ = ["ARCHITECTURES", "Decoder", "DecoderOutput", "TAEConfig", "TAEDecoder", "TAEEncoder", "TAEEncoderConfig"]
