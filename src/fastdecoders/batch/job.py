"""A decode job over many latents shards: plan, run on an engine, record every item in the manifest, summarise.

Exit codes (the CLI returns ``summary["exit_code"]``): 0 every item is done; 1 the job ran to its end but some items
(or whole shards) failed, see the manifest; 2 a bad invocation (FastDecodersError: nothing was decoded).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from fastdecoders.batch.embedded import run_embedded
from fastdecoders.batch.manifest import Manifest
from fastdecoders.batch.options import ENGINES, EngineOptions
from fastdecoders.batch.outputs import FORMATS, clean_stale_temps, write_output
from fastdecoders.batch.plan import Unit, make_plan
from fastdecoders.batch.ray_engine import import_ray, run_ray
from fastdecoders.batch.worker import Decoded, DecoderArgs, DecodeWorker
from fastdecoders.errors import FastDecodersError
from fastdecoders.shards import list_shards


@dataclass(frozen=True)
class DecodeJob(EngineOptions):
    """Everything a decode job needs (picklable)."""

    inputs: tuple[str, ...]
    out: str
    decoder: DecoderArgs
    fmt: str = "png"
    #: JPEG/WebP quality, 1-100 (PNG is lossless).
    quality: int = 90
    #: PNG zlib level 0-9 (Pillow's default 6; 1 writes several times faster, files somewhat larger).
    png_level: int = 6
    fps: float = 16.0
    batch_size: int = 8
    #: embedded engine: writer threads; ray: read and write tasks at once (at least ``workers``).
    writers: int = 2
    #: embedded engine: batches read ahead.
    prefetch: int = 2

    def check(self) -> None:
        if self.fmt not in FORMATS:
            raise FastDecodersError(f"--format: expected one of {', '.join(FORMATS)}, got {self.fmt!r}")
        if not 1 <= self.quality <= 100:
            raise FastDecodersError(f"--quality: expected 1-100, got {self.quality}")
        if not 0 <= self.png_level <= 9:
            raise FastDecodersError(f"--png-level: expected 0-9, got {self.png_level}")
        if self.batch_size < 1 or self.workers < 1:
            raise FastDecodersError(f"--batch-size and --workers: expected >= 1, got {self.batch_size}, {self.workers}")
        if self.engine not in ENGINES:
            raise FastDecodersError(f"--engine: expected one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise FastDecodersError("--gpus-per-worker must be >= 0 and --cpus-per-worker > 0")


def write_unit(unit: Unit, decoded: Decoded, decoder: str, fmt: str, quality: int, fps: float,
               png_level: int = 6) -> list[dict]:  # fmt: skip
    """Write the unit's items that need writing; their manifest rows (a failed write fails its item only)."""
    rows = []
    for k, item_id in enumerate(unit.ids):
        if not unit.write[k]:
            continue
        row = {"id": item_id, "shard": unit.shard, "index": unit.start + k, "output": unit.outputs[k],
               "decoder": decoder, "status": "ok", "error": None, "bytes": None}  # fmt: skip
        start = time.perf_counter()
        if decoded.errors[k] is not None:
            row.update(status="failed", error=decoded.errors[k], output=None)
        else:
            try:
                row["bytes"] = write_output(decoded.arrays[k], Path(unit.outputs[k]), fmt, quality, fps, png_level)
            except (FastDecodersError, OSError) as e:
                row.update(status="failed", error=str(e).splitlines()[0], output=None)
        row["seconds"] = round(decoded.seconds + time.perf_counter() - start, 6)
        # not kept in the manifest: when the file was written (wall clock) and the item's share of decoder time
        row["finished_at"], row["decode_seconds"] = time.time(), decoded.seconds
        rows.append(row)
    return rows


