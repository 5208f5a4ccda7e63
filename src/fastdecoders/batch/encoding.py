"""The encoder side of an encode job, shared by both engines: the sources, the units of work, loading pictures and
encoding one unit.

Sources are sorted and cut into chunks of ``shard_items`` (chunk k becomes shard k); each chunk is cut into units at
fixed positions (0, B, 2B … for batch size B), whatever fails to load, so both engines, and a resumed job, call the
encoder on the same batches and write the same shards bit for bit (fp32). Within a unit, the loaded items of one
shape that follow each other form one encoder call (images); clips are encoded one by one.
"""

from __future__ import annotations

import glob
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, center_crop_resize, crop_to_multiple, read_image, read_video


@dataclass(frozen=True)
class Source:
    path: Path
    id: str
    kind: str  # image | video


@dataclass(frozen=True)
class EncodeUnit:
    """Sources ``start:start + len(sources)`` of chunk ``chunk``: one batch."""

    chunk: int
    start: int
    sources: tuple[Source, ...]

    def as_row(self) -> dict:
        """JSON-ready (Ray Data rows)."""
        return {"chunk": self.chunk, "start": self.start,
                "sources": [[str(s.path), s.id, s.kind] for s in self.sources]}  # fmt: skip

    @classmethod
    def from_row(cls, row: dict) -> EncodeUnit:
        sources = tuple(Source(Path(p), i, k) for p, i, k in row["sources"])
        return cls(int(row["chunk"]), int(row["start"]), sources)


@dataclass
class Encoded:
    """One item's outcome: its shard tensors (``latents``, and ``pixels`` uint8 when kept) or the error, and its
    share of its encoder call's seconds."""

    tensors: dict[str, torch.Tensor] | None
    error: str | None
    seconds: float = 0.0


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


def make_units(chunk: int, sources: list[Source], batch_size: int) -> list[EncodeUnit]:
    """Chunk ``chunk``'s sources cut at 0, B, 2B …"""
    return [EncodeUnit(chunk, i, tuple(sources[i : i + batch_size])) for i in range(0, len(sources), batch_size)]


def load_source(source: Source, size: int | None, factor: int, frames: int) -> torch.Tensor | str:
    """(3, H, W) or (T, 3, H, W) in [0, 1], sized for the encoder (``size``: short-side resize + centre crop;
    else the native size cropped to ``factor``); or the one-line reason it cannot be loaded."""
    try:
        if source.kind == "image":
            pixels = read_image(source.path)
        else:
            pixels, _ = read_video(source.path, max_frames=frames)
            if len(pixels) < frames:
                raise FastDecodersError(f"{source.path} has {len(pixels)} frames; --frames asks for {frames}")
    except FastDecodersError as e:
        return str(e)
    if size is not None:
        flat = pixels.reshape(-1, *pixels.shape[-3:])
        pixels = torch.stack([center_crop_resize(x, size, multiple=factor) for x in flat]).reshape(
            *pixels.shape[:-2], *([size // factor * factor] * 2)
        )
    return crop_to_multiple(pixels, factor)


def encode_loaded(teacher, loaded: list[torch.Tensor | str], keep_pixels: bool) -> list[Encoded]:
    """Encode one unit's loaded items (``load_source`` results, errors passed through) with ``teacher``
    (``fastdecoders.train.teachers.Teacher``): runs of equal-shaped images in one call, clips one by one."""
    results: list[Encoded] = [Encoded(None, x) if isinstance(x, str) else None for x in loaded]  # type: ignore[misc]
    ok = [i for i, x in enumerate(loaded) if not isinstance(x, str)]
    n = 0
    while n < len(ok):
        m = n + 1
        while m < len(ok) and loaded[ok[m]].shape == loaded[ok[n]].shape:
            m += 1
        batch = [loaded[i] for i in ok[n:m]]
        start = time.perf_counter()
        if batch[0].ndim == 3:  # images: one encoder call
            latents = list(teacher.encode(torch.stack(batch)))
        else:  # clips: (T, 3, H, W) -> (t, C, h, w), one call each
            latents = [teacher.encode(p) for p in batch]
        seconds = (time.perf_counter() - start) / len(batch)
        for i, pixels, z in zip(ok[n:m], batch, latents, strict=True):
            tensors = {"latents": z}
            if keep_pixels:
                tensors["pixels"] = pixels.mul(255).round().to(torch.uint8)
            results[i] = Encoded(tensors, None, seconds)
        n = m
    return results
