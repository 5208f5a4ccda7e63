"""Evaluation inputs: images, video clips or latent files, with deterministic preprocessing and a skip list.

Every input becomes an ``Item`` (found without reading pixels) and, when loaded, a ``Sample`` whose pixels are
(T, 3, H, W) RGB in [0, 1] — T = 1 for an image — so images and clips go through one code path.

Preprocessing (``Preprocess``), the same on every run:

* ``size`` N: short side resized to N (bicubic, antialiased), centre crop to N×N
  (``fastdecoders.io.center_crop_resize``). No size: native resolution, centre-cropped to a multiple of the
  latent factor (no resampling).
* clips: clip k of a video holds frames ``start_k, start_k + step, …`` (``clip_length`` of them), with
  ``start_k = k · clip_length · step``: consecutive clips from frame 0. A video too short for a clip is skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.io import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    center_crop_resize,
    crop_to_multiple,
    read_image,
    read_latents,
)
from fastdecoders.io import read_video as _read_video

LATENT_SUFFIXES = (".safetensors", ".pt", ".pth")
KINDS = ("images", "videos", "latents")


@dataclass(frozen=True)
class Preprocess:
    size: int | None = None
    #: crop sides to a multiple of this (the latent spaces' spatial factors).
    multiple: int = 8
    clip_length: int = 17
    frame_step: int = 1
    clips_per_video: int = 1

    def __post_init__(self):
        if self.size is not None and (self.size <= 0 or self.size % self.multiple):
            raise FastDecodersError(f"--size must be a positive multiple of {self.multiple}, got {self.size}")
        if self.clip_length < 1 or self.frame_step < 1 or self.clips_per_video < 1:
            raise FastDecodersError(
                f"clip length, frame step and clips per video must be >= 1, got "
                f"{self.clip_length}, {self.frame_step}, {self.clips_per_video}"
            )

    def key(self, kind: str) -> str:
        """A short string naming everything that changes the pixels (part of the latent cache key)."""
        base = f"s{self.size or 'native'}-m{self.multiple}"
        return f"{base}-t{self.clip_length}-k{self.frame_step}" if kind == "videos" else base


@dataclass(frozen=True)
class Item:
    #: unique and file-system safe: the path relative to the input root, '/' -> '__', plus '#clipK' / '#K'.
    key: str
    path: Path
    kind: str
    #: clip index (videos) or batch index (latent files).
    index: int = 0

    @property
    def label(self) -> str:
        return str(self.path) + (f" (clip {self.index})" if self.kind == "videos" and self.index else "")

    def source_stamp(self) -> str:
        """Size and modification time of the source: a cached result of a changed file is not reused."""
        target = self.path
        if target.is_dir():  # a frame folder: its newest frame
            frames = [p for p in target.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
            return f"{len(frames)}:{max((p.stat().st_mtime_ns for p in frames), default=0)}"
        stat = target.stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"


@dataclass
class Sample:
    item: Item
    #: (T, 3, H, W) in [0, 1]; None for latent files (no originals).
    pixels: torch.Tensor | None
    fps: float = 24.0
    #: latents read from a file (latent inputs only), in the file's layout without a batch axis.
    latents: torch.Tensor | None = None


@dataclass
class SkipList:
    """Inputs left out of a run and why; the report lists them all."""

    entries: list[dict[str, str]]

    def __init__(self):
        self.entries = []

    def add(self, path: str | os.PathLike, why: str) -> None:
        self.entries.append({"path": str(path), "why": " ".join(str(why).split())})


# -- discovery ------------------------------------------------------------------------------------------------------


def _key(root: Path, path: Path) -> str:
    rel = path.relative_to(root) if root in path.parents else Path(path.name)
    return str(rel).replace(os.sep, "__")


def _read_list(list_file: Path) -> list[Path]:
    """A text file naming one input per line (relative to the file's folder); blank lines and '#' comments skipped."""
    lines = [ln.strip() for ln in list_file.read_text().splitlines()]
    return [(list_file.parent / ln) for ln in lines if ln and not ln.startswith("#")]


def discover(
    kind: str, source: str | os.PathLike, prep: Preprocess, limit: int | None = None, latent_ndim: int | None = None
) -> list[Item]:
    """Inputs of ``kind`` under ``source`` (a folder, or a .txt list of paths), sorted; one error if none.

    ``latent_ndim`` (latent inputs): the rank of one unbatched latent, 3 (C, h, w) or 4 (C, t, h, w); a file whose
    tensor has one more axis holds a batch, and each element becomes an item.

    Files of other types are ignored; a listed path that does not exist still becomes an item (and is skipped
    with its reason when loaded), so the report names it.
    """
    if kind not in KINDS:
        raise FastDecodersError(f"unknown input kind {kind!r}; expected one of {', '.join(KINDS)}")
    source = Path(source)
    if source.is_file() and source.suffix == ".txt":
        root, paths = source.parent, _read_list(source)
    elif source.is_dir():
        root, paths = source, _scan(kind, source)
    else:
        raise FastDecodersError(f"--{kind} {source} is neither a folder nor a .txt list of files")
    if not paths:
        wanted = {
            "images": IMAGE_SUFFIXES,
            "videos": VIDEO_SUFFIXES + ("folders of frames",),
            "latents": LATENT_SUFFIXES,
        }[kind]
        raise FastDecodersError(f"{source} holds no {kind} (looked for {', '.join(wanted)})")
    paths = paths[:limit] if limit else paths
    keys = _unique_keys(root, paths)
    if kind == "videos":
        return [Item(keys[p] + (f"#clip{k}" if k else ""), p, kind, k) for p in paths
                for k in range(prep.clips_per_video)]  # fmt: skip
    if kind == "latents":
        return [item for p in paths for item in _latent_items(keys[p], p, latent_ndim)]
    return [Item(keys[p], p, kind) for p in paths]


def _unique_keys(root: Path, paths: list[Path]) -> dict[Path, str]:
    """Cache keys per path: relative to the root, or the file name for listed files elsewhere; listed files that
    share a name get their folders added until the keys differ (a cache key must never name two inputs)."""
    keys = {p: _key(root, p) for p in paths}
    depth = 2
    while len(set(keys.values())) < len(keys) and depth <= max(len(p.parts) for p in paths):
        seen: dict[str, int] = {}
        for k in keys.values():
            seen[k] = seen.get(k, 0) + 1
        keys = {p: "__".join(p.parts[-depth:]) if seen[k] > 1 else k for p, k in keys.items()}
        depth += 1
    return keys


def _scan(kind: str, folder: Path) -> list[Path]:
    if kind == "images":
        return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if kind == "latents":
        return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in LATENT_SUFFIXES)
    videos = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    frame_dirs = [
        d for d in folder.rglob("*") if d.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.iterdir())
    ]
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
        frame_dirs.append(folder)  # --videos pointed straight at one folder of frames
    return sorted(videos + frame_dirs)


