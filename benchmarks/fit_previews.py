"""Fit the shipped linear previews (src/fastdecoders/previews/<family>.json) for sd1, sdxl, sd3, flux1, flux2.

Each family: photos -> the real TAE encoder -> latents; latents -> the real TAE decoder -> image, area-averaged to
the latent resolution = the target; least squares latents -> target; PSNR on held-out Kodak24.

    nice -n 19 python benchmarks/fit_previews.py            # ~10 min on 1 CPU thread; needs ../shared

Fit photos: the first 100 of BSDS500 train (sorted); held out: all 24 Kodak photos; 256x256 centre crops.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fastdecoders.previews.fit import fit_preview
from fastdecoders.previews.linear import SHIPPED_DIR

ROOT = Path(__file__).resolve().parents[1]
DECODERS = {"sd1": "taesd", "sdxl": "taesdxl", "sd3": "taesd3", "flux1": "taef1", "flux2": "taef2"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    parser.add_argument("--families", nargs="*", default=list(DECODERS))
    parser.add_argument("--max-images", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("-o", "--out-dir", default=str(SHIPPED_DIR))
    args = parser.parse_args()
    torch.set_num_threads(1)
    shared = Path(args.shared)
    for family in args.families:
        preview = fit_preview(
            DECODERS[family],
            shared / "data/images/bsds500/train",
            eval_images=shared / "data/images/kodak24",
            size=args.size,
            max_images=args.max_images,
            weights_dir=shared / "weights/taesd",
        )
        preview.fit["images"] = f"../shared/data/images/bsds500/train, first {args.max_images} sorted"
        preview.fit["heldout_images"] = "../shared/data/images/kodak24 (24 photos)"
        preview.fit["command"] = " ".join(["python benchmarks/fit_previews.py", *sys.argv[1:]])
        path = preview.save(Path(args.out_dir) / f"{family}.json")
        fit = preview.fit
        print(f"{family}: fit {fit['psnr_fit_db']} dB, held-out {fit['psnr_heldout_db']} dB -> {path}", flush=True)


if __name__ == "__main__":
    main()
