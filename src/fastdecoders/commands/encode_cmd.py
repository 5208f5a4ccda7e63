"""``fastdecoders encode ENCODER INPUTS... -o OUT``: photos/videos to latents shards (docs/scale.md, docs/shards.md)."""

from __future__ import annotations

import argparse

from fastdecoders.batch.encode import EncodeJob, run_encode_job
from fastdecoders.batch.options import ENGINES
from fastdecoders.commands import add_weights_dir
from fastdecoders.commands.batch_args import add_ray_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("encoder", help="a TAE encoder (taesdxl_encoder, taef1_encoder …) or a diffusers VAE "
                        "folder / hub id (with --latents)")  # fmt: skip
    parser.add_argument("inputs", nargs="+", help="folders (searched recursively) or globs of images and videos")
    parser.add_argument("-o", "--out", required=True, help="output folder: shard-NNNNN.safetensors + manifest.jsonl")
    parser.add_argument("--latents", default=None, help="latent space (needed for a diffusers VAE), e.g. sdxl")
    parser.add_argument("--vae-subfolder", default=None, help="subfolder of a pipeline repo holding the VAE")
    parser.add_argument("--size", type=int, default=None, help="square side: short-side resize + centre crop "
                        "(default: native size, cropped to the latent factor)")  # fmt: skip
    parser.add_argument("--frames", type=int, default=17, help="pixel frames per video (its first ones)")
    parser.add_argument("--shard-items", type=int, default=256, help="items per shard")
    parser.add_argument("--batch-size", type=int, default=8, help="images per encoder call")
    parser.add_argument("--pixels", action="store_true", help="store the pictures (uint8) too: the shards then "
                        "serve as a training latent cache")  # fmt: skip
    parser.add_argument("--decoder", default=None, help="record this decoder in the shards (e.g. taesdxl)")
    parser.add_argument("--manifest", default=None, help="JSONL manifest (default: OUT/manifest.jsonl)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                        help="skip shards already written (default: on when the manifest exists)")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_weights_dir(parser)
    g = parser.add_argument_group("engine (see docs/scale.md)")
    g.add_argument("--engine", choices=ENGINES, default="embedded", help="embedded (default: in-process, "
                   "pictures read on background threads) or ray (Ray Data actor pool; pip install "
                   "'fastdecoders[scale]')")  # fmt: skip
    add_ray_arguments(g, "encoder")


def run(args: argparse.Namespace) -> dict:
    job = EncodeJob(
        inputs=tuple(args.inputs), out=args.out, encoder=args.encoder, latents=args.latents,
        vae_subfolder=args.vae_subfolder, weights_dir=args.weights_dir, device=args.device, size=args.size,
        frames=args.frames, shard_items=args.shard_items, batch_size=args.batch_size, pixels=args.pixels,
        decoder=args.decoder, manifest=args.manifest, resume=args.resume, progress=not args.no_progress,
        engine=args.engine, address=args.address, workers=args.workers or 1, gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker, num_cpus=args.num_cpus, object_store_mb=args.object_store_mb,
    )  # fmt: skip
    return run_encode_job(job)


def render(result: dict) -> str:
    failed = f", {result['failed']} failed (see {result['manifest']})" if result["failed"] else ""
    return (f"{result['written']} encoded into {result['shards']} shard(s), {result['skipped']} already done{failed}; "
            f"{result['seconds']:.1f} s (engine {result['engine']}, {result['workers']} worker(s)) -> "
            f"{result['out']}")  # fmt: skip
