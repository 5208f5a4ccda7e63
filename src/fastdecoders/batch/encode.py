"""An encode job: folders/globs of photos or videos -> latents shards (``fastdecoders.shards``) + a manifest.

Sources are sorted and cut into fixed chunks of ``shard_items``; chunk k becomes ``OUT/shard-k.safetensors``,
written atomically by the driver once all its units (batches, see ``encoding``) are encoded, so a shard on disk is
complete and a rerun skips it (resume). Items that fail (an unreadable file, a video too short) are recorded in the
manifest and left out of their shard. Two engines encode the units: ``embedded`` (pictures read and resized on
background threads while the encoder runs in this process) and ``ray`` (``ray_encode``: a Ray Data pipeline with an
actor pool of encoders). With ``pixels`` the shards also hold the pictures (uint8), which makes them a training
latent cache (``fastdecoders.train.data.read_split``).

Exit codes as for decode jobs (``batch.job``): 0 all done, 1 some items failed (see the manifest), 2 bad invocation.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from fastdecoders.batch.encoding import Encoded, EncodeUnit, encode_loaded, list_sources, load_source, make_units
from fastdecoders.batch.manifest import Manifest
from fastdecoders.batch.options import ENGINES, EngineOptions
from fastdecoders.batch.ray_encode import run_ray_encode
from fastdecoders.batch.ray_engine import import_ray
from fastdecoders.errors import FastDecodersError
from fastdecoders.shards import Shard, read_header, write_shard
from fastdecoders.train.config import TeacherConfig
from fastdecoders.train.teachers import load_teacher, teacher_space
from fastdecoders.weights import TAE_ENCODERS


@dataclass(frozen=True)
class EncodeJob(EngineOptions):
    inputs: tuple[str, ...]
    out: str
    #: a TAE encoder stem (taesdxl_encoder …) or a diffusers VAE folder / hub id.
    encoder: str
    latents: str | None = None
    vae_subfolder: str | None = None
    weights_dir: str | None = None
    device: str = "cpu"
    #: square side in pixels (short-side resize + centre crop); None: native size cropped to the latent factor.
    size: int | None = None
    #: pixel frames per video item (its first frames).
    frames: int = 17
    shard_items: int = 256
    batch_size: int = 8
    #: store the pictures (uint8) too: shards usable as a training cache.
    pixels: bool = False
    #: recorded in the shards as the decoder meant for them.
    decoder: str | None = None
    #: embedded engine: units whose pictures are read ahead of the encoder.
    prefetch: int = 3

    def check(self) -> None:
        if self.shard_items < 1 or self.batch_size < 1 or self.workers < 1:
            raise FastDecodersError(f"--shard-items, --batch-size and --workers: expected >= 1, got "
                                    f"{self.shard_items}, {self.batch_size}, {self.workers}")  # fmt: skip
        if self.engine not in ENGINES:
            raise FastDecodersError(f"--engine: expected one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise FastDecodersError("--gpus-per-worker must be >= 0 and --cpus-per-worker > 0")


def teacher_config(job: EncodeJob):
    """The ``TeacherConfig`` that loads ``job``'s encoder (picklable: Ray ships it to the actors)."""
    tae = job.encoder in TAE_ENCODERS
    return TeacherConfig(encoder=job.encoder if tae else None, vae=None if tae else job.encoder,
                         vae_subfolder=job.vae_subfolder, latents=job.latents, weights_dir=job.weights_dir)  # fmt: skip


