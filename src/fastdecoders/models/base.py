"""The contract every fastdecoders decoder follows, so that registry, weights, CLI and integrations treat them alike.

A decoder is an ``nn.Module`` built from one frozen dataclass config. Its ``forward`` maps *diffusion-space* latents
(what the diffusion model produces, i.e. the VAE latent after the family's scale/shift or mean/std; see
``fastdecoders.latents``) to RGB in [-1, 1] (not clamped), like ``diffusers`` VAEs' ``decode(z).sample``.

Image decoders: (B, C, h, w) -> (B, 3, f·h, f·w).
Video decoders: (B, C, t, h, w) -> (B, 3, T, f·h, f·w) with T given by the latent space's frame arithmetic,
except ``TemporalTAEDecoder`` which, like SVD's decoder, takes (B·T, C, h, w) plus ``num_frames``. Callers use
``decode_latents`` (``fastdecoders.models.protocol``), which hides these differences.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from fastdecoders.models.protocol import DecoderOutput, LatentDecoder

__all__ = ["Decoder", "DecoderOutput", "config_from_dict", "config_to_dict"]


class Decoder(LatentDecoder):
    """Base class: subclasses set ``arch`` and ``config_class`` and build their layers from ``self.config``.

    How a decoder is called (``decode_latents``, ``tile_job``, ``receptive_field``) is ``LatentDecoder``'s protocol.
    """

    arch: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config: Any):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def config_dict(self) -> dict[str, Any]:
        return config_to_dict(self.config)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> Decoder:
        """Load a registry name, a weights file or folder, or a hub id (see ``fastdecoders.load_decoder``)."""
        from fastdecoders.weights import load_decoder

        decoder = load_decoder(name_or_path, **kwargs)
        if not isinstance(decoder, cls):
            raise TypeError(f"{name_or_path!r} holds a {type(decoder).__name__}, not a {cls.__name__}")
        return decoder

    def save_pretrained(self, path: str, **kwargs: Any) -> str:
        """Save as our safetensors format (config inside the file); returns the file written."""
        from fastdecoders.weights import save_decoder

        return save_decoder(self, path, **kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) dataclass config; tuples become lists."""
    return dataclasses.asdict(config)


def config_from_dict(config_class: type, values: dict[str, Any]) -> Any:
    """Inverse of ``config_to_dict``: lists go back to tuples for tuple-typed fields; unknown keys are an error."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        from fastdecoders.errors import FastDecodersError

        raise FastDecodersError(f"unknown {config_class.__name__} keys {unknown}; expected some of {sorted(fields)}")
    return config_class(**{k: _tuplify(v) for k, v in values.items()})


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value
