"""Files in and out: images, videos, latents; every write goes to a temp file and is renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fastdecoders.errors import FastDecodersError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")


# -- atomic writes --------------------------------------------------------------------------------------------------


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; it replaces ``path`` only if the block succeeds (no half-written files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Like ``atomic_path`` for a folder: built in a temp folder, then swapped in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# -- images ---------------------------------------------------------------------------------------------------------


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder`` and below, sorted; a clear error if the folder is missing or empty."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FastDecodersError(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FastDecodersError(f"{folder} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """(3, H, W) float32 RGB in [0, 1]. Corrupt or truncated files raise FastDecodersError."""
    try:
        with Image.open(path) as im:
            im.load()
            array = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise FastDecodersError(f"{path} is not a readable image ({e})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(255)


def center_crop_resize(image: torch.Tensor, size: int | tuple[int, int], multiple: int = 8) -> torch.Tensor:
    """Deterministic short-side resize (bicubic, antialiased) and centre crop of (3, H, W) to ``size``.

    ``size`` int: a square; a pair: (height, width). Both are rounded down to ``multiple``.
    """
    height, width = (size, size) if isinstance(size, int) else size
    height, width = height // multiple * multiple, width // multiple * multiple
    _, h, w = image.shape
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    resized = torch.nn.functional.interpolate(
        image[None], size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
    )[0].clamp(0, 1)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return resized[:, top : top + height, left : left + width]


def crop_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Centre-crop (…, H, W) so that both sides are multiples of ``multiple`` (no resampling)."""
    h, w = image.shape[-2:]
    nh, nw = h // multiple * multiple, w // multiple * multiple
    if nh == 0 or nw == 0:
        raise FastDecodersError(f"image of {h}x{w} is smaller than one {multiple}x{multiple} latent cell")
    top, left = (h - nh) // 2, (w - nw) // 2
    return image[..., top : top + nh, left : left + nw]


def to_uint8(image01: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    return image01.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def write_image(image01: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write (3, H, W) RGB in [0, 1] as PNG/JPEG (by suffix), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(image01)).save(tmp, format=Image.registered_extensions().get(path.suffix.lower()))
    return path


def image_grid(rows: list[list[torch.Tensor]], pad: int = 4) -> torch.Tensor:
    """Tile equally sized (3, H, W) images in [0, 1] into one grid image, white padding between cells."""
    h, w = rows[0][0].shape[-2:]
    ncols = max(len(r) for r in rows)
    grid = torch.ones(3, len(rows) * (h + pad) - pad, ncols * (w + pad) - pad)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            grid[:, i * (h + pad) : i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = cell.float().cpu()
    return grid


# -- video ----------------------------------------------------------------------------------------------------------


def write_video(frames01: torch.Tensor, path: str | os.PathLike, fps: float = 16.0, crf: int = 18) -> Path:
    """Write (T, 3, H, W) RGB in [0, 1] as an H.264 MP4 (even sizes padded), atomically. Needs PyAV."""
    try:
        import av
    except ImportError:
        raise FastDecodersError("writing video needs PyAV: pip install 'fastdecoders[video]'") from None
    path = Path(path)
    frames = frames01.detach().float().clamp(0, 1)
    pad_h, pad_w = frames.shape[-2] % 2, frames.shape[-1] % 2
    if pad_h or pad_w:  # yuv420p needs even sizes
        frames = torch.nn.functional.pad(frames, (0, pad_w, 0, pad_h), mode="replicate")
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=round(fps))
            stream.width, stream.height = frames.shape[-1], frames.shape[-2]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(to_uint8(frame), format="rgb24")))
            container.mux(stream.encode())
    return path


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[torch.Tensor, float]:
    """((T, 3, H, W) float RGB in [0, 1], fps) of a video file, or of a folder of frame images."""
    path = Path(path)
    if path.is_dir():
        frames = [read_image(p) for p in list_images(path)[:max_frames]]
        return torch.stack(frames), 24.0
    try:
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or 24)
            frames = []
            for frame in container.decode(stream):
                frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except ImportError:
        raise FastDecodersError("reading video needs PyAV: pip install 'fastdecoders[video]'") from None
    except Exception as e:  # PyAV raises its own error types for corrupt/truncated containers
        raise FastDecodersError(f"{path} is not a readable video ({type(e).__name__}: {e})") from None
    if not frames:
        raise FastDecodersError(f"{path} holds no video frames")
    return torch.stack(frames).float().div(255), fps


# -- latents files --------------------------------------------------------------------------------------------------


def read_latents(path: str | os.PathLike) -> torch.Tensor:
    """The one tensor in a safetensors file (key ``latents`` preferred), or a ``.pt``/``.pth`` tensor file."""
    from fastdecoders.weights import read_state_dict

    path = Path(path)
    if path.suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise FastDecodersError(f"{path} is not a readable tensor file ({type(e).__name__}: {e})") from None
        tensors = {"latents": obj} if isinstance(obj, torch.Tensor) else obj
    else:
        tensors, _ = read_state_dict(path)
    if not isinstance(tensors, dict) or not tensors:
        raise FastDecodersError(f"{path} holds no tensors")
    if "latents" in tensors:
        return tensors["latents"]
    if len(tensors) > 1:
        raise FastDecodersError(f"{path} holds {len(tensors)} tensors {sorted(tensors)}; name the latents 'latents'")
    return next(iter(tensors.values()))


def write_latents(latents: torch.Tensor, path: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({"latents": latents.detach().contiguous().cpu()}, str(tmp))
    return Path(path)
