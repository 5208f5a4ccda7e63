"""``fastdecoders roundtrip DECODER``: encode photos with the family's encoder, decode, compare, write a grid."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from fastdecoders.commands import add_device, add_weights_dir, format_table
from fastdecoders.commands.backend_args import add_backend_argument, apply_backend, describe
from fastdecoders.errors import FastDecodersError
from fastdecoders.eval.metrics import psnr, ssim
from fastdecoders.io import (
    IMAGE_SUFFIXES,
    center_crop_resize,
    crop_to_multiple,
    list_images,
    output_file,
    read_image,
    to_uint8,
    write_image,
)
from fastdecoders.latents import get_latent_space
from fastdecoders.models.taehv import StillImages
from fastdecoders.progress import progress
from fastdecoders.quality import roundtrip, sample_photo_paths
from fastdecoders.weights import load_decoder, load_encoder


# photos that ship inside scikit-image's wheel (public domain / CC0), so the verb runs on a fresh machine
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("decoder", help="registry name, weights file/folder, or hub id")
    parser.add_argument("--images", default=None, help="folder of photos (default: sample photos from scikit-image)")
    parser.add_argument("-o", "--out", default="roundtrip.png", help="grid PNG: a row per photo, original | decoded at "
                        "its aspect ratio, labelled with the PSNR")  # fmt: skip
    parser.add_argument("--size", type=int, default=None, help="resize+centre-crop photos to SIZE² (default: keep, "
                        "cropped to a multiple of the latent factor)")  # fmt: skip
    parser.add_argument("--limit", type=int, default=None, help="use at most this many photos")
    parser.add_argument("--latents-space", dest="space", default=None, help="latent space if the file lacks it")
    parser.add_argument("--max-memory-mb", type=float, default=None, help="memory budget: the decode tiles to fit it "
                        "like decode's --tile auto, a photo too large to encode in it is refused "
                        "(default: 80%% of free CUDA memory, 50%% of RAM)")  # fmt: skip
    add_weights_dir(parser)
    add_device(parser)
    add_backend_argument(parser)


def run(args: argparse.Namespace) -> dict:
    dtype = getattr(torch, args.dtype)
    output_file(args.out, IMAGE_SUFFIXES, "the grid image")  # before the (long) round trips
    if args.max_memory_mb is not None and not (math.isfinite(args.max_memory_mb) and args.max_memory_mb > 0):
        raise FastDecodersError(f"--max-memory-mb: expected a positive number, got {args.max_memory_mb}")
    budget = None if args.max_memory_mb is None else int(args.max_memory_mb * 2**20)
    decoder = load_decoder(args.decoder, latents=args.space, weights_dir=args.weights_dir, device=args.device,
                           dtype=dtype)  # fmt: skip
    space = get_latent_space(decoder.latent_space_name)
    bundled = getattr(decoder, "has_encoder", False)  # a TAEHV file: its own encoder; photos are one-frame clips
    if bundled:
        decoder = StillImages(decoder)
    if not bundled and (space.tae_encoder is None or decoder.latent_ndim != 4):
        raise FastDecodersError(f"roundtrip needs an image decoder of a family with a tiny encoder; "
                                f"{decoder.latent_space_name} has none here")  # fmt: skip
    if args.size is not None and (args.size <= 0 or args.size % space.spatial_factor):
        raise FastDecodersError(f"--size must be a positive multiple of {space.spatial_factor}, got {args.size}")
    if bundled:
        encoder = decoder.encoder
    else:
        encoder = load_encoder(space.tae_encoder, args.weights_dir, device=args.device, dtype=dtype)
    c, f = decoder.latent_channels, space.spatial_factor
    side = min(args.size // f, 64) if args.size else 64  # auto measures at most at 512² pixels
    decoder = apply_backend(decoder, args.backend, (1, c, side, side))
    paths = list_images(args.images) if args.images else sample_photo_paths()
    paths = paths[: args.limit] if args.limit else paths
    rows, cells = [], []
    for path in progress(paths, desc=f"roundtrip {args.decoder}", unit="img"):
        image = read_image(path)
        image = center_crop_resize(image, args.size, space.spatial_factor) if args.size else crop_to_multiple(
            image, space.spatial_factor)  # fmt: skip
        decoded = roundtrip(decoder, encoder, image, max_memory_bytes=budget)
        rows.append({"path": str(path), "psnr": float(psnr(decoded[None], image[None])[0]),
                     "ssim": float(ssim(decoded[None], image[None])[0])})  # fmt: skip
        cells.append([image, decoded])
    grid = write_image(_grid(cells, [r["psnr"] for r in rows]), args.out)
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("psnr", "ssim")}
    encoder_name = f"{args.decoder} (bundled)" if bundled else space.tae_encoder
    return {"decoder": str(args.decoder), "encoder": encoder_name, "mean": mean, "images": rows,
            "grid": str(grid), **describe(decoder)}  # fmt: skip


def _grid(pairs: list[list[torch.Tensor]], psnrs: list[float], height: int = 256, pad: int = 4) -> torch.Tensor:
    """(3, H, W) in [0, 1]: one row per photo, ``original | decoded`` scaled to ``height`` with their aspect ratio
    kept (rows of narrower photos end early on white), each cell labelled above, the decoded one with its PSNR."""
    from PIL import Image, ImageDraw

    label_h = 14  # Pillow's default bitmap font is about 11 px high
    cells = []
    for (original, decoded), value in zip(pairs, psnrs, strict=True):
        w = max(8, round(original.shape[-1] * height / original.shape[-2]))
        scaled = [torch.nn.functional.interpolate(t[None].float(), size=(height, w), mode="area")[0]
                  for t in (original, decoded)]  # fmt: skip
        cells.append(list(zip(scaled, ("original", f"decoded  PSNR {value:.2f} dB"), strict=True)))
    row_w = [sum(t.shape[-1] for t, _ in row) + pad * (len(row) - 1) for row in cells]
    canvas = Image.new("RGB", (max(row_w), len(cells) * (height + label_h + pad) - pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(cells):
        x, y = 0, i * (height + label_h + pad)
        for image, label in row:
            draw.text((x + 2, y + 1), label, fill="black")
            canvas.paste(Image.fromarray(to_uint8(image.clamp(0, 1))), (x, y + label_h))
            x += image.shape[-1] + pad
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255


def render(result: dict) -> str:
    table = format_table(["image", "PSNR dB", "SSIM"],
                         [[Path(r["path"]).name, r["psnr"], f"{r['ssim']:.4f}"] for r in result["images"]])  # fmt: skip
    m = result["mean"]
    return f"{table}\nmean PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}  (grid: {result['grid']})"
