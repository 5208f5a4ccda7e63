"""Batch-job flags shared by ``fastdecoders decode`` (many shards) and ``fastdecoders encode``, and decode's batch mode.

Batch mode of ``decode`` is on when the inputs are more than one file, a folder or a glob, or when a batch flag is
given (``--engine``, ``--manifest``, ``--format`` …); one latents file without them keeps the single-file behaviour.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastdecoders.batch.job import DecodeJob, run_decode_job
from fastdecoders.batch.options import ENGINES
from fastdecoders.batch.outputs import FORMATS
from fastdecoders.batch.worker import DecoderArgs
from fastdecoders.errors import FastDecodersError
from fastdecoders.shards import list_shards, read_header

# flags that only batch mode has (None by default, so that giving one is visible)
BATCH_FLAGS = ("engine", "manifest", "fmt", "quality", "png_level", "batch_size", "resume", "workers", "address")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("batch mode (many shards; see docs/scale.md)")
    g.add_argument("--engine", choices=ENGINES, default=None, help="embedded (default: in-process, I/O on "
                   "background threads) or ray (Ray Data actor pool; pip install 'fastdecoders[scale]')")  # fmt: skip
    g.add_argument("--format", dest="fmt", choices=list(FORMATS), default=None,
                   help="output files (default: png for images, mp4 for clips)")  # fmt: skip
    g.add_argument("--quality", type=int, default=None, help="JPEG/WebP quality 1-100 (default: 90)")
    g.add_argument("--png-level", type=int, default=None, help="PNG zlib level 0-9 (default: 6, Pillow's; 1 writes "
                   "several times faster, files somewhat larger)")  # fmt: skip
    g.add_argument("--batch-size", type=int, default=None, help="latents per decoder call (default: 8)")
    g.add_argument("--manifest", default=None, help="JSONL manifest (default: OUT/manifest.jsonl)")
    g.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                   help="skip items the manifest records as done and whose files check out (default: on when the "
                   "manifest exists)")  # fmt: skip
    add_ray_arguments(g, "decoder")
    g.add_argument("--writers", type=int, default=2, help="embedded: image-writing threads; ray: read and write "
                   "tasks at once in the whole job (at least --workers; raise it to the cores of a GPU "
                   "job)")  # fmt: skip
    g.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def add_ray_arguments(group: argparse._ArgumentGroup, model: str) -> None:
    """The Ray engine's flags (``model``: decoder or encoder, for the help texts)."""
    group.add_argument("--workers", type=int, default=None, help=f"ray: {model} actors (default: 1)")
    group.add_argument("--gpus-per-worker", type=float, default=0.0, help=f"ray: GPUs per {model} actor (0: CPU)")
    group.add_argument("--cpus-per-worker", type=float, default=1.0,
                       help=f"ray: CPUs per {model} actor (its torch threads)")  # fmt: skip
    group.add_argument("--address", default=None, help="ray: an existing cluster (default: start a local one)")
    group.add_argument("--num-cpus", type=int, default=None,
                       help="ray, local cluster: CPUs (default: those this process may use)")  # fmt: skip
    group.add_argument("--object-store-mb", type=int, default=300, help="ray, local cluster: object store size")


def wants_batch(args: argparse.Namespace) -> bool:
    inputs = args.latents
    if len(inputs) != 1 or any(getattr(args, flag, None) is not None for flag in BATCH_FLAGS):
        return True
    path = Path(inputs[0])
    return path.is_dir() or (not path.exists() and any(c in inputs[0] for c in "*?["))


def run(args: argparse.Namespace) -> dict:
    if getattr(args, "parallel", False):
        raise FastDecodersError("--parallel decodes one latents file; batch mode (many shards) has --engine ray")
    if Path(args.out).suffix.lower() in {f".{f}" for f in FORMATS}:
        raise FastDecodersError(f"batch mode writes into a folder; got the file name -o {args.out}")
    decoder = DecoderArgs(args.decoder, args.space, args.weights_dir, args.device, args.dtype, args.raw)
    job = DecodeJob(
        inputs=tuple(args.latents), out=args.out, decoder=decoder, fmt=args.fmt or _default_format(args),
        quality=90 if args.quality is None else args.quality, fps=args.fps,
        png_level=6 if args.png_level is None else args.png_level,
        batch_size=8 if args.batch_size is None else args.batch_size, manifest=args.manifest, resume=args.resume,
        engine=args.engine or "embedded", address=args.address, workers=args.workers or 1,
        gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker, num_cpus=args.num_cpus,
        object_store_mb=args.object_store_mb, writers=args.writers, progress=not args.no_progress,
    )  # fmt: skip
    return run_decode_job(job)


def _default_format(args: argparse.Namespace) -> str:
    """png, or mp4 when the first readable shard holds clips (5-d latents)."""
    for path in list_shards(args.latents):
        try:
            header = read_header(path)
        except FastDecodersError:
            continue
        shapes = (header.get("shapes") or {}).get("latents")
        if shapes:
            return "mp4" if len(shapes[0]) == 4 else "png"
        from safetensors import safe_open

        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                key = "latents" if "latents" in f.keys() else next(iter(f.keys()))
                return "mp4" if len(f.get_slice(key).get_shape()) == 5 else "png"
    return "png"


def render(result: dict) -> str:
    failed = f", {result['failed']} failed (see {result['manifest']})" if result["failed"] else ""
    return (f"{result['written']} written, {result['skipped']} already done{failed}; {result['items']} items in "
            f"{result['seconds']:.1f} s ({result['items_per_s'] or 0:.2f} items/s, engine {result['engine']}, "
            f"{result['workers']} worker(s)) -> {result['out']}")  # fmt: skip
