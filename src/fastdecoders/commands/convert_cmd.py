"""``fastdecoders convert SOURCE -o OUT [--to diffusers]``: any loadable decoder to our safetensors (config inside)
or to a diffusers ``AutoencoderTiny`` folder."""

from __future__ import annotations

import argparse

from fastdecoders.commands import add_weights_dir
from fastdecoders.errors import FastDecodersError
from fastdecoders.latents import get_latent_space
from fastdecoders.models.fileformat import save_decoder
from fastdecoders.weights import find_weights, load_decoder, load_encoder, save_diffusers_tiny


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="registry name, weights file/folder, or hub id")
    parser.add_argument("-o", "--out", required=True, help="output .safetensors file or folder")
    parser.add_argument("--to", choices=["fastdecoders", "diffusers"], default="fastdecoders",
                        help="fastdecoders: one .safetensors with the config inside; diffusers: an AutoencoderTiny "
                        "folder (TAE decoders only)")  # fmt: skip
    parser.add_argument("--latents-space", dest="space", default=None, help="latent space, if the source lacks it")
    parser.add_argument("--overwrite", action="store_true", help="--to diffusers: replace an existing non-empty "
                        "output folder (otherwise refused; the folder is only swapped once the new one is complete)")
    add_weights_dir(parser)


def run(args: argparse.Namespace) -> dict:
    decoder = load_decoder(args.source, latents=args.space, weights_dir=args.weights_dir)
    if args.to == "fastdecoders":
        return {"source": args.source, "format": "fastdecoders", "out": save_decoder(decoder, args.out)}
    if decoder.arch != "tae":
        raise FastDecodersError(f"only TAE decoders convert to diffusers AutoencoderTiny; {args.source} is "
                                f"{decoder.arch}")  # fmt: skip
    stem = get_latent_space(decoder.latent_space_name).tae_encoder
    # diffusers' AutoencoderTiny always has an encoder: ship the matching real one when it is on the weights path
    encoder = load_encoder(stem, args.weights_dir) if stem and find_weights(stem, args.weights_dir) else None
    out = save_diffusers_tiny(decoder, args.out, encoder=encoder, overwrite=args.overwrite)
    return {"source": args.source, "format": "diffusers", "out": str(out), "encoder": stem if encoder else None}
