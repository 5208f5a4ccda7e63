"""``fastdecoders decode DECODER LATENTS -o OUT``: a latents file to PNGs, or an MP4 for video latents."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

import torch

from fastdecoders.backends import call_shape
from fastdecoders.commands import add_device, add_weights_dir
from fastdecoders.commands import batch_args as batch_cli
from fastdecoders.commands import parallel_args as parallel_cli
from fastdecoders.commands.backend_args import add_backend_argument, apply_backend, describe
from fastdecoders.errors import FastDecodersError
from fastdecoders.io import IMAGE_SUFFIXES, check_fps, output_file, read_latents, write_image, write_video
from fastdecoders.latents import get_latent_space, ncthw_to_ntchw, ntchw_to_ncthw, to_01
from fastdecoders.models.protocol import LatentDecoder
from fastdecoders.progress import progress
from fastdecoders.tiling import decode_tiled, parse_tile
from fastdecoders.video import write_stream
from fastdecoders.weights import load_decoder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("decoder", help="registry name, weights file/folder, or hub id")
    parser.add_argument("latents", nargs="+", help="safetensors file with one latent tensor (key 'latents' by "
                        "convention; NCHW diffusion-space latents, or NCTHW for video), or many latents shards "
                        "(files, folders, globs: batch mode, docs/scale.md)")  # fmt: skip
    parser.add_argument("-o", "--out", required=True, help="output PNG (one latent) or folder; .mp4 for video")
    parser.add_argument("--latents-space", dest="space", default=None, help="latent space if the file lacks it")
    parser.add_argument("--raw", action="store_true", help="the latents are raw VAE latents (apply scale/shift first)")
    parser.add_argument("--fps", type=float, default=16.0, help="frame rate of the MP4")
    parser.add_argument("--tile", default="auto", help="auto (tiles or chunks only if the memory estimate "
                        "needs them), off, or a tile side in latent pixels (exact for TAE, else blended)")  # fmt: skip
    parser.add_argument("--max-memory-mb", type=float, default=None,
                        help="budget for --tile auto (default: 80%% of free CUDA memory, 50%% of RAM)")  # fmt: skip
    add_weights_dir(parser)
    add_device(parser)
    add_backend_argument(parser)
    parallel_cli.add_arguments(parser)  # --parallel: under torchrun, one decode split across the ranks
    batch_cli.add_arguments(parser)  # many shards: --engine embedded|ray, manifest, resume


def run(args: argparse.Namespace) -> dict:
    if batch_cli.wants_batch(args):
        return batch_cli.run(args)
    args.latents = args.latents[0]  # one latents file from here on
    if args.parallel:
        return parallel_cli.run(args)
    tile = parse_tile(str(args.tile))
    if args.max_memory_mb is not None and not (math.isfinite(args.max_memory_mb) and args.max_memory_mb > 0):
        raise FastDecodersError(f"--max-memory-mb: expected a positive number, got {args.max_memory_mb}")
    check_fps(args.fps)
    budget = None if args.max_memory_mb is None else int(args.max_memory_mb * 2**20)
    latents = read_latents(args.latents)
    decoder = load_decoder(args.decoder, latents=args.space, weights_dir=args.weights_dir, device=args.device,
                           dtype=getattr(torch, args.dtype))  # fmt: skip
    space = get_latent_space(decoder.latent_space_name)
    if decoder.latent_ndim == 5:
        space.check_latents(latents[None] if latents.ndim == 4 else latents, what=str(args.latents))
        latents = latents[None] if latents.ndim == 4 else latents  # a single clip without its batch axis
    elif latents.ndim == 5:  # video latents for an image decoder: decoded frame by frame
        latents = _frames_first(latents, space.channels, str(args.latents))
        replace(space, layout="NCHW").check_latents(latents.flatten(0, 1), what=str(args.latents))
    else:
        space.check_latents(latents, what=str(args.latents))
    if args.raw:
        latents = space.to_diffusion(latents.float())
    latents = latents.to(args.device, getattr(torch, args.dtype))
    decoder = apply_backend(decoder, args.backend, *call_shape(decoder, latents))
    out = Path(args.out)
    if latents.ndim == 5:  # checked before decoding: a bad name must not cost a whole decode
        output_file(out, (".mp4",), "video latents (an MP4)")
    elif out.suffix:
        output_file(out, IMAGE_SUFFIXES, "decoded image latents")
    tiled = _Tiled(decoder, tile, budget, name=str(args.decoder))  # a path decoder is named by its path
    with torch.inference_mode():
        if latents.ndim == 5:
            result = _decode_video(tiled, space, latents, out, args.fps)
        else:
            result = _decode_images(tiled, latents, out)
    return {**result, "tiling": tiled.report, **describe(decoder)}


class _Tiled(LatentDecoder):
    """``decoder`` behind ``decode_tiled`` (the decode protocol); keeps the last call's report (JSON-ready)."""

    def __init__(self, decoder: LatentDecoder, tile: int | str, budget: int | None, name: str):
        super().__init__()
        self.decoder, self.tile, self.budget, self.name = decoder, tile, budget, name
        self.latent_space_name = getattr(decoder, "latent_space_name", None)
        self.report: dict | None = None

    def decode_latents(self, latents: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        images, report = decode_tiled(self.decoder, latents, tile=self.tile, max_memory_bytes=self.budget,
                                      num_frames=num_frames)  # fmt: skip
        self.report = report.as_dict()
        return images


def _frames_first(latents: torch.Tensor, channels: int, what: str) -> torch.Tensor:
    """5-d video latents -> (B, T, C, h, w), whichever of NCTHW (diffusers) or NTCHW (SVD) they are in."""
    if latents.shape[1] == channels:
        return ncthw_to_ntchw(latents)
    if latents.shape[2] == channels:
        return latents
    raise FastDecodersError(f"{what}: video latents need {channels} channels on axis 1 (NCTHW) or 2 (NTCHW), "
                            f"got shape {tuple(latents.shape)}")  # fmt: skip


def _decode_images(decoder, latents: torch.Tensor, out: Path) -> dict:
    if len(latents) > 1 and out.suffix:
        raise FastDecodersError(f"{len(latents)} latents need an output folder, got a file name {out}")
    paths = []
    for i in progress(range(len(latents)), desc="decode", unit="img"):
        image = to_01(decoder.decode_latents(latents[i : i + 1]))[0]
        path = out if out.suffix else out / f"{i:05d}.png"
        paths.append(str(write_image(image, path)))
    return {"decoder": decoder.name, "latents": decoder.latent_space_name, "outputs": paths,
            "shape": list(image.shape)}  # fmt: skip


def _decode_video(decoder, space, latents: torch.Tensor, out: Path, fps: float) -> dict:
    if out.suffix.lower() != ".mp4":
        raise FastDecodersError(f"video latents decode to an .mp4 file, got {out}")
    inner = decoder.decoder
    if hasattr(inner, "stream") and latents.shape[0] == 1 and decoder.tile == "auto":
        # a causal video decoder: frames go to the MP4 as they are decoded (memory constant in the clip's length)

        written = write_stream(inner, latents, out, fps=fps)
        shape = [written["frames"], 3, *space.pixel_size(*latents.shape[-2:])]
        # one decoder call per latent frame, each equal to its part of a whole-clip decode (fp32 within 1e-5)
        decoder.report = {"mode": "streamed", "pieces": int(latents.shape[2]), "frames_per_chunk": 1, "exact": True}
        return {"decoder": decoder.name, "latents": decoder.latent_space_name, "outputs": [written["path"]],
                "frames": written["frames"], "shape": shape}  # fmt: skip
    # as run() read the file: clips in the space's layout for clip decoders, frames first (B, T, C, h, w) otherwise;
    # as NCTHW clips every decoder takes them (decode_latents: image decoders frame by frame, SVD-style ones with
    # the clip's frame count)
    clips = latents if inner.latent_ndim == 5 and space.layout != "NTCHW" else ntchw_to_ncthw(latents)
    video = decoder.decode_latents(clips)  # (B, 3, T, H, W)
    frames = to_01(ncthw_to_ntchw(video)[0])
    write_video(frames, out, fps=fps)
    return {"decoder": decoder.name, "latents": decoder.latent_space_name, "outputs": [str(out)],
            "frames": int(frames.shape[0]), "shape": list(frames.shape)}  # fmt: skip


def render(result: dict) -> str:
    """A short summary; ``--json`` prints the whole result, the tiling report included."""
    if "engine" in result:  # a batch job: one line (``--json`` for the whole summary)
        return batch_cli.render(result)
    if "shape" not in result:  # --parallel results: their own fields, printed whole
        import json

        return json.dumps(result, indent=2, default=str)
    outputs = result["outputs"]
    shown = ", ".join(outputs) if len(outputs) <= 3 else f"{outputs[0]} … {outputs[-1]}"
    if "frames" in result:
        what = f"a {result['frames']}-frame {result['shape'][-1]}×{result['shape'][-2]} video"
    else:
        what = f"{len(outputs)} image{'s' * (len(outputs) != 1)} of {result['shape'][-1]}×{result['shape'][-2]}"
    lines = [f"decoded {what} with {result['decoder']} ({result.get('latents')} latents): {shown}"]
    tiling = result.get("tiling")
    if tiling and tiling.get("mode") != "whole":
        how = "exact: equal to an untiled decode" if tiling.get("exact") else "blended tiles, not exact"
        lines.append(f"tiled in {tiling['pieces']} decoder calls ({how}); --json for the full report")
    return "\n".join(lines)