def run_encode_job(job: EncodeJob) -> dict:
    """Run ``job``; returns the summary (items, written, skipped, failed, shards, seconds, items_per_s, engine,
    workers, first_item_s …)."""
    from tqdm import tqdm


    job.check()
    if job.engine == "ray":
        import_ray()  # without the [scale] extra: one line, before anything is written
    started = time.perf_counter()
    out = Path(job.out)
    sources = list_sources(job.inputs)
    cfg = teacher_config(job)
    space = teacher_space(cfg)  # from the config alone: a bad encoder/latents pair fails before any work
    frames = space.pixel_frames(space.latent_frames(job.frames)) if any(s.kind == "video" for s in sources) else 0
    manifest = Manifest(job.manifest or out / "manifest.jsonl")
    resume = manifest.path.is_file() if job.resume is None else job.resume
    chunks = [sources[i : i + job.shard_items] for i in range(0, len(sources), job.shard_items)]
    todo = [k for k in range(len(chunks)) if not (resume and _shard_done(out, k, chunks[k]))]
    units = [u for k in todo for u in make_units(k, chunks[k], job.batch_size)]
    manifest.open()
    bar = tqdm(total=sum(len(chunks[k]) for k in todo), desc=f"encode ({job.engine})", unit="file",
               disable=None if job.progress else True)  # fmt: skip
    # per chunk still in work: its items' outcomes and the starts of its units still out
    pending = {k: {"results": [None] * len(chunks[k]), "left": set()} for k in todo}
    for u in units:
        pending[u.chunk]["left"].add(u.start)
    state = {"written": 0, "shards": 0, "first_item": None}

    def finish(unit: EncodeUnit, results: list[Encoded]) -> None:
        """A unit is encoded (called on the driver, one unit at a time): keep it; a complete chunk is written."""
        if state["first_item"] is None:
            state["first_item"] = time.perf_counter() - started
        chunk = pending.get(unit.chunk)
        if chunk is None or unit.start not in chunk["left"]:
            return  # a batch delivered twice (an engine retrying after its result was sent): one copy is kept
        chunk["results"][unit.start : unit.start + len(results)] = results
        chunk["left"].discard(unit.start)
        bar.update(len(results))
        if not chunk["left"]:
            outcomes = pending.pop(unit.chunk)["results"]
            rows, written = _write_chunk(job, out, unit.chunk, chunks[unit.chunk], outcomes, space.name)
            manifest.append(rows)
            state["written"] += written
            state["shards"] += written > 0

    try:
        if units and job.engine == "ray":
            run_ray_encode(job, units, cfg, space.spatial_factor, frames, finish)
        elif units:
            _run_embedded(job, units, cfg, space.spatial_factor, frames, finish)
    finally:
        bar.close()
        manifest.close(compact=True)
    seconds = time.perf_counter() - started
    failed = sum(manifest.rows.get(s.id, {}).get("status") == "failed" for s in sources)
    done_before = sum(len(chunks[k]) for k in range(len(chunks)) if k not in todo)
    workers = job.workers if job.engine == "ray" else 1
    return {"items": len(sources), "written": state["written"], "skipped": done_before, "failed": failed,
            "shards": state["shards"], "seconds": round(seconds, 3),
            "items_per_s": round(state["written"] / seconds, 3) if seconds > 0 else None,
            "first_item_s": None if state["first_item"] is None else round(state["first_item"], 3),
            "engine": job.engine, "workers": workers, "batch_size": job.batch_size, "out": str(out),
            "manifest": str(manifest.path), "exit_code": 1 if failed else 0}  # fmt: skip


def _run_embedded(job: EncodeJob, units: list[EncodeUnit], cfg, factor: int, frames: int,
                  finish: Callable[[EncodeUnit, list[Encoded]], None]) -> None:  # fmt: skip
    """The encoder on this thread; two reader threads load the next ``job.prefetch`` units' pictures meanwhile."""
    teacher = load_teacher(cfg, torch.device(job.device))
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fastdecoders-reader")
    ahead: deque = deque()
    todo = iter(units)

    def read_ahead() -> None:
        unit = next(todo, None)
        if unit is not None:
            ahead.append((unit, [pool.submit(load_source, s, job.size, factor, frames) for s in unit.sources]))

    try:
        for _ in range(max(1, job.prefetch)):
            read_ahead()
        while ahead:
            unit, futures = ahead.popleft()
            read_ahead()
            finish(unit, encode_loaded(teacher, [f.result() for f in futures], job.pixels))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _write_chunk(job: EncodeJob, out: Path, k: int, chunk: list, results: list[Encoded],
                 space: str) -> tuple[list[dict], int]:  # fmt: skip
    """Write chunk ``k``'s shard (its encoded items, in source order) atomically: (manifest rows, items written)."""
    rows, items = [], []
    shard = str(_shard_path(out, k))
    for source, result in zip(chunk, results, strict=True):
        row = {"id": source.id, "source": str(source.path)}
        if result.error is not None:
            rows.append({**row, "status": "failed", "error": result.error, "encoder": job.encoder, "seconds": 0.0})
            continue
        rows.append({**row, "shard": shard, "index": len(items), "output": shard, "status": "ok", "error": None,
                     "encoder": job.encoder, "seconds": round(result.seconds, 6)})  # fmt: skip
        items.append((source, result.tensors))
    if items:
        write_shard(_shard_path(out, k), Shard.from_items([t for _, t in items], [s.id for s, _ in items],
                                                          latent_space=space, encoder=job.encoder,
                                                          decoder=job.decoder,
                                                          items=[{"source": str(s.path)} for s, _ in items],
                                                          extra={"size": job.size}))  # fmt: skip
    return rows, len(items)


def _shard_path(out: Path, k: int) -> Path:
    return out / f"shard-{k:05d}.safetensors"


def _shard_done(out: Path, k: int, chunk: list) -> bool:
    """Chunk k's shard is there, readable, and holds only this chunk's items (a rerun with the same inputs)."""
    path = _shard_path(out, k)
    try:
        ids = set(read_header(path)["ids"]) if path.is_file() else None
    except FastDecodersError:
        return False
    return ids is not None and ids <= {s.id for s in chunk}
