"""``fastdecoders roundtrip DECODER``: encode photos with the family's encoder, decode, compare, write a grid."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from fastdecoders.commands import add_device, add_weights_dir, format_table
from fastdecoders.errors import FastDecodersError
from fastdecoders.io import center_crop_resize, crop_to_multiple, image_grid, list_images, read_image, write_image
from fastdecoders.latents import get_latent_space
from fastdecoders.quality import roundtrip
from fastdecoders.weights import load_decoder, load_encoder

# photos that ship inside scikit-image's wheel (public domain / CC0), so the verb runs on a fresh machine
SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("decoder", help="registry name, weights file/folder, or hub id")
    parser.add_argument("--images", default=None, help="folder of photos (default: sample photos from scikit-image)")
    parser.add_argument("-o", "--out", default="roundtrip.png", help="side-by-side grid PNG (original | decoded)")
    parser.add_argument("--size", type=int, default=None, help="resize+centre-crop photos to SIZE² (default: keep, "
                        "cropped to a multiple of the latent factor)")  # fmt: skip
    parser.add_argument("--limit", type=int, default=None, help="use at most this many photos")
    parser.add_argument("--latents-space", dest="space", default=None, help="latent space if the file lacks it")
    add_weights_dir(parser)
    add_device(parser)


def sample_photo_paths() -> list[Path]:
    try:
        import skimage
    except ImportError:
        raise FastDecodersError("no --images given and scikit-image (the sample photos) is not installed") from None
    folder = Path(skimage.__file__).parent / "data"
    return [folder / name for name in SAMPLE_PHOTOS if (folder / name).is_file()]


def run(args: argparse.Namespace) -> dict:
    from fastdecoders.eval.metrics import psnr, ssim

    dtype = getattr(torch, args.dtype)
    decoder = load_decoder(args.decoder, latents=args.space, weights_dir=args.weights_dir, device=args.device,
                           dtype=dtype)  # fmt: skip
    space = get_latent_space(decoder.latent_space_name)
    if space.tae_encoder is None or decoder.latent_ndim != 4:
        raise FastDecodersError(f"roundtrip needs an image decoder of a family with a tiny encoder; "
                                f"{decoder.latent_space_name} has none here")  # fmt: skip
    if args.size is not None and (args.size <= 0 or args.size % space.spatial_factor):
        raise FastDecodersError(f"--size must be a positive multiple of {space.spatial_factor}, got {args.size}")
    encoder = load_encoder(space.tae_encoder, args.weights_dir, device=args.device, dtype=dtype)
    paths = list_images(args.images) if args.images else sample_photo_paths()
    paths = paths[: args.limit] if args.limit else paths
    rows, cells = [], []
    for path in tqdm(paths, desc=f"roundtrip {args.decoder}", unit="img", disable=None):  # no bar unless a TTY
        image = read_image(path)
        image = center_crop_resize(image, args.size, space.spatial_factor) if args.size else crop_to_multiple(
            image, space.spatial_factor)  # fmt: skip
        decoded = roundtrip(decoder, encoder, image)
        rows.append({"path": str(path), "psnr": float(psnr(decoded[None], image[None])[0]),
                     "ssim": float(ssim(decoded[None], image[None])[0])})  # fmt: skip
        cells.append([image, decoded])
    grid = write_image(_grid(cells), args.out)
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("psnr", "ssim")}
    return {"decoder": str(args.decoder), "encoder": space.tae_encoder, "mean": mean, "images": rows,
            "grid": str(grid)}  # fmt: skip


def _grid(pairs: list[list[torch.Tensor]], height: int = 256) -> torch.Tensor:
    """Rows of (original | decoded), each scaled to a common height and width for display."""
    resized = []
    for original, decoded in pairs:
        w = max(8, round(original.shape[-1] * height / original.shape[-2]))
        resized.append([torch.nn.functional.interpolate(t[None], size=(height, w), mode="area")[0]
                        for t in (original, decoded)])  # fmt: skip
    width = min(r[0].shape[-1] for r in resized)
    return image_grid([[t[..., :width] for t in r] for r in resized])


def render(result: dict) -> str:
    table = format_table(["image", "PSNR dB", "SSIM"],
                         [[Path(r["path"]).name, r["psnr"], f"{r['ssim']:.4f}"] for r in result["images"]])  # fmt: skip
    m = result["mean"]
    return f"{table}\nmean PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}  (grid: {result['grid']})"
