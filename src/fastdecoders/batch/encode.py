"""An encode job: folders/globs of photos or videos -> latents shards (``fastdecoders.shards``) + a manifest.

Sources are sorted and cut into fixed chunks of ``shard_items``; chunk k becomes ``OUT/shard-k.safetensors``,
written atomically once all its items are encoded, so a shard on disk is complete and a rerun skips it (resume).
Items that fail (an unreadable file, a video too short) are recorded in the manifest and left out of their shard.
Pictures are read and resized on background threads while the encoder runs. With ``pixels`` the shards also hold
the pictures (uint8), which makes them a training latent cache (``fastdecoders.train.data.read_split``).
"""

from __future__ import annotations

import glob
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from fastdecoders.batch.manifest import Manifest
from fastdecoders.errors import FastDecodersError
from fastdecoders.io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, center_crop_resize, crop_to_multiple, read_image, read_video
from fastdecoders.shards import Shard, read_header, write_shard


@dataclass(frozen=True)
class EncodeJob:
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
    manifest: str | None = None
    resume: bool | None = None
    progress: bool = True


@dataclass(frozen=True)
class Source:
    path: Path
    id: str
    kind: str  # image | video


def list_sources(inputs: tuple[str, ...]) -> list[Source]:
    """Images and videos from folders (recursively) and globs; ids are paths below the folder (or the glob's
    fixed part) without suffix. One error for an input that matches nothing."""
    sources = []
    for text in inputs:
        root = Path(text)
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.is_file())
        elif root.is_file():
            files, root = [root], root.parent
        else:
            files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            root = Path(text.split("*")[0].split("?")[0].split("[")[0] or ".")
            root = root if root.is_dir() else root.parent
        files = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES]
        if not files:
            raise FastDecodersError(f"{text}: expected images ({', '.join(IMAGE_SUFFIXES)}) or videos "
                                    f"({', '.join(VIDEO_SUFFIXES)}), found none")  # fmt: skip
        for p in files:
            kind = "image" if p.suffix.lower() in IMAGE_SUFFIXES else "video"
            sources.append(Source(p, p.relative_to(root).with_suffix("").as_posix(), kind))
    ids = [s.id for s in sources]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise FastDecodersError(f"two inputs give the item id {dup!r}; give folders whose files differ in name")
    return sources