def _latent_items(key: str, path: Path, latent_ndim: int | None) -> list[Item]:
    """One item per batch element of a latents file (read once here: latent files are small)."""
    try:
        latents = read_latents(path)
        count = 1 if latents.ndim == latent_ndim else len(latents)
    except FastDecodersError:
        count = 1  # unreadable: one item, skipped with its reason on load
    return [Item(key + (f"#{i}" if count > 1 else ""), path, "latents", i) for i in range(count)]


# -- loading --------------------------------------------------------------------------------------------------------


def _prepare(frames: torch.Tensor, prep: Preprocess) -> torch.Tensor:
    """(T, 3, H, W) in [0, 1] -> preprocessed (T, 3, H', W')."""
    if prep.size:
        return torch.stack([center_crop_resize(f, prep.size, prep.multiple) for f in frames])
    return crop_to_multiple(frames, prep.multiple)


def load(item: Item, prep: Preprocess, latent_ndim: int | None = None) -> Sample:
    """Read and preprocess one input; any problem with it is a FastDecodersError (the runner skips the input).

    ``latent_ndim`` (latent inputs): the rank one element of a batch has, 3 (C, h, w) or 4 (C, t, h, w).
    """
    if item.kind == "images":
        image = read_image(item.path)
        return Sample(item, _prepare(image[None], prep))
    if item.kind == "videos":
        return _load_clip(item, prep)
    return _load_latents(item, latent_ndim)


def _load_clip(item: Item, prep: Preprocess) -> Sample:
    span = prep.clip_length * prep.frame_step
    start = item.index * span
    need = start + (prep.clip_length - 1) * prep.frame_step + 1
    if not item.path.exists():
        raise FastDecodersError(f"{item.path} does not exist")
    frames, fps = _read_video(item.path, max_frames=need)
    if len(frames) < need:
        what = f"clip {item.index} needs frames {start}..{need - 1}" if item.index else f"a clip needs {need}"
        raise FastDecodersError(
            f"{item.path} has {len(frames)} frames; {what} "
            f"(--clip-length {prep.clip_length}, --frame-step {prep.frame_step})"
        )
    return Sample(item, _prepare(frames[start : need : prep.frame_step], prep), fps=fps / prep.frame_step)


def _load_latents(item: Item, latent_ndim: int | None) -> Sample:
    latents = read_latents(item.path)
    if latent_ndim is not None and latents.ndim == latent_ndim:  # a single latent without its batch axis
        latents = latents[None]
    if item.index >= len(latents):
        raise FastDecodersError(f"{item.path} holds {len(latents)} latents, not {item.index + 1}")
    if not latents.is_floating_point():
        raise FastDecodersError(f"{item.path}: expected floating-point latents, got {latents.dtype}")
    return Sample(item, None, latents=latents[item.index].float())
