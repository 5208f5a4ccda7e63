"""fastdecoders: fast, lightweight drop-in decoders for latent diffusion (images and video).

>>> import fastdecoders
>>> decoder = fastdecoders.load_decoder("taesdxl")          # registry name, local path or hub id
>>> images = decoder.decode(latents).sample                  # diffusion-space latents -> RGB in [-1, 1]
>>> images, report = fastdecoders.decode_tiled(decoder, latents)  # bounded memory (exact for TAE decoders)
>>> decoder = fastdecoders.optimize(decoder, backend="channels_last", dtype="float16")
>>> with fastdecoders.use(pipe, "taesdxl"): image = pipe(prompt_embeds=...).images[0]
"""

from fastdecoders.errors import FastDecodersError
from fastdecoders.fast import optimize
from fastdecoders.latents import LATENT_SPACES, LatentSpace, get_latent_space
from fastdecoders.models import Decoder, DecoderOutput, build_decoder
from fastdecoders.models.fileformat import save_decoder
from fastdecoders.registry import DecoderSpec, get_spec, list_decoders, register
from fastdecoders.tiling import TileReport, auto_tile, decode_tiled
from fastdecoders.weights import load_decoder, load_encoder

__version__ = "0.1.0"


def use(pipe, decoder, **kwargs):
    """Put a fast decoder into a diffusers pipeline (see ``fastdecoders.integrations.diffusers.use``)."""
    from fastdecoders.integrations.diffusers import use as _use

    return _use(pipe, decoder, **kwargs)


def switch(light, heavy, gate, threshold=None, **kwargs):
    """A light/heavy decoder pair routed per item by a gate (see ``fastdecoders.switching.api.switch``,
    docs/switch.md)."""
    from fastdecoders.switching.api import switch as _switch

    return _switch(light, heavy, gate, threshold, **kwargs)


def preview(pipe, decoder="linear", **kwargs):
    """Live previews while ``pipe`` samples: a ``callback_on_step_end`` (see ``fastdecoders.previews.preview``)."""
    from fastdecoders.previews import preview as _preview

    return _preview(pipe, decoder, **kwargs)


__all__ = [
    "LATENT_SPACES",
    "Decoder",
    "DecoderOutput",
    "DecoderSpec",
    "FastDecodersError",
    "LatentSpace",
    "TileReport",
    "auto_tile",
    "build_decoder",
    "decode_tiled",
    "get_latent_space",
    "get_spec",
    "list_decoders",
    "load_decoder",
    "load_encoder",
    "optimize",
    "preview",
    "register",
    "save_decoder",
    "switch",
    "use",
]
