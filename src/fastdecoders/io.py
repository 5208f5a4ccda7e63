"""Files in and out: images, videos, latents; every write goes to a temp file and is renamed into place."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fastdecoders.errors import FastDecodersError, require_finite

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")


# -- atomic writes --------------------------------------------------------------------------------------------------


def _umask() -> int:
    """The process umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path, default: int) -> int:
    """Permission bits a new output gets: those of the file it replaces, else ``default & ~umask`` (what ``open`` and
    ``mkdir`` give); temp files are created 0600/0700, so without this every output would be private."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return default & ~_umask()


def _write_error(path: Path, error: OSError) -> FastDecodersError:
    """One line for a failed write: what could not be written and the system's reason (permission, disk full …)."""
    reason = error.strerror or type(error).__name__
    where = f" ({error.filename})" if error.filename and str(error.filename) != str(path) else ""
    return FastDecodersError(f"cannot write {path}: {reason}{where}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; it replaces ``path`` only if the block succeeds (no half-written files).

    The result gets the replaced file's permissions, else the umask's (like a plain ``open``). A folder in the way,
    a read-only folder or a full disk is one ``FastDecodersError``.
    """
    path = Path(path)
    if path.is_dir():
        raise FastDecodersError(f"cannot write {path}: it is a folder; expected a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
        os.close(fd)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        yield Path(tmp)
        try:
            os.chmod(tmp, _mode_for(path, 0o666))
            os.replace(tmp, path)
        except OSError as e:
            raise _write_error(path, e) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Like ``atomic_path`` for a folder: built in a new temp folder beside ``path``, then renamed into place.

    Nothing the caller did not ask to delete is deleted: an existing non-empty folder (or a file) at ``path`` is one
    ``FastDecodersError`` unless ``overwrite``; the current folder and its parents are never replaced. With
    ``overwrite`` the old folder is moved aside, the new one renamed in, and only then the old one removed.
    """
    path = Path(path).absolute()
    if path.exists():
        if Path.cwd().resolve().is_relative_to(path.resolve()):
            raise FastDecodersError(f"refusing to replace {path}: it is the current folder or one of its parents")
        if not path.is_dir():
            raise FastDecodersError(f"cannot write folder {path}: a file of that name exists")
        if any(path.iterdir()) and not overwrite:
            raise FastDecodersError(f"{path} exists and is not empty; pass --overwrite to replace it, or another -o")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    except OSError as e:
        raise _write_error(path, e) from None
    old: Path | None = None
    try:
        yield tmp
        try:
            os.chmod(tmp, _mode_for(path, 0o777))
            if path.exists():
                old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old."))
                os.replace(path, old / path.name)
            os.replace(tmp, path)
        except OSError as e:
            if old is not None and not path.exists():  # put the old folder back
                os.replace(old / path.name, path)
            raise _write_error(path, e) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


LOCK_NAME = ".fastdecoders.lock"


@contextmanager
def locked_folder(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold ``folder`` (created if needed) for one writer: a second ``what`` (e.g. "eval") writing the same folder is
    one ``FastDecodersError`` instead of silently keeping only the last writer's results. An advisory lock
    (``fcntl.flock`` on ``folder/.fastdecoders.lock``, released by the OS even on a crash); a folder this call created
    and that holds nothing but the lock at the end is removed again."""
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_NAME, "a+")  # noqa: SIM115 (held open for the whole block)
    except OSError as e:
        raise _write_error(folder, e) from None
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise FastDecodersError(f"{folder} is being written by another {what} ({holder}); wait for it to "
                                        f"finish or pass another -o") from None  # fmt: skip
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield folder
        finally:
            if created and os.listdir(folder) == [LOCK_NAME]:  # nothing written: leave nothing behind
                os.unlink(folder / LOCK_NAME)
                folder.rmdir()
    finally:
        handle.close()


def output_file(path: str | os.PathLike, suffixes: tuple[str, ...], what: str) -> Path:
    """``path`` checked as an output file name before any work is done: not a folder, a suffix in ``suffixes``
    (``what`` says what is written, e.g. "the grid image")."""
    path = Path(path)
    if path.is_dir():
        raise FastDecodersError(f"output {path}: expected a file name for {what}, got an existing folder")
    if path.suffix.lower() not in suffixes:
        got = f"suffix {path.suffix!r}" if path.suffix else "no suffix"
        raise FastDecodersError(f"output {path}: expected a file name ending in {', '.join(suffixes)} for {what}, "
                                f"got {got}")  # fmt: skip
    return path


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
    """(3, H, W) float32 RGB in [0, 1]. 8- and 16-bit files keep their scale (16-bit grey is divided by 65535,
    not clipped at 255); float images must hold values in [0, 1]. Corrupt, truncated, oversized (decompression bomb)
    or otherwise unsupported files raise FastDecodersError."""
    try:
        with Image.open(path) as im:
            im.load()
            array = _rgb01(im, path)
    except Image.DecompressionBombError as e:  # PIL's guard against files that expand to gigabytes
        limit = str(e).split(", could be")[0]
        raise FastDecodersError(f"{path} is too large to read safely: {limit} (decompression-bomb guard)") from None
    except PermissionError as e:
        raise FastDecodersError(f"cannot read {path}: {e.strerror}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise FastDecodersError(f"{path} is not a readable image ({e})") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _rgb01(im: Image.Image, path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from an opened image, by its pixel mode (PIL's ``convert("RGB")`` clips 16-bit
    grey to white and turns floats black, so those modes are scaled here)."""
    if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):  # 16-bit grey (PNG opens as "I")
        grey = np.asarray(im, dtype=np.float32) / 65535
    elif im.mode == "F":
        grey = np.asarray(im, dtype=np.float32)
        if not np.isfinite(grey).all() or grey.min() < 0 or grey.max() > 1:
            low, high = float(np.nanmin(grey)), float(np.nanmax(grey))
            raise FastDecodersError(f"{path}: a float image with values in [{low:.4g}, {high:.4g}]; expected values "
                                    f"in [0, 1] (or an 8/16-bit image)")  # fmt: skip
    elif im.mode == "I":
        raise FastDecodersError(f"{path}: a 32-bit integer image; expected 8- or 16-bit pixels (or floats in [0, 1])")
    else:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    return np.repeat(grey[:, :, None], 3, axis=2)


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
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8; NaN/Inf (a broken decoder) is an error, never black pixels."""
    require_finite(image01, "the image to write (decoder output)")
    return image01.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def write_image(image01: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write (3, H, W) RGB in [0, 1] as PNG/JPEG (by suffix), atomically."""
    path = output_file(path, IMAGE_SUFFIXES, "an image")
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
    require_finite(frames01, "the video to write (decoder output)")
    return write_video_frames(iter(frames01), path, fps, crf)[0]


def write_video_frames(
    frames01: Iterator[torch.Tensor], path: str | os.PathLike, fps: float = 16.0, crf: int = 18
) -> tuple[Path, int]:
    """Write (3, H, W) RGB frames in [0, 1], taken one at a time from an iterator, as an H.264 MP4 (even sizes
    padded): a streaming decoder's frames go to the encoder as they come, never all in memory. Atomic: if the
    iterator raises (or a frame is not finite), nothing is written. Returns (path, frames written). Needs PyAV."""
    try:
        import av
    except ImportError:
        raise FastDecodersError("writing video needs PyAV: pip install 'fastdecoders[video]'") from None
    path = output_file(path, (".mp4",), "a video")
    fps = check_fps(fps)
    count = 0
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = None
            for frame in frames01:
                require_finite(frame, "the video to write (decoder output)")
                frame = frame.detach().float().clamp(0, 1)
                pad_h, pad_w = frame.shape[-2] % 2, frame.shape[-1] % 2
                if pad_h or pad_w:  # yuv420p needs even sizes
                    frame = torch.nn.functional.pad(frame[None], (0, pad_w, 0, pad_h), mode="replicate")[0]
                if stream is None:
                    stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                    stream.width, stream.height = frame.shape[-1], frame.shape[-2]
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf)}
                container.mux(stream.encode(av.VideoFrame.from_ndarray(to_uint8(frame), format="rgb24")))
                count += 1
            if stream is None:
                raise FastDecodersError(f"{path}: no frames to write")
            container.mux(stream.encode())
    return path, count


