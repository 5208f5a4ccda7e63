"""Where previews go: a callable, a folder of PNGs, or one animated file (WebP, GIF, MP4) of the whole trajectory.

Every sink takes ``PreviewFrame``s through ``write`` and finishes in ``close`` (the animation is written there, in one
atomic step, so an interrupted run never leaves half a file).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from fastdecoders.errors import FastDecodersError
from fastdecoders.io import atomic_path, image_grid, to_uint8, write_image, write_video

ANIMATIONS = (".webp", ".gif", ".mp4")
#: frames of a video preview shown side by side in one picture (evenly spaced)
MAX_FRAMES_SHOWN = 8


@dataclass
class PreviewFrame:
    """One step's preview. ``images``: (B, 3, H, W), or (B, 3, T, H, W) for video, RGB in [0, 1] on the CPU;
    ``x0``: the same for the scheduler's predicted clean latents, when asked for and available."""

    step: int
    timestep: float
    images: torch.Tensor
    x0: torch.Tensor | None = None

    def picture(self) -> torch.Tensor:
        """(3, H', W') in [0, 1]: one row per batch item (video: evenly spaced frames side by side), the x0 rows
        below the latents rows."""
        rows = _rows(self.images) + (_rows(self.x0) if self.x0 is not None else [])
        return rows[0][0] if len(rows) == 1 and len(rows[0]) == 1 else image_grid(rows, pad=2)


def _rows(images: torch.Tensor) -> list[list[torch.Tensor]]:
    if images.ndim == 4:
        return [[image] for image in images]
    t = images.shape[2]
    keep = torch.linspace(0, t - 1, min(t, MAX_FRAMES_SHOWN)).round().long().tolist()
    return [[clip[:, i] for i in keep] for clip in images]


class CallableSink:
    def __init__(self, fn: Callable[[PreviewFrame], object]):
        self.fn = fn

    def write(self, frame: PreviewFrame) -> None:
        self.fn(frame)

    def close(self) -> None:
        pass


class MemorySink:
    """Keeps every ``PreviewFrame`` in ``frames`` (the default sink: for notebooks and tests)."""

    def __init__(self):
        self.frames: list[PreviewFrame] = []

    def write(self, frame: PreviewFrame) -> None:
        self.frames.append(frame)

    def close(self) -> None:
        pass


class FolderSink:
    """``step_0000.png``, ``step_0005.png`` … in a folder (each written atomically as it comes)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.written: list[Path] = []

    def write(self, frame: PreviewFrame) -> None:
        self.written.append(write_image(frame.picture(), self.folder / f"step_{frame.step:04d}.png"))

    def close(self) -> None:
        pass


class AnimationSink:
    """The trajectory as one animated WebP/GIF (Pillow) or H.264 MP4 (PyAV), written at ``close``."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps = path, fps
        self.pictures: list[torch.Tensor] = []
        self.written: list[Path] = []

    def write(self, frame: PreviewFrame) -> None:
        self.pictures.append(frame.picture())

    def close(self) -> None:
        if not self.pictures:
            return
        pictures, self.pictures = self.pictures, []
        if self.path.suffix.lower() == ".mp4":
            self.written.append(write_video(torch.stack(pictures), self.path, fps=self.fps))
            return
        images = [Image.fromarray(to_uint8(p)) for p in pictures]
        fmt = "WEBP" if self.path.suffix.lower() == ".webp" else "GIF"
        extra = {"lossless": True} if fmt == "WEBP" else {}
        with atomic_path(self.path) as tmp:
            images[0].save(tmp, format=fmt, save_all=True, append_images=images[1:], duration=round(1000 / self.fps),
                           loop=0, **extra)  # fmt: skip
        self.written.append(self.path)


def make_sink(sink: object, fps: float = 8.0) -> CallableSink | MemorySink | FolderSink | AnimationSink:
    """None -> in memory; a callable -> called with each ``PreviewFrame``; a path ending .webp/.gif/.mp4 -> one
    animation; any other path -> a folder of PNGs."""
    if sink is None:
        return MemorySink()
    if callable(sink):
        return CallableSink(sink)
    if isinstance(sink, (str, os.PathLike)):
        path = Path(sink)
        if path.suffix.lower() in ANIMATIONS:
            return AnimationSink(path, fps)
        if path.suffix and not path.is_dir():
            raise FastDecodersError(
                f"preview sink: expected a folder or a file ending {', '.join(ANIMATIONS)}, got {str(sink)!r}"
            )
        return FolderSink(path)
    raise FastDecodersError(f"preview sink: expected None, a callable or a path, got {type(sink).__name__}")
