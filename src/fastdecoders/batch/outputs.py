"""Output files of a decode job: names from item ids, atomic image/MP4 writes, and cleaning after a killed driver."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from fastdecoders.errors import FastDecodersError
from fastdecoders.io import atomic_path, write_video

#: output format -> Pillow format name (None: video)
FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "mp4": None}
# a temp file of io.atomic_path: ".NAME.RANDOM.SUFFIX" beside NAME (left behind only by a killed process)
_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}(?P<suffix>\.[A-Za-z0-9]+)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def output_path(out_dir: Path, item_id: str, fmt: str) -> Path:
    """``OUT/ID.FMT``; '/' in ids makes subfolders, other unusual characters become '_'."""
    parts = [_UNSAFE.sub("_", p) for p in PurePosixPath(item_id).parts if p not in ("/", "..", ".")]
    if not parts:
        raise FastDecodersError(f"item id {item_id!r} gives no usable file name")
    return out_dir.joinpath(*parts[:-1], f"{parts[-1]}.{fmt}")


def write_output(array: np.ndarray, path: Path, fmt: str, quality: int, fps: float, png_level: int = 6) -> int:
    """Write uint8 (H, W, 3) as an image, or (T, H, W, 3) as an MP4, atomically; returns the file's size."""
    if FORMATS[fmt] is None:
        if array.ndim != 4:
            raise FastDecodersError(f"--format mp4 needs video latents, got an image of shape {array.shape}")
        frames = torch.from_numpy(array).permute(0, 3, 1, 2).float().div(255)
        write_video(frames, path, fps=fps)
    else:
        if array.ndim != 3:
            raise FastDecodersError(f"--format {fmt} writes images; video latents need --format mp4")
        data = encode_image(array, fmt, quality, png_level)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    return path.stat().st_size


def encode_image(array: np.ndarray, fmt: str, quality: int, png_level: int = 6) -> bytes:
    """uint8 (H, W, 3) -> the file's bytes (``quality`` for JPEG/WebP; PNG is lossless, ``png_level`` its zlib
    level: 1 is several times faster to write than Pillow's default 6, for somewhat larger files)."""
    buffer = io.BytesIO()
    options = {"compress_level": png_level} if fmt == "png" else {"quality": quality}
    Image.fromarray(array).save(buffer, format=FORMATS[fmt], **options)
    return buffer.getvalue()


def verified(row: dict | None) -> bool:
    """An item recorded as done whose file is there with the recorded size."""
    if row is None or row.get("status") != "ok" or not row.get("output"):
        return False
    path = Path(row["output"])
    return path.is_file() and path.stat().st_size == row.get("bytes")


def clean_stale_temps(out_dir: Path) -> int:
    """Delete temp files that a killed process left in ``out_dir`` (and below); returns how many."""
    removed = 0
    if not out_dir.is_dir():
        return 0
    for root, _, files in os.walk(out_dir):
        for name in files:
            m = _TEMP.match(name)
            if m and m["name"].endswith(m["suffix"]):
                os.unlink(os.path.join(root, name))
                removed += 1
    return removed