def check_fps(fps: float) -> float:
    """A frame rate for an output video: a finite number > 0 (0.4 stays 0.4: one frame every 2.5 s)."""
    if not isinstance(fps, int | float) or not math.isfinite(fps) or fps <= 0:
        raise FastDecodersError(f"--fps: expected a frame rate > 0, got {fps}")
    return float(fps)


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


#: bytes per element of safetensors dtypes (header sizes are checked before anything is read)
_SAFETENSORS_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                      "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip
#: a file is read only if its tensors take at most this fraction of the available RAM
LOAD_MEMORY_FRACTION = 0.5


def readable_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` if it is a file this process may read; else one error saying which (missing, folder, permission)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise FastDecodersError(f"{what} {path} is a folder; expected a file")
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise FastDecodersError(f"{what} {path} does not exist") from None
    except OSError as e:  # PermissionError above all: never reported as a missing file
        raise FastDecodersError(f"cannot read {what} {path}: {e.strerror or type(e).__name__}") from None
    return path


def declared_bytes(path: Path) -> tuple[int, str]:
    """(bytes, description) that a safetensors or torch zip file says its tensors take, read from its header or
    zip directory only; (0, "") when the format does not say."""
    if path.suffix == ".safetensors":
        try:
            with open(path, "rb") as f:
                length = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(length)) if 0 < length <= 100 * 2**20 else None
        except (OSError, ValueError, UnicodeDecodeError):
            header = None
        if not isinstance(header, dict):
            return 0, ""  # not readable as safetensors: the reader says so
        total, shapes = 0, []
        for key, entry in header.items():
            if key == "__metadata__" or not isinstance(entry, dict) or not isinstance(entry.get("shape"), list):
                continue
            shape = [int(n) for n in entry["shape"] if isinstance(n, int)]
            total += math.prod(shape) * _SAFETENSORS_BYTES.get(str(entry.get("dtype")), 4)
            shapes.append(f"{'x'.join(map(str, shape))} {str(entry.get('dtype')).lower()}")
        return total, ", ".join(shapes[:3]) + (" …" if len(shapes) > 3 else "")
    if zipfile.is_zipfile(path):  # torch.save's format: one zip entry per storage under */data/
        with zipfile.ZipFile(path) as archive:
            return sum(i.file_size for i in archive.infolist() if "/data/" in i.filename), "tensors"
    return 0, ""


def format_bytes(n: float) -> str:
    """Bytes for people: "3.1 MB", "51.5 GB" (decimal units)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def available_memory() -> int:
    """Bytes of RAM available now (psutil when installed, else /proc/meminfo's MemAvailable, else free pages)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_declared_size(path: Path, what: str) -> None:
    """Refuse (one line) a file whose declared tensors would not fit in the available memory, before reading it."""
    nbytes, shapes = declared_bytes(path)
    available = available_memory()
    if nbytes > LOAD_MEMORY_FRACTION * available:
        raise FastDecodersError(
            f"{what} {path} declares {shapes} ({format_bytes(nbytes)}); only {format_bytes(available)} of memory is "
            f"available (at most {LOAD_MEMORY_FRACTION:.0%} is used for loading): not read"
        )


def load_pickle(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU: tensors and plain values only; anything else is one line.

    A pickle that names other code (a class, a function) is refused, and the message never suggests lifting that.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        culprit = f" ({named.group(1)})" if named else ""
        raise FastDecodersError(
            f"{path} is not a readable {what}: its pickle needs code beyond tensors and plain values{culprit}, "
            f"which is never run; save tensors only (safetensors, or torch.save of a dict of tensors)"
        ) from None
    except Exception as e:  # a corrupt zip, a truncated file, not a torch file at all
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise FastDecodersError(f"{path} is not a readable {what} ({type(e).__name__}: {first})") from None


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, on CPU; an unreadable file is one line. Check its declared size
    (``check_declared_size``) first."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise FastDecodersError(f"{path} is not a readable safetensors file ({e})") from None


def read_latents(path: str | os.PathLike) -> torch.Tensor:
    """The one tensor in a safetensors file (key ``latents`` preferred), or a ``.pt``/``.pth`` tensor file.

    Checked: the declared size fits memory (before reading), every value is a tensor, the latents are floating
    point and non-empty (finiteness and shape are ``LatentSpace.check_latents``' job).
    """
    path = readable_file(path, "latents file")
    check_declared_size(path, "latents file")
    if path.suffix in (".pt", ".pth"):
        obj = load_pickle(path, "latents file")
        tensors = {"latents": obj} if isinstance(obj, torch.Tensor) else obj
    else:
        tensors, _ = read_safetensors(path)
    if not isinstance(tensors, dict) or not tensors:
        raise FastDecodersError(f"{path} holds no tensors (got {type(tensors).__name__})")
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise FastDecodersError(f"{path}: expected tensors, got {type(value).__name__} under key {key!r}")
    if "latents" in tensors:
        latents = tensors["latents"]
    elif len(tensors) > 1:
        raise FastDecodersError(f"{path} holds {len(tensors)} tensors {sorted(tensors)}; name the latents 'latents'")
    else:
        latents = next(iter(tensors.values()))
    if not latents.is_floating_point():
        raise FastDecodersError(f"{path}: expected floating-point latents, got {latents.dtype}")
    if latents.numel() == 0:
        raise FastDecodersError(f"{path}: latents of shape {tuple(latents.shape)} are empty (an axis of size 0)")
    return latents


def write_latents(latents: torch.Tensor, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        save_file({"latents": latents.detach().contiguous().cpu()}, str(tmp))
    return Path(path)
