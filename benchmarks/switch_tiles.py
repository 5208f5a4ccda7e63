"""How much finer routing could recover (docs/switch.md): the light/heavy gap recovered when whole photos or tiles of
them are routed heavy by the true deficit (the oracle of the label-free target), by the true gain against the photo
(oracle-gain: needs the photo; the tile's MSE gain over its photo's MSE, the first-order gain in dB) or at random.

    FASTDECODERS_WEIGHTS=../shared/weights/taesd python benchmarks/switch_tiles.py \\
        --light weights/switch-taef2/pruned.safetensors --out DIR

A quality-only bound: composites are cut from whole-image decodes (no tiled decoding, so no seams and no tile
overlap cost are measured). Per photo PSNR against the photo, averaged; tiles of ``--tile`` pixels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fastdecoders.latents import to_01
from fastdecoders.switching.fit import encode_photos, load_photos
from fastdecoders.weights import load_decoder


def psnr01(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return -10 * torch.log10((a.double() - b.double()).pow(2).flatten(1).mean(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--light", required=True)
    ap.add_argument("--heavy", default="taef2")
    ap.add_argument("--images", default="../shared/data/images/kodak24")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--tiles", default="256,128,64,32", help="tile sides in pixels (the image side = whole photos)")
    ap.add_argument("--fractions", default="0.1,0.2,0.3")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    light, heavy = load_decoder(args.light), load_decoder(args.heavy)
    photos, _ = load_photos(args.images, args.size)
    with torch.no_grad():
        z = encode_photos(photos, light.latent_space_name, show=False)
        y_l = torch.cat([to_01(light(z[i : i + 4])).clamp(0, 1) for i in range(0, len(z), 4)])
        y_h = torch.cat([to_01(heavy(z[i : i + 4])).clamp(0, 1) for i in range(0, len(z), 4)])
    lo, hi = float(psnr01(y_l, photos).mean()), float(psnr01(y_h, photos).mean())
    result: dict = {"light": args.light, "heavy": args.heavy, "size": args.size, "psnr_light": lo, "psnr_heavy": hi,
                    "rows": []}  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    for tile in (int(t) for t in args.tiles.split(",")):
        n = args.size // tile
        tl, th = (y.unfold(2, tile, tile).unfold(3, tile, tile) for y in (y_l, y_h))  # (N, 3, n, n, tile, tile)
        deficit = (tl - th).pow(2).mean(dim=(1, 4, 5)).flatten()  # per tile, light vs heavy: no photo needed
        tp = photos.unfold(2, tile, tile).unfold(3, tile, tile)
        # per tile, the true gain against the photo (needs the photo: the bound of any tile router), to first order
        # in dB of its photo's PSNR: the tile's MSE gain over the photo's light MSE (whole photos: monotone in dB gain)
        mse_l = (y_l - photos).pow(2).mean(dim=(1, 2, 3))[:, None, None]
        gain = (((tl - tp).pow(2).mean(dim=(1, 4, 5)) - (th - tp).pow(2).mean(dim=(1, 4, 5))) / mse_l).flatten()
        for fraction in (float(f) for f in args.fractions.split(",")):
            k = int(fraction * deficit.numel() + 1e-9)
            row = {"tile": tile, "tiles": deficit.numel(), "fraction": fraction}
            for name, order in (("oracle", deficit.argsort(descending=True)),
                                ("oracle-gain", gain.argsort(descending=True)),
                                ("random", torch.randperm(deficit.numel(), generator=gen))):  # fmt: skip
                mask = torch.zeros(deficit.numel(), dtype=torch.bool)
                mask[order[:k]] = True
                m = mask.view(len(z), 1, n, n, 1, 1)
                comp = torch.where(m, th, tl).permute(0, 1, 2, 4, 3, 5).reshape(y_l.shape)
                p = float(psnr01(comp, photos).mean())
                row[name] = {"psnr": p, "gap_recovered": (p - lo) / (hi - lo)}
            result["rows"].append(row)
            print(row, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "switch_tiles.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