def _load(source: Source, job: EncodeJob, factor: int, frames: int) -> torch.Tensor:
    """(3, H, W) or (T, 3, H, W) in [0, 1], sized for the encoder."""
    if source.kind == "image":
        pixels = read_image(source.path)
    else:
        pixels, _ = read_video(source.path, max_frames=frames)
        if len(pixels) < frames:
            raise FastDecodersError(f"{source.path} has {len(pixels)} frames; --frames asks for {frames}")
    if job.size is not None:
        flat = pixels.reshape(-1, *pixels.shape[-3:])
        pixels = torch.stack([center_crop_resize(x, job.size, multiple=factor) for x in flat]).reshape(
            *pixels.shape[:-2], *([job.size // factor * factor] * 2)
        )
    return crop_to_multiple(pixels, factor)


def run_encode_job(job: EncodeJob) -> dict:
    """Run ``job``; returns the summary (items, written, skipped, failed, shards, seconds, items_per_s …)."""
    from tqdm import tqdm

    from fastdecoders.train.config import TeacherConfig
    from fastdecoders.train.teachers import load_teacher
    from fastdecoders.weights import TAE_ENCODERS

    if job.shard_items < 1 or job.batch_size < 1:
        raise FastDecodersError(f"--shard-items and --batch-size: expected >= 1, got {job.shard_items}, "
                                f"{job.batch_size}")  # fmt: skip
    started = time.perf_counter()
    out = Path(job.out)
    sources = list_sources(job.inputs)
    tae = job.encoder in TAE_ENCODERS
    cfg = TeacherConfig(encoder=job.encoder if tae else None, vae=None if tae else job.encoder,
                        vae_subfolder=job.vae_subfolder, latents=job.latents, weights_dir=job.weights_dir)  # fmt: skip
    manifest = Manifest(job.manifest or out / "manifest.jsonl")
    resume = manifest.path.is_file() if job.resume is None else job.resume
    chunks = [sources[i : i + job.shard_items] for i in range(0, len(sources), job.shard_items)]
    todo = [k for k in range(len(chunks)) if not (resume and _shard_done(out, k, chunks[k]))]
    teacher = load_teacher(cfg, torch.device(job.device)) if todo else None
    frames = 0
    if teacher is not None and any(s.kind == "video" for s in sources):
        frames = teacher.space.pixel_frames(teacher.space.latent_frames(job.frames))  # one error for a bad count
    manifest.open()
    bar = tqdm(total=sum(len(chunks[k]) for k in todo), desc="encode", unit="file",
               disable=None if job.progress else True)  # fmt: skip
    written = shards = 0
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fastdecoders-reader")
    try:
        factor = teacher.space.spatial_factor if teacher is not None else 8
        load = lambda s: _load(s, job, factor, frames)  # noqa: E731
        pending = {k: [pool.submit(load, s) for s in chunks[k]] for k in todo[:1]}
        for n, k in enumerate(todo):
            if n + 1 < len(todo):  # read the next chunk while this one is encoded
                pending[todo[n + 1]] = [pool.submit(load, s) for s in chunks[todo[n + 1]]]
            rows, items = _encode_chunk(chunks[k], pending.pop(k), teacher, job, out, k, bar)
            if items:
                shard = Shard.from_items([t for _, t in items], [s.id for s, _ in items],
                                         latent_space=teacher.space.name, encoder=job.encoder,
                                         decoder=job.decoder, items=[{"source": str(s.path)} for s, _ in items],
                                         extra={"size": job.size})  # fmt: skip
                write_shard(_shard_path(out, k), shard)
                shards += 1
            manifest.append(rows)
            written += sum(r["status"] == "ok" for r in rows)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        manifest.close(compact=True)
    seconds = time.perf_counter() - started
    failed = sum(manifest.rows.get(s.id, {}).get("status") == "failed" for s in sources)
    done_before = sum(len(chunks[k]) for k in range(len(chunks)) if k not in todo)
    return {"items": len(sources), "written": written, "skipped": done_before, "failed": failed, "shards": shards,
            "seconds": round(seconds, 3), "items_per_s": round(written / seconds, 3) if seconds > 0 else None,
            "engine": "embedded", "workers": 1, "out": str(out), "manifest": str(manifest.path),
            "exit_code": 1 if failed else 0}  # fmt: skip


def _shard_path(out: Path, k: int) -> Path:
    return out / f"shard-{k:05d}.safetensors"


def _shard_done(out: Path, k: int, chunk: list[Source]) -> bool:
    """Chunk k's shard is there, readable, and holds only this chunk's items (a rerun with the same inputs)."""
    path = _shard_path(out, k)
    try:
        ids = set(read_header(path)["ids"]) if path.is_file() else None
    except FastDecodersError:
        return False
    return ids is not None and ids <= {s.id for s in chunk}


def _encode_chunk(chunk: list[Source], futures: list, teacher, job: EncodeJob, out: Path, k: int, bar):
    """Encode one chunk in batches of equal-shaped items: (manifest rows, [(source, tensors)] of the done ones)."""
    rows, loaded = [], []
    shard = str(_shard_path(out, k))
    for source, future in zip(chunk, futures, strict=True):
        try:
            loaded.append((source, future.result()))
        except FastDecodersError as e:
            row = {"id": source.id, "source": str(source.path), "status": "failed", "error": str(e)}
            rows.append({**row, "encoder": job.encoder, "seconds": 0.0})
            bar.update(1)
    items = []
    i = 0
    while i < len(loaded):
        j = i + 1
        while j < len(loaded) and j - i < job.batch_size and loaded[j][1].shape == loaded[i][1].shape:
            j += 1
        start = time.perf_counter()
        batch = loaded[i:j]
        if batch[0][1].ndim == 3:  # images: one encoder call for the batch
            latents = list(teacher.encode(torch.stack([p for _, p in batch])))
        else:  # clips: one call per clip ((T, 3, H, W) -> (t, C, h, w))
            latents = [teacher.encode(p) for _, p in batch]
        per_item = (time.perf_counter() - start) / len(batch)
        for (source, pixels), z in zip(batch, latents, strict=True):
            tensors = {"latents": z}
            if job.pixels:
                tensors["pixels"] = pixels.mul(255).round().to(torch.uint8)
            row = {"id": source.id, "source": str(source.path), "shard": shard, "index": len(items), "output": shard}
            rows.append({**row, "status": "ok", "error": None, "encoder": job.encoder, "seconds": round(per_item, 6)})
            items.append((source, tensors))
        bar.update(len(batch))
        i = j
    return rows, items
