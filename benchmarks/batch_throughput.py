"""Throughput of a batch decode job: the bare decoder loop vs the embedded engine vs Ray Data with 1 and 2 workers.

Random sdxl latents (``--items`` at ``--side`` pixels, shards of ``--shard-items``) decoded to PNG by a real decoder
(default taesdxl) with the same batch size and torch threads per decoder everywhere. The bare loop decodes the same
batches from memory and writes nothing; it runs first and last (the machine's drift shows as their difference).
Prints one JSON document: per mode items/s over the whole job, steady items/s (first file to last), time to first
item, overhead per item against the bare loop, and Ray's scaling efficiency (2 workers vs 1). ``--photo`` also
times writing one photo as PNG/JPEG/WebP at ``--write-side`` (the CPU cost per item that a GPU job must hide).

    python benchmarks/batch_throughput.py --weights-dir ../shared/weights/taesd --items 2000 --side 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from fastdecoders.batch.embedded import bare_throughput
from fastdecoders.batch.job import DecodeJob, run_decode_job
from fastdecoders.batch.plan import make_plan
from fastdecoders.batch.worker import DecoderArgs, DecodeWorker
from fastdecoders.shards import Shard, list_shards, write_shard


def make_inputs(folder: Path, items: int, side: int, shard_items: int) -> None:
    g = torch.Generator().manual_seed(0)
    for k, start in enumerate(range(0, items, shard_items)):
        n = min(shard_items, items - start)
        z = torch.randn(n, 4, side // 8, side // 8, generator=g)
        write_shard(folder / f"shard-{k:05d}.safetensors", Shard(z, [f"{start + i:06d}" for i in range(n)]))


def bare(args, folder: Path, decoder: DecoderArgs) -> dict:
    plan = make_plan(list_shards([folder]), folder / "unused", "png", args.batch_size, {}, resume=False)
    worker = DecodeWorker(decoder)
    worker.decode(torch.randn(args.batch_size, 4, args.side // 8, args.side // 8))  # warm-up
    items, seconds = bare_throughput(plan.units, worker)
    return {"items": items, "seconds": round(seconds, 3), "items_per_s": round(items / seconds, 3)}


def write_cost(photo: str, side: int, repeats: int = 5) -> dict:
    """Median ms (and KiB) to encode one side x side photo as PNG (zlib level 6 and 1) / JPEG q90 / WebP q90, one
    thread: the CPU side of a job."""
    import statistics

    from fastdecoders.batch.outputs import encode_image
    from fastdecoders.io import center_crop_resize, read_image, to_uint8

    array = to_uint8(center_crop_resize(read_image(photo), side))
    costs = {}
    for name, fmt, level in (("png", "png", 6), ("png_level1", "png", 1), ("jpg", "jpg", 6), ("webp", "webp", 6)):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            size = len(encode_image(array, fmt, 90, level))
            times.append(time.perf_counter() - start)
        costs[f"{name}_ms"], costs[f"{name}_kb"] = round(1000 * statistics.median(times), 1), round(size / 1024)
    return {"side": side, **costs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", default="taesdxl")
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--shard-items", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per decoder (each Ray worker too)")
    parser.add_argument("--modes", default="bare,embedded,ray1,ray2,bare")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray")
    parser.add_argument("--photo", default=None, help="also time PNG/JPEG/WebP writes of this photo at --write-side")
    parser.add_argument("--write-side", type=int, default=1024)
    args = parser.parse_args()
    if args.photo:
        print(json.dumps({"write_cost": write_cost(args.photo, args.write_side)}), flush=True)
    torch.set_num_threads(args.threads)
    decoder = DecoderArgs(args.decoder, weights_dir=args.weights_dir, threads=args.threads)
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": _machine(),
                     "load_before": os.getloadavg(), "args": vars(args), "modes": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        make_inputs(folder, args.items, args.side, args.shard_items)
        for n, mode in enumerate(args.modes.split(",")):
            key = f"{mode}#{n}"  # modes may repeat (interleaved runs show the machine's drift)
            if mode == "bare":
                results["modes"][key] = bare(args, folder, decoder)
                print(json.dumps({key: results["modes"][key]}), flush=True)
                continue
            out = Path(tmp) / mode
            ray = mode.startswith("ray")
            job = DecodeJob((str(folder),), str(out), decoder, batch_size=args.batch_size, progress=False,
                            engine="ray" if ray else "embedded", workers=int(mode[3:]) if ray else 1,
                            cpus_per_worker=float(args.threads), num_cpus=args.num_cpus, resume=False)  # fmt: skip
            summary = run_decode_job(job)
            keys = ("items", "written", "failed", "seconds", "items_per_s", "steady_items_per_s", "first_item_s",
                    "decoder_busy")
            results["modes"][key] = {k: summary[k] for k in keys}
            print(json.dumps({key: results["modes"][key]}), flush=True)
    bares = [v["items_per_s"] for k, v in results["modes"].items() if k.startswith("bare")]
    ref = sum(bares) / len(bares)
    for key, value in results["modes"].items():
        if not key.startswith("bare"):
            rate = value["steady_items_per_s"] or value["items_per_s"]
            value["vs_bare"] = round(rate / ref, 3)
            value["overhead_ms_per_item"] = round(1000 * (1 / rate - 1 / ref), 2)
    rays = {k.split("#")[0]: v for k, v in results["modes"].items() if k.startswith("ray")}
    if "ray1" in rays and "ray2" in rays:
        r1, r2 = (rays[m]["steady_items_per_s"] or rays[m]["items_per_s"] for m in ("ray1", "ray2"))
        results["ray_scaling_efficiency"] = round(r2 / (2 * r1), 3)
    results["bare_items_per_s_mean"] = round(ref, 3)
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))


def _machine() -> str:
    return f"{platform.machine()} x{os.cpu_count()}, torch {torch.__version__}, {platform.platform()}"


if __name__ == "__main__":
    main()
