"""What a light/heavy boundary does to flicker (docs/switch.md): real clips, routed per chunk of frames.

    FASTDECODERS_WEIGHTS=../shared/weights/taesd python benchmarks/switch_video.py \\
        --light weights/switch-taef2/pruned.safetensors --gate-cache runs/switch-curve-keep0.5/cache --out DIR

The only light/heavy pair with real weights here is image decoders (TAEF2 and its pruned student), so a clip is
decoded frame by frame (a frame-wise decoder is trivially causal: its "stream state" is empty) and each chunk of
``--chunk`` frames goes to one decoder. The latent gate is trained on the fit photos cached by
benchmarks/switch_curve.py and calibrated to ``--budget`` on its held-back photos. Flicker is
``fastdecoders.eval.metrics.flicker`` (RMSE of frame-to-frame differences against the source clip, 8-bit levels),
over the whole clip and split into frame pairs that cross a light/heavy boundary and pairs that do not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fastdecoders.eval.metrics import flicker, psnr
from fastdecoders.io import center_crop_resize, read_video
from fastdecoders.latents import to_01
from fastdecoders.switching.calibrate import threshold_for_budget
from fastdecoders.switching.fit import Collected, encode_photos, split_holdout, train_gate
from fastdecoders.weights import load_decoder


def pair_errors(decoded: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(T-1,) RMSE (8-bit levels) of each frame pair's difference against the reference's."""
    d = decoded.double().diff(dim=0) - reference.double().diff(dim=0)
    return d.pow(2).flatten(1).mean(1).sqrt() * 255


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--light", required=True)
    ap.add_argument("--heavy", default="taef2")
    ap.add_argument("--clips", nargs="+", default=["../shared/data/videos/davis_clips/blackswan.mp4",
                                                   "../shared/data/videos/davis_clips/rollercoaster.mp4"])  # fmt: skip
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--budget", type=float, default=0.2)
    ap.add_argument("--gate-cache", required=True, help="the cache folder of benchmarks/switch_curve.py")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    light, heavy = load_decoder(args.light), load_decoder(args.heavy)
    fit_file = next(p for p in sorted(Path(args.gate_cache).glob(f"{Path(args.light).stem}-*.pt")) if "test" in p.name)
    fit = Collected(**torch.load(fit_file, weights_only=True))
    fit_idx, held_idx = split_holdout(fit.deficit.numel(), 0.2)
    gate = train_gate(fit.latents[fit_idx], fit.deficit[fit_idx], "latent", 300, show=False)
    threshold = threshold_for_budget(gate(fit.latents[held_idx]), args.budget)
    result: dict = {"light": args.light, "heavy": args.heavy, "chunk": args.chunk, "budget": args.budget,
                    "gate_fit_on": str(fit_file), "clips": {}}  # fmt: skip
    with torch.no_grad():
        for clip in args.clips:
            video, _ = read_video(clip, max_frames=args.frames)
            ref = torch.stack([center_crop_resize(f, args.size) for f in video])
            z = encode_photos(ref, light.latent_space_name, show=False)
            y_l = torch.cat([to_01(light(z[i : i + 8])).clamp(0, 1) for i in range(0, len(z), 8)])
            y_h = torch.cat([to_01(heavy(z[i : i + 8])).clamp(0, 1) for i in range(0, len(z), 8)])
            t = len(z)
            starts = list(range(0, t, args.chunk))
            scores = gate(z)
            chunk_scores = torch.stack([scores[a : a + args.chunk].mean() for a in starts])
            routings = {"gate": chunk_scores > threshold,
                        "alternating": torch.arange(len(starts)) % 2 == 1}  # worst case: a boundary every chunk
            entry: dict = {"frames": t}
            for name, y in (("all-light", y_l), ("all-heavy", y_h)):
                entry[name] = {"flicker": flicker(y, ref), "psnr": float(psnr(y, ref).mean())}
            for name, routes in routings.items():
                heavy_frame = torch.zeros(t, dtype=torch.bool)
                for a, r in zip(starts, routes, strict=True):
                    heavy_frame[a : a + args.chunk] = r
                y = torch.where(heavy_frame[:, None, None, None], y_h, y_l)
                errors = pair_errors(y, ref)
                crosses = heavy_frame[1:] != heavy_frame[:-1]  # pair (t-1, t) decoded by different decoders
                entry[f"switched-{name}"] = {
                    "heavy_chunks": int(routes.sum()), "chunks": len(starts), "flicker": flicker(y, ref),
                    "psnr": float(psnr(y, ref).mean()), "boundary_pairs": int(crosses.sum()),
                    "flicker_at_boundaries": float(errors[crosses].pow(2).mean().sqrt()) if crosses.any() else None,
                    "flicker_elsewhere": float(errors[~crosses].pow(2).mean().sqrt()),
                }  # fmt: skip
            result["clips"][Path(clip).name] = entry
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "switch_video.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