def run_decode_job(job: DecodeJob) -> dict:
    """Run ``job``; returns the summary (items, written, skipped, failed, seconds, items_per_s, engine, workers,
    first_item_s: from the call to the first file, steady_items_per_s: from the first file to the last, manifest,
    exit_code)."""
    from tqdm import tqdm

    job.check()
    if job.engine == "ray":
        import_ray()  # without the [scale] extra: one line, before anything is written
    started = time.perf_counter()
    out_dir = Path(job.out)
    clean_stale_temps(out_dir)
    manifest = Manifest(job.manifest or out_dir / "manifest.jsonl")
    resume = manifest.path.is_file() if job.resume is None else job.resume
    plan = make_plan(list_shards(job.inputs), out_dir, job.fmt, job.batch_size, manifest.rows, resume)
    for key in [k for k, r in manifest.rows.items() if r.get("index") is None]:
        manifest.rows.pop(key)  # a shard that failed to read before is judged afresh
    manifest.open()
    manifest.append(plan.failed)
    bar = tqdm(total=plan.pending, desc=f"decode ({job.engine})", unit="img", disable=None if job.progress else True)
    # first/last: wall-clock times at which files were written (set by the writer, so that Ray's buffering of
    # result rows on their way to the driver does not distort the steady rate)
    state = {"first_item": None, "first": None, "last": None, "written": 0, "decode": 0.0}

    def record(rows: list[dict]) -> None:
        manifest.append(rows)
        if state["first_item"] is None and rows:
            state["first_item"] = time.perf_counter() - started
        for row in rows:
            t = row.get("finished_at")
            if t is None:
                continue
            if state["first"] is None or t < state["first"]:
                state["first"] = t
            state["last"] = t if state["last"] is None else max(state["last"], t)
        state["written"] += len(rows)
        state["decode"] += sum(row.get("decode_seconds", 0.0) for row in rows)
        bar.update(len(rows))

    # picklable (Ray ships it to the write tasks): a module-level function with the job's output settings
    write = partial(write_unit, fmt=job.fmt, quality=job.quality, fps=job.fps, png_level=job.png_level)
    run_started = time.perf_counter()
    try:
        if plan.units and job.engine == "ray":
            run_ray(job, plan.units, write, record)
        elif plan.units:
            worker = DecodeWorker(job.decoder)
            run_embedded(plan.units, worker, partial(write, decoder=worker.name), record, prefetch=job.prefetch,
                         writers=job.writers)  # fmt: skip
    finally:
        bar.close()
        manifest.close(compact=True)
    seconds = time.perf_counter() - started
    workers = job.workers if job.engine == "ray" else 1
    first_round = job.batch_size * workers
    ids = {i for u in plan.units for i in u.ids} | {r["id"] for r in plan.failed}
    failed = sum(1 for i in ids if manifest.rows.get(i, {}).get("status") == "failed")
    return {"engine": job.engine, "workers": workers, "items": plan.total,
            "written": state["written"], "skipped": plan.skipped, "failed": failed,
            "failed_shards": len(plan.failed), "seconds": round(seconds, 3),
            "run_seconds": round(time.perf_counter() - run_started, 3),
            "items_per_s": round(state["written"] / seconds, 3) if seconds > 0 else None,
            "first_item_s": None if state["first_item"] is None else round(state["first_item"], 3),
            "steady_items_per_s": _steady(state, first_round),
            "decoder_busy": _busy(state, first_round, workers),
            "batch_size": job.batch_size, "out": str(out_dir), "manifest": str(manifest.path),
            "exit_code": 1 if failed else 0}  # fmt: skip


def _busy(state: dict, first_round: int, workers: int) -> float | None:
    """Fraction of the steady window (see ``_steady``) the decoders spent decoding: 1.0 means the I/O was fully
    hidden behind the decoder (a noise-robust in-run measure of the overlap on a shared machine)."""
    span = (state["last"] or 0) - (state["first"] or 0)
    if span <= 0 or state["written"] <= first_round:
        return None
    decode = state["decode"] * (state["written"] - first_round) / state["written"]
    return round(decode / (span * workers), 3)


def _steady(state: dict, first_round: int) -> float | None:
    """Items/s from the first file written to the last, less the first round of batches (``first_round`` items: one
    batch per decoder): the rate once started, what a long job runs at."""
    span = (state["last"] or 0) - (state["first"] or 0)
    done = state["written"] - first_round
    return round(done / span, 3) if span > 0 and done > 0 else None
