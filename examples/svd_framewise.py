"""Stable Video Diffusion (image-to-video), decoded frame by frame by a tiny image decoder instead of SVD's VAE.

    python examples/svd_framewise.py --tiny -o out/svd_framewise             # offline: a folder of PNG frames
    python examples/svd_framewise.py --model stabilityai/stable-video-diffusion-img2vid-xt \\
        --image first_frame.png --decoder taesd -o out/svd_framewise.mp4

SVD's VAE keeps Stable Diffusion's encoder and scaling, so SVD latents are SD latents and an sd1 image decoder
(TAESD, ``tae192-sd1``) decodes them one frame at a time; ``fastdecoders.use`` checks that and refuses decoders of
other latent spaces. Frame-wise decoding flickers a little more than SVD's temporal decoder; see svd_temporal.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import fastdecoders
from fastdecoders.integrations.pipelines import from_pretrained, run_example
from fastdecoders.io import write_image, write_video
from fastdecoders.registry import is_registered


def parse_args(argv: list[str] | None, default_decoder: str = "taesd") -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="SVD pipeline: hub id or local folder")
    source.add_argument("--tiny", action="store_true", help="tiny random pipeline and decoder, offline")
    parser.add_argument("--decoder", default=default_decoder, help="registry name, weights file/folder or hub id")
    parser.add_argument("--image", help="conditioning (first) frame; required with --model")
    parser.add_argument("--frames", type=int, default=14, help="frames to generate (3 with --tiny)")
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--chunk", type=int, help="frames per vae.decode call (decode_chunk_size; default: all)")
    parser.add_argument("--fps", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights-dir", help="folder with upstream-named weights files")
    parser.add_argument("--latents", help="latent space the decoder reads, if its file does not say (or to force one)")
    parser.add_argument("-o", "--out", default="out/svd_framewise.mp4", help="an .mp4 file or a folder of PNGs")
    args = parser.parse_args(argv)
    if args.model and not args.image:
        parser.error("--model needs --image (the first frame to animate)")
    return args


def load_pipeline(args: argparse.Namespace) -> tuple[object, dict]:
    """(pipeline, call kwargs): the tiny random one, or the real one with the conditioning image."""
    if args.tiny:
        from fastdecoders.testing.tiny_pipelines import tiny_pipeline

        torch.manual_seed(args.seed)
        pipe, call = tiny_pipeline("svd")
        return pipe, {**call, "height": 64, "width": 64, "num_frames": 3, "num_inference_steps": 1,
                      "decode_chunk_size": args.chunk}  # fmt: skip
    from diffusers import StableVideoDiffusionPipeline
    from PIL import Image

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = from_pretrained(StableVideoDiffusionPipeline, args.model, dtype=dtype).to(device)
    image = Image.open(args.image).convert("RGB").resize((args.width, args.height))
    return pipe, {"image": image, "height": args.height, "width": args.width, "num_frames": args.frames,
                  "num_inference_steps": args.steps, "decode_chunk_size": args.chunk, "fps": args.fps}  # fmt: skip


def save_clip(frames: torch.Tensor, out: str, fps: float) -> list[str]:
    """(T, 3, H, W) in [0, 1] -> an MP4 (needs PyAV), or PNG frames in a folder."""
    if out.lower().endswith(".mp4"):
        return [str(write_video(frames, out, fps=fps))]
    return [str(write_image(frame, Path(out) / f"frame_{i:05d}.png")) for i, frame in enumerate(frames)]


def run(args: argparse.Namespace, decoder: object) -> dict:
    """Generate one clip with ``decoder`` in the pipeline and save it."""
    pipe, call = load_pipeline(args)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    with fastdecoders.use(pipe, decoder, latents=args.latents, weights_dir=args.weights_dir) as swap:
        # output_type "pt": (B, T, 3, H, W) in [0, 1], post-processed by the pipeline as for its own VAE
        frames = pipe(**call, generator=generator, output_type="pt").frames[0]
    result = {"decoder": repr(swap), "outputs": save_clip(frames, args.out, args.fps), "frames": len(frames),
              "size": list(frames.shape[-2:]), "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
    print(result)
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    return run(args, tiny_or_named(args))


def tiny_or_named(args: argparse.Namespace) -> object:
    """--tiny: random weights of the decoder's small test config (a path still loads real weights); else the name."""
    if args.tiny and is_registered(args.decoder):
        return fastdecoders.build_decoder(args.decoder, tiny=True)
    return args.decoder


if __name__ == "__main__":
    sys.exit(run_example(main, "svd_framewise.py"))
