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

import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.models.fileformat import config_to_dict, load_file, save_decoder
from fastdecoders.models.protocol import DecoderOutput, LatentDecoder

__all__ = ["Decoder", "DecoderOutput"]


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
    def from_pretrained(
        cls, path: str | os.PathLike, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> Decoder:
        """A decoder saved by ``save_pretrained`` (our ``.safetensors``, or a folder holding ``model.safetensors``),
        in eval mode. Registry names, upstream files and hub ids: ``fastdecoders.load_decoder``."""
        if not Path(path).exists():  # a registry name or hub id: say where those load, not just "no such file"
            raise FastDecodersError(
                f"{cls.__name__}.from_pretrained reads a file or folder saved by save_pretrained and {str(path)!r} is "
                f"not one; registry names, upstream files and hub ids load with "
                f"fastdecoders.load_decoder({str(path)!r})"
            )
        classes = [cls, *_subclasses(cls)]
        decoder = load_file(path, {c.arch: c for c in classes if "arch" in vars(c)})
        return decoder.to(device=device, dtype=dtype).eval()

    def save_pretrained(self, path: str, **kwargs: Any) -> str:
        """Save as our safetensors format (config inside the file); returns the file written."""
        return save_decoder(self, path, **kwargs)


def _subclasses(cls: type) -> list[type]:
    return [s for sub in cls.__subclasses__() for s in (sub, *_subclasses(sub))]
