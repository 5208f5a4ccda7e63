"""``fastdecoders preview fit``: fit a linear latent->RGB preview for a VAE from a folder of photos."""

from __future__ import annotations

import argparse
from typing import Any

from fastdecoders.errors import FastDecodersError
from fastdecoders.io import output_file
from fastdecoders.previews.fit import fit_preview


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    fit = actions.add_parser(
        "fit",
        help="fit a linear preview (1x1 conv + bias, least squares) for a VAE",
        description="Encode photos, decode them with the VAE's decoder, and fit latents -> the decoded image "
        "area-averaged to the latent resolution. Reports PSNR on the fit photos and on held-out ones.",
        formatter_class=parser.formatter_class,  # the CLI's: no '(default: None)'
    )
    fit.add_argument(
        "--vae",
        required=True,
        help="a diffusers AutoencoderKL folder, or a decoder name/path whose family has a tiny encoder here "
        "(taesd, taesdxl, taesd3, taef1, taef2, a trained student)",
    )
    fit.add_argument("--images", required=True, help="folder of photos to fit on")
    fit.add_argument(
        "--eval-images", help="held-out photos for the reported PSNR (when not given: every 5th of --images)"
    )
    fit.add_argument("-o", "--output", required=True, help="the linear-preview JSON file to write")
    fit.add_argument("--latents", help="latent space, when the VAE does not say (sd1, sdxl, ...)")
    fit.add_argument("--size", type=int, default=256, help="square centre-crop size of each photo (pixels)")
    fit.add_argument("--max-images", type=int, help="use only the first N photos (sorted)")
    fit.add_argument("--weights-dir", help="folder with upstream TAE weights (taesdxl_encoder.safetensors ...)")
    # cli.py puts --json before the action; accept it after too, without overwriting the earlier one
    fit.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.size < 16:
        raise FastDecodersError(f"--size: expected at least 16 pixels, got {args.size}")
    output = output_file(args.output, (".json",), "the linear preview")
    preview = fit_preview(
        args.vae,
        args.images,
        eval_images=args.eval_images,
        latents=args.latents,
        size=args.size,
        max_images=args.max_images,
        weights_dir=args.weights_dir,
    )
    path = preview.save(output)
    return {"output": str(path), "latents": preview.latent_space_name, "channels": preview.latent_channels,
            **preview.fit}  # fmt: skip


def render(result: dict[str, Any]) -> str:
    held = result.get("psnr_heldout_db")
    held_text = f", held-out {held:.2f} dB on {result['heldout_images']}" if held is not None else ""
    return (
        f"linear preview for {result['latents']} ({result['channels']} ch) -> {result['output']}\n"
        f"PSNR vs the decoder at latent resolution: fit {result['psnr_fit_db']:.2f} dB on {result['images']}"
        f"{held_text}"
    )
