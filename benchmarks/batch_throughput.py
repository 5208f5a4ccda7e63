"""Throughput of a batch decode job: the bare decoder loop vs the embedded engine vs Ray Data with 1 and 2 workers.

Random latents of the decoder's latent space (``--items`` at ``--side`` output pixels, shards of ``--shard-items``)
decoded to PNG by a real decoder (default taesdxl; a registry name or a weights file) with the same batch size and
torch threads per decoder everywhere. The bare loop decodes the same batches from memory and writes nothing (over the
first ``--bare-items`` items, default all); put it first and last in ``--modes`` (the machine's drift shows as their
difference). Modes may repeat (interleaved runs). Prints one JSON line per mode as it finishes (with the load
average before and after it) and one JSON document at the end: per mode items/s over the whole job, steady items/s
(first file to last), time to first item, overhead per item against the bare loop, and Ray's scaling efficiency
(2 workers vs 1). ``--photo`` also times writing one photo as PNG/JPEG/WebP at ``--write-side`` (the CPU cost per
item that a GPU job must hide).

    python benchmarks/batch_throughput.py --weights-dir ../shared/weights/taesd --items 2000 --side 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from fastdecoders.batch.embedded import bare_throughput
from fastdecoders.batch.job import DecodeJob, run_decode_job
from fastdecoders.batch.plan import make_plan
from fastdecoders.batch.worker import DecoderArgs, DecodeWorker
from fastdecoders.latents import get_latent_space
from fastdecoders.shards import Shard, list_shards, write_shard


def latent_shape(decoder: DecodeWorker, side: int) -> tuple[int, int, int]:
    """(C, h, w) of one item that the decoder turns into a side x side image."""
    space = get_latent_space(decoder.decoder.latent_space_name)
    return space.channels, side // space.spatial_factor, side // space.spatial_factor


def make_inputs(folder: Path, items: int, shape: tuple[int, int, int], shard_items: int) -> None:
    g = torch.Generator().manual_seed(0)
    for k, start in enumerate(range(0, items, shard_items)):
        n = min(shard_items, items - start)
        z = torch.randn(n, *shape, generator=g)
        write_shard(folder / f"shard-{k:05d}.safetensors", Shard(z, [f"{start + i:06d}" for i in range(n)]))


def bare(args, folder: Path, worker: DecodeWorker, shape: tuple[int, int, int]) -> dict:
    plan = make_plan(list_shards([folder]), folder / "unused", "png", args.batch_size, {}, resume=False)
    units, count = [], 0
    for unit in plan.units:
        if args.bare_items and count >= args.bare_items:
            break
        units.append(unit)
        count += len(unit.ids)
    worker.decode(torch.randn(args.batch_size, *shape))  # warm-up
    items, seconds = bare_throughput(units, worker)
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
    parser.add_argument("--bare-items", type=int, default=0, help="bare loop over this many items (0: all)")
    parser.add_argument("--png-level", type=int, default=6, help="PNG zlib level of the jobs' files")
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
    worker = DecodeWorker(decoder)  # the bare loop's decoder; the engines load their own
    shape = latent_shape(worker, args.side)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        make_inputs(folder, args.items, shape, args.shard_items)
        for n, mode in enumerate(args.modes.split(",")):
            key = f"{mode}#{n}"  # modes may repeat (interleaved runs show the machine's drift)
            load, cpu = os.getloadavg(), time.process_time()
            if mode == "bare":
                result = bare(args, folder, worker, shape)
                # this process's CPU time per item (all its threads): what the engine costs beyond the decoder
                result["cpu_ms_per_item"] = round(1000 * (time.process_time() - cpu) / result["items"], 1)
                results["modes"][key] = {**result, "load": [load, os.getloadavg()]}
                print(json.dumps({key: results["modes"][key]}), flush=True)
                continue
            out = Path(tmp) / mode
            ray = mode.startswith("ray")
            job = DecodeJob((str(folder),), str(out), decoder, batch_size=args.batch_size, progress=False,
                            engine="ray" if ray else "embedded", workers=int(mode[3:]) if ray else 1,
                            cpus_per_worker=float(args.threads), num_cpus=args.num_cpus, resume=False,
                            png_level=args.png_level)  # fmt: skip
            summary = run_decode_job(job)
            keys = ("items", "written", "failed", "seconds", "items_per_s", "steady_items_per_s", "first_item_s",
                    "decoder_busy")
            results["modes"][key] = {**{k: summary[k] for k in keys}, "load": [load, os.getloadavg()]}
            if not ray:  # (Ray's actors are other processes: not counted)
                results["modes"][key]["cpu_ms_per_item"] = round(1000 * (time.process_time() - cpu) / args.items, 1)
            shutil.rmtree(out)  # the next mode writes afresh (and the disk stays small)
            print(json.dumps({key: results["modes"][key]}), flush=True)
    bares = [v["items_per_s"] for k, v in results["modes"].items() if k.startswith("bare")]
    ref = sum(bares) / len(bares)
    for key, value in results["modes"].items():
        if not key.startswith("bare"):
            rate = value["steady_items_per_s"] or value["items_per_s"]
            value["vs_bare"] = round(rate / ref, 3)
            value["overhead_ms_per_item"] = round(1000 * (1 / rate - 1 / ref), 2)
    rates: dict[str, list[float]] = {}
    for key, value in results["modes"].items():
        if key.startswith("ray"):
            rates.setdefault(key.split("#")[0], []).append(value["steady_items_per_s"] or value["items_per_s"])
    if "ray1" in rates and "ray2" in rates:
        r1, r2 = (sum(rates[m]) / len(rates[m]) for m in ("ray1", "ray2"))
        results["ray_scaling_efficiency"] = round(r2 / (2 * r1), 3)
    results["bare_items_per_s_mean"] = round(ref, 3)
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))


def _machine() -> str:
    return f"{platform.machine()} x{os.cpu_count()}, torch {torch.__version__}, {platform.platform()}"


if __name__ == "__main__":
    main()
