"""Kodak24 round trip through each real TAE encoder/decoder pair: the README's quality table and the regression
test's reference numbers.

    python benchmarks/kodak_roundtrip.py --weights-dir ../shared/weights/taesd --kodak ../shared/data/images/kodak24

Prints a markdown table of mean PSNR (dB, RGB in [0, 1], decoder output clamped) and SSIM at full resolution
(768×512) and at half resolution (each photo area-downsampled ×2 to 384×256: what tests/test_real_weights.py runs).
"""

from __future__ import annotations

import argparse

import torch

from fastdecoders.io import list_images, read_image
from fastdecoders.quality import half_size, roundtrip_scores
from fastdecoders.weights import load_decoder, load_encoder

PAIRS = {"taesd": "taesd_encoder", "taesdxl": "taesdxl_encoder", "taesd3": "taesd3_encoder",
         "taef1": "taef1_encoder", "taef2": "taef2_encoder"}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", required=True)
    parser.add_argument("--kodak", required=True)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    photos = [read_image(p) for p in list_images(args.kodak)]
    print("| decoder | PSNR full | SSIM full | PSNR half | SSIM half |")
    print("|---|---|---|---|---|")
    for name, stem in PAIRS.items():
        decoder, encoder = load_decoder(name, weights_dir=args.weights_dir), load_encoder(stem, args.weights_dir)
        full = roundtrip_scores(decoder, encoder, photos)
        half = roundtrip_scores(decoder, encoder, [half_size(p) for p in photos])
        print(f"| {name} | {full['psnr']:.2f} | {full['ssim']:.4f} | {half['psnr']:.2f} | {half['ssim']:.4f} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
