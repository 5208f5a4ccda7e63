"""``torchrun --nproc-per-node N -m fastdecoders decode DECODER LATENTS -o OUT --parallel`` (the ``decode`` verb's
``--parallel`` options; the library part is ``fastdecoders.parallel``): each latent (image) or
clip (video decoder) decoded by all ranks together, split by latent rows; rank 0 writes the files."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.distributed as dist

from fastdecoders.errors import FastDecodersError
from fastdecoders.io import read_latents, write_image, write_video
from fastdecoders.latents import get_latent_space, ncthw_to_ntchw, ntchw_to_ncthw, to_01
from fastdecoders.models.protocol import call_kind
from fastdecoders.parallel.decode import MODES, choose_mode, init_process_group, parallel_decode, split_rows
from fastdecoders.weights import load_decoder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parallel", action="store_true", help="split each decode by latent rows across the ranks "
                        "of a torchrun job (exact; gloo on CPU, NCCL on CUDA); rank 0 writes the outputs")  # fmt: skip
    parser.add_argument("--parallel-mode", choices=MODES, default="auto", help="halo: bounded receptive "
                        "field (TAE); layers: halo exchange per conv + GroupNorm/attention across ranks")  # fmt: skip
    parser.add_argument("--parallel-timeout", type=float, default=600.0,
                        help="seconds a rank waits on a peer before failing with one error line")  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    """The ``--parallel`` form of ``fastdecoders decode``; every rank runs it, rank 0 returns the outputs."""
    if str(args.tile) not in ("auto", "off"):
        raise FastDecodersError(f"--tile {args.tile} does not combine with --parallel (the ranks split the rows)")
    rank, world = init_process_group(args.device, args.parallel_timeout)
    latents = read_latents(args.latents)
    decoder = load_decoder(args.decoder, latents=args.space, weights_dir=args.weights_dir, device=args.device,
                           dtype=getattr(torch, args.dtype))  # fmt: skip
    space = get_latent_space(decoder.latent_space_name)
    clips = decoder.latent_ndim == 5  # forward takes NCTHW clips: a 4-d file is one clip without its batch axis
    if not clips and latents.ndim != 4:
        raise FastDecodersError(f"--parallel decodes NCHW latents with an image decoder, got shape "
                                f"{tuple(latents.shape)} for a {call_kind(decoder)} decoder (decode without "
                                f"--parallel)")  # fmt: skip
    if clips and latents.ndim == 4:
        latents = latents[None]  # a single clip without its batch axis
    space.check_latents(latents, what=str(args.latents))
    if args.raw:
        latents = space.to_diffusion(latents.float())
    latents = latents.to(args.device, getattr(torch, args.dtype))
    mode = choose_mode(decoder, args.parallel_mode)
    out = args.out
    started = time.perf_counter()
    paths: list[str] = []
    with torch.inference_mode():
        if clips:
            clip = ntchw_to_ncthw(latents) if space.layout == "NTCHW" else latents
            if not str(out).lower().endswith(".mp4"):
                raise FastDecodersError(f"video latents decode to an .mp4 file, got {out}")
            video = parallel_decode(decoder, clip, mode=mode, dst=0)
            if rank == 0:
                frames = to_01(ncthw_to_ntchw(video)[0])
                paths.append(str(write_video(frames, out, fps=args.fps)))
        else:
            folder = Path(out)
            if len(latents) > 1 and folder.suffix:
                raise FastDecodersError(f"{len(latents)} latents need an output folder, got a file name {out}")
            for i in range(len(latents)):
                image = parallel_decode(decoder, latents[i : i + 1], mode=mode, dst=0)
                if rank == 0:
                    path = folder if folder.suffix else folder / f"{i:05d}.png"
                    paths.append(str(write_image(to_01(image)[0], path)))
    seconds = time.perf_counter() - started
    dist.destroy_process_group()
    return {"decoder": str(args.decoder), "outputs": paths, "rank": rank,
            "world": world, "mode": mode, "latent_rows_per_rank": list(split_rows(latents.shape[-2], world)),
            "seconds": round(seconds, 3)}  # fmt: skip
