"""Training data: photos and video clips, a fixed validation split, a latent cache, and random crops from it.

The teacher's encoder runs once per item, when the cache is built; training epochs only read the cache. The cache is
a folder of latents shards (``fastdecoders.shards``, the format ``fastdecoders encode`` writes; ``shard_items``
items per file, each shard written atomically). Per item it holds:

* ``pixels``: the (resized) image, (3, H, W) uint8, or a clip, (T, 3, H, W) uint8;
* ``latents``: (C, H/f, W/f) float32, or (t, C, h, w) for a clip (NTCHW: frames first);
* ``latents_flip``: the same for the horizontally flipped image (flips never need the encoder again);
* ``teacher`` / ``teacher_flip``: the teacher decoder's output on those latents, uint8 like ``pixels`` (stored only
  when a loss needs them; 8 bits are 59 dB away from the float output).

Training crops are aligned to latent cells: a crop of ``crop`` pixels at (y, x) is the latent window at (y/f, x/f)
of the whole image's latents, which is what a decoder sees in real use (latents of a whole picture). Which item,
flip and window each sample takes is a pure function of (seed, step, rank), so a resumed run sees the same batches.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from fastdecoders.errors import FastDecodersError
from fastdecoders.eval.metrics import psnr, ssim
from fastdecoders.io import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    atomic_write_text,
    crop_to_multiple,
    list_images,
    read_image,
    read_video,
)
from fastdecoders.latents import LatentSpace, to_01
from fastdecoders.progress import progress as show_progress
from fastdecoders.shards import Shard, list_shards, read_shard, write_shard
from fastdecoders.train.config import DataConfig, TrainConfig
from fastdecoders.train.distributed import Dist, barrier

CACHE_VERSION = 2  # 2: latents shards (fastdecoders.shards)


# -- sources and the split ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One input file (an image or a video) or a folder of video frames."""

    path: str
    kind: str  # "image" | "video"
    #: a stable name for the split and the logs: the path below the configured folder's parent.
    name: str


def list_videos(folder: str | Path) -> list[Path]:
    """Video files and folders of frames (folders holding images only) below ``folder``, sorted."""
    folder = Path(folder)
    found = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        children = list(d.iterdir())
        if len(children) > 1 and all(c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES for c in children):
            found.append(d)
    if not found:
        raise FastDecodersError(f"{folder} holds no videos ({', '.join(VIDEO_SUFFIXES)}) or folders of frames")
    return sorted(found)


def list_sources(folders: list[str], kind: str) -> list[Source]:
    sources = []
    for folder in folders:
        root = Path(folder)
        paths = list_images(root) if kind == "image" else list_videos(root)
        sources += [Source(str(p), kind, str(p.relative_to(root.parent))) for p in paths]
    return sources


def _split_key(source: Source) -> str:
    return hashlib.sha1(source.name.encode()).hexdigest()


def split_sources(cfg: DataConfig, kind: str) -> tuple[list[Source], list[Source]]:
    """(train, val) sources of ``kind``: val folders when given, else ``val_count`` items held out by path hash
    (a fixed choice that does not move when files are added)."""
    train = list_sources(cfg.images if kind == "image" else cfg.videos, kind)
    explicit = cfg.val_images if kind == "image" else cfg.val_videos
    if explicit:
        val = list_sources(explicit, kind)
        held = {s.path for s in val}
        train = [s for s in train if s.path not in held]
    else:
        if cfg.val_count >= len(train):
            raise FastDecodersError(
                f"data: {len(train)} {kind} items cannot spare data.val_count={cfg.val_count} for validation"
            )
        chosen = {s.path for s in sorted(train, key=_split_key)[: cfg.val_count]}
        val = [s for s in train if s.path in chosen]
        train = [s for s in train if s.path not in chosen]
    if cfg.max_items is not None:
        train = train[: cfg.max_items]
    if not train or not val:
        raise FastDecodersError(f"data: no {kind} items left for {'training' if not train else 'validation'}")
    return train, val


# -- preparing one source -------------------------------------------------------------------------------------------


def shrink(pixels01: torch.Tensor, short_side: int | None) -> torch.Tensor:
    """(…, 3, H, W) in [0, 1] scaled down (antialiased bicubic) so that the short side is ``short_side``; never up."""
    if short_side is None or min(pixels01.shape[-2:]) <= short_side:
        return pixels01
    h, w = pixels01.shape[-2:]
    scale = short_side / min(h, w)
    size = (max(short_side, round(h * scale)), max(short_side, round(w * scale)))
    flat = pixels01.reshape(-1, *pixels01.shape[-3:])
    out = F.interpolate(flat, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return out.reshape(*pixels01.shape[:-2], *size)


def centre_crop(pixels: torch.Tensor, size: int) -> torch.Tensor:
    h, w = pixels.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return pixels[..., top : top + size, left : left + size]


def to_uint8(pixels01: torch.Tensor) -> torch.Tensor:
    return pixels01.clamp(0, 1).mul(255).round().to(torch.uint8)


def prepare(source: Source, cfg: DataConfig, space: LatentSpace, split: str) -> list[torch.Tensor]:
    """The items (uint8 pixels) one source gives: one image, or up to ``clips_per_video`` clips (T, 3, H, W).

    Training items keep the whole (resized) picture, cropped to a multiple of the latent factor; validation items
    are centre crops of ``val_size``. Too-small items give an empty list.
    """
    f = space.spatial_factor
    if source.kind == "image":
        clips = [read_image(source.path)]
    else:
        need = cfg.clips_per_video * cfg.frames * cfg.frame_step
        video, _ = read_video(source.path, max_frames=need)
        video = video[:: cfg.frame_step]
        clips = [video[i * cfg.frames : (i + 1) * cfg.frames] for i in range(len(video) // cfg.frames)]
    items = []
    for pixels in clips:
        pixels = shrink(pixels, cfg.resize)
        if split == "val" and cfg.val_size is not None:
            if min(pixels.shape[-2:]) < cfg.val_size:
                continue
            pixels = centre_crop(pixels, cfg.val_size)
        elif min(pixels.shape[-2:]) < (cfg.crop if split == "train" else f):
            continue
        items.append(to_uint8(crop_to_multiple(pixels, f)))
    return items


# -- the cache ------------------------------------------------------------------------------------------------------


@dataclass
class Split:
    """One split's cached items, each a list with an entry per item (flip/teacher lists may be None)."""

    names: list[str] = field(default_factory=list)
    pixels: list[torch.Tensor] = field(default_factory=list)
    latents: list[torch.Tensor] = field(default_factory=list)
    latents_flip: list[torch.Tensor] | None = None
    teacher: list[torch.Tensor] | None = None
    teacher_flip: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.pixels)

    def to(self, device: torch.device) -> Split:
        move = lambda xs: None if xs is None else [x.to(device) for x in xs]  # noqa: E731
        return Split(self.names, move(self.pixels), move(self.latents), move(self.latents_flip), move(self.teacher),
                     move(self.teacher_flip))  # fmt: skip


@dataclass
class CacheInfo:
    folder: Path
    key: str
    items: dict[str, int]
    skipped: list[str]
    #: the teacher decoder's validation PSNR/SSIM against the original pixels, or None without a teacher decoder.
    teacher_val: dict[str, float] | None
    seconds: float
    reused: bool = False


def cache_key(cfg: DataConfig, teacher_fingerprint: str, sources: dict[str, list[Source]], flips: bool,
              teacher_outputs: bool) -> str:  # fmt: skip
    """Changes whenever anything that goes into the cached tensors changes (files, settings, teacher weights)."""
    files = {split: [(s.name, Path(s.path).stat().st_size if Path(s.path).is_file() else 0) for s in items]
             for split, items in sources.items()}  # fmt: skip
    settings = {
        "version": CACHE_VERSION, "teacher": teacher_fingerprint, "files": files, "resize": cfg.resize,
        "val_size": cfg.val_size, "crop": cfg.crop, "flips": flips, "teacher_outputs": teacher_outputs,
        "frames": cfg.frames, "frame_step": cfg.frame_step, "clips_per_video": cfg.clips_per_video,
    }  # fmt: skip
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _shard_path(folder: Path, split: str, index: int) -> Path:
    return folder / f"{split}-{index:05d}.safetensors"


def _metrics(decoded: torch.Tensor, pixels: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-frame PSNR/SSIM of decoded frames ([-1, 1]) against uint8 pixels, both (N, 3, H, W)."""
    reference = pixels.float() / 255
    out = to_01(decoded)
    return psnr(out, reference).tolist(), ssim(out, reference).tolist()


def _encode_item(pixels: torch.Tensor, teacher, flips: bool, teacher_outputs: bool, val: bool) -> dict:
    """The cached tensors of one item (and, for validation, the teacher's metrics on it)."""
    frames = pixels if pixels.ndim == 4 else pixels[None]  # images are one-frame batches
    x01 = frames.float() / 255
    out: dict = {"pixels": pixels, "latents": None}
    variants = [("", x01)] + ([("_flip", x01.flip(-1))] if flips and not val else [])
    for suffix, x in variants:
        z = teacher.encode(x)
        out[f"latents{suffix}"] = z if pixels.ndim == 4 else z[0]
        if teacher.has_decoder and (teacher_outputs or val):
            decoded = teacher.decode(z)
            out[f"teacher{suffix}"] = to_uint8(to_01(decoded if pixels.ndim == 4 else decoded[0]))
            if val:
                out["metrics"] = _metrics(decoded, frames)
    return out


def build_cache(folder: Path, sources: dict[str, list[Source]], cfg: DataConfig, teacher, flips: bool,
                teacher_outputs: bool, progress: bool = True) -> None:  # fmt: skip
    """Encode every source into shards under ``folder``; shards already there (an interrupted build) are kept.

    The shards are latents shards (``fastdecoders.shards``): ``latents`` plus ``pixels``/``latents_flip``/
    ``teacher``/``teacher_flip`` per item (pictures of different sizes are padded, their shapes recorded)."""
    folder.mkdir(parents=True, exist_ok=True)
    total = sum(len(v) for v in sources.values())
    bar = show_progress(total=total, desc="caching latents", unit="file", enabled=progress)
    for split, items in sources.items():
        for shard, start in enumerate(range(0, len(items), cfg.shard_items)):
            path = _shard_path(folder, split, shard)
            chunk = items[start : start + cfg.shard_items]
            if path.is_file():
                bar.update(len(chunk))
                continue
            tensors, names, entries, skipped = [], [], [], []
            for source in chunk:
                prepared = prepare(source, cfg, teacher.space, split)
                if not prepared:
                    skipped.append(source.name)
                for clip, pixels in enumerate(prepared):
                    done = _encode_item(pixels, teacher, flips, teacher_outputs, split == "val")
                    names.append(source.name + (f"#{clip}" if source.kind == "video" else ""))
                    entries.append({"metrics": done.pop("metrics", None)})
                    tensors.append({k: v for k, v in done.items() if v is not None})
                bar.update(1)
            write_shard(path, Shard.from_items(tensors, names, latent_space=teacher.space.name,
                                               encoder=teacher.description, items=entries,
                                               extra={"split": split, "skipped": skipped}))  # fmt: skip
    bar.close()


def load_split(folder: Path, split: str) -> tuple[Split, list[str], list[list[float]]]:
    """(items, skipped source names, per-item teacher [psnr frames, ssim frames]) of one split's shards."""
    paths, shard = [], 0
    while (path := _shard_path(folder, split, shard)).is_file():
        paths.append(path)
        shard += 1
    return read_split(paths)


def read_split(paths: list[Path]) -> tuple[Split, list[str], list[list[float]]]:
    """Training items from latents shards: the cache's own, or shards written by ``fastdecoders encode --pixels``
    (they need ``pixels``; the other tensors are optional). Returns (items, skipped sources, teacher metrics)."""
    data, skipped, metrics = Split(), [], []
    lists: dict[str, list[torch.Tensor]] = {"latents_flip": [], "teacher": [], "teacher_flip": []}
    for path in paths:
        shard = read_shard(path)
        skipped += shard.extra.get("skipped", [])
        if len(shard) and "pixels" not in shard.tensors:
            raise FastDecodersError(f"{path}: training needs the pictures too; write the shards with "
                                    "'fastdecoders encode --pixels'")  # fmt: skip
        for i in range(len(shard)):
            item = shard.item(i)
            data.names.append(shard.ids[i])
            data.pixels.append(item["pixels"])
            data.latents.append(item["latents"])
            for name, values in lists.items():
                if name in item:
                    values.append(item[name])
            entry = shard.items[i] if shard.items is not None else {}
            if entry.get("metrics") is not None:
                metrics.append(entry["metrics"])
    for name, values in lists.items():
        # a list is kept only when every item has the tensor (all or none are written)
        setattr(data, name, values if values and len(values) == len(data) else None)
    return data, skipped, metrics


def rank_shards(cfg: DataConfig, rank: int, world: int) -> tuple[list[Path], list[Path]]:
    """(this process's training shards, the validation shards) of ``data.shards`` / ``data.val_shards``.

    Training shard i goes to process i mod world, so each process reads (and holds) only its own share; every process
    reads the validation shards. Without ``val_shards`` the last shard of ``data.shards`` is held out for validation.
    """
    paths = list_shards(cfg.shards)
    if cfg.val_shards:
        val = list_shards(cfg.val_shards)
        paths = [p for p in paths if p not in set(val)]
    else:
        val, paths = paths[-1:], paths[:-1]
    if len(paths) < world:
        held = "" if cfg.val_shards else " (the last one is held out for validation)"
        raise FastDecodersError(f"data.shards: {world} processes need at least {world} training shards, got "
                                f"{len(paths)}{held}; write smaller shards (encode --shard-items)")  # fmt: skip
    return paths[rank::world], val


def load_shards(cfg: DataConfig, rank: int, world: int) -> tuple[Split, Split, dict]:
    """(train, val, info) straight from latents shards (``data.shards``): no cache is built; this process loads only
    its own training shards (``rank_shards``). The info dict has the keys ``prepare_data``'s has."""
    import time

    start = time.perf_counter()
    mine, val_paths = rank_shards(cfg, rank, world)
    train, skipped, _ = read_split(mine)
    val, skipped_val, metrics = read_split(val_paths)
    if not len(train) or not len(val):
        raise FastDecodersError(f"data.shards: no {'training' if not len(train) else 'validation'} items in "
                                f"{[str(p) for p in (mine if not len(train) else val_paths)]}")  # fmt: skip
    teacher_val = None
    if metrics:
        teacher_val = {"psnr": mean([mean(m[0]) for m in metrics]), "ssim": mean([mean(m[1]) for m in metrics])}
    return train, val, {"folder": ", ".join(str(p) for p in mine), "train_items": len(train), "val_items": len(val),
                        "teacher_val": teacher_val, "skipped": skipped + skipped_val,
                        "seconds": time.perf_counter() - start, "reused": True}  # fmt: skip



def prepare_data(cfg: TrainConfig, teacher, out: Path, d: Dist, kind: str) -> tuple[Split, Split, dict]:
    """Build (process 0) or reuse the latent cache, then load both splits: (train, val, cache info).
    With ``data.shards``: encode's shards, nothing to build, each process reads only its own share."""
    import time

    if cfg.data.shards:
        return load_shards(cfg.data, d.rank, d.world)
    train_sources, val_sources = split_sources(cfg.data, "image" if kind == "image" else "video")
    sources = {"train": train_sources, "val": val_sources}
    teacher_outputs = cfg.loss.uses("distill")
    key = cache_key(cfg.data, teacher.fingerprint, sources, cfg.data.flips, teacher_outputs)
    folder = Path(cfg.data.cache_dir or out / "cache") / key
    done = folder / "index.json"
    start, reused = time.perf_counter(), done.is_file()
    if d.main and not reused:
        build_cache(folder, sources, cfg.data, teacher, cfg.data.flips, teacher_outputs)
    barrier(d)
    train, skipped_train, _ = load_split(folder, "train")
    val, skipped_val, metrics = load_split(folder, "val")
    if not len(train) or not len(val):
        raise FastDecodersError(
            f"data: no usable {'training' if not len(train) else 'validation'} items "
            f"(all smaller than data.crop={cfg.data.crop} / data.val_size={cfg.data.val_size}?)"
        )
    teacher_val = None
    if metrics:
        teacher_val = {"psnr": mean([mean(m[0]) for m in metrics]), "ssim": mean([mean(m[1]) for m in metrics])}
    seconds = time.perf_counter() - start
    if d.main and not reused:
        index = {"key": key, "train": len(train), "val": len(val), "teacher": teacher.description,
                 "teacher_val": teacher_val, "skipped": skipped_train + skipped_val, "seconds": seconds}  # fmt: skip
        atomic_write_text(done, json.dumps(index, indent=2))
    if reused:
        seconds = json.loads(done.read_text()).get("seconds", 0.0)
    info = {"folder": str(folder), "train_items": len(train), "val_items": len(val), "teacher_val": teacher_val,
            "skipped": skipped_train + skipped_val, "seconds": seconds, "reused": reused}  # fmt: skip
    return train, val, info

# -- batches --------------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """Decoder-ready training/validation data on the device.

    Images: latents (B, C, h, w), pixels/teacher (B, 3, H, W) in [-1, 1].
    Clips: latents (B, t, C, h, w) (NTCHW), pixels/teacher (B, T, 3, H, W) in [-1, 1].
    """

    latents: torch.Tensor
    pixels: torch.Tensor
    teacher: torch.Tensor | None

    @property
    def is_video(self) -> bool:
        return self.latents.ndim == 5

    @property
    def num_images(self) -> int:
        """Decoded frames in this batch (what images/s counts)."""
        return self.pixels.shape[0] * (self.pixels.shape[1] if self.is_video else 1)


def _to_pm1(x: torch.Tensor) -> torch.Tensor:
    return x.float().div(127.5).sub(1)


def _seed(*values: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions, unlike ``hash``)."""
    digest = hashlib.sha256(json.dumps(values).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Batches:
    """Random crops and flips of a split's items, a pure function of the step: ``batch(step)``.

    Items are visited epoch by epoch in ``DistributedSampler`` order (every process its own share); sample
    ``k`` of process ``rank`` is position ``step·batch_size + k`` of that process's endless item stream.
    """

    def __init__(self, data: Split, space: LatentSpace, crop: int, batch_size: int, seed: int, flips: bool,
                 rank: int = 0, world: int = 1, device: torch.device | str = "cpu"):  # fmt: skip
        from torch.utils.data.distributed import DistributedSampler

        self.data, self.f, self.cells = data, space.spatial_factor, crop // space.spatial_factor
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.flips = flips and data.latents_flip is not None
        self.device = torch.device(device)
        self.sampler = DistributedSampler(range(len(data)), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self._epoch_order: tuple[int, list[int]] = (-1, [])

    @property
    def per_epoch(self) -> int:
        """Items each process sees per epoch."""
        return len(self.sampler)

    def position(self, step: int) -> dict[str, int]:
        """Where ``step`` starts in the data: epoch and offset within it (for the checkpoint and the logs)."""
        start = step * self.batch_size
        return {"epoch": start // self.per_epoch, "offset": start % self.per_epoch}

    def _item(self, position: int) -> int:
        epoch, offset = divmod(position, self.per_epoch)
        if self._epoch_order[0] != epoch:
            self.sampler.set_epoch(epoch)
            self._epoch_order = (epoch, list(iter(self.sampler)))
        return self._epoch_order[1][offset]

    def batch(self, step: int) -> Batch:
        g = torch.Generator().manual_seed(_seed(self.seed, step, self.rank))
        latents, pixels, teacher = [], [], []
        for k in range(self.batch_size):
            i = self._item(step * self.batch_size + k)
            z = self.data.latents[i]
            h, w = z.shape[-2:]
            top = int(torch.randint(0, h - self.cells + 1, (1,), generator=g))
            left = int(torch.randint(0, w - self.cells + 1, (1,), generator=g))
            flip = self.flips and bool(torch.randint(0, 2, (1,), generator=g))
            rows, cols = slice(top, top + self.cells), slice(left, left + self.cells)
            p_rows = slice(top * self.f, (top + self.cells) * self.f)
            p_cols = slice(left * self.f, (left + self.cells) * self.f)
            if flip:  # window `left` of the flipped picture is this mirrored window of the original
                mirrored = slice((w - left - self.cells) * self.f, (w - left) * self.f)
                latents.append(self.data.latents_flip[i][..., rows, cols])
                pixels.append(self.data.pixels[i][..., p_rows, mirrored].flip(-1))
                if self.data.teacher_flip is not None:
                    teacher.append(self.data.teacher_flip[i][..., p_rows, p_cols])
            else:
                latents.append(z[..., rows, cols])
                pixels.append(self.data.pixels[i][..., p_rows, p_cols])
                if self.data.teacher is not None:
                    teacher.append(self.data.teacher[i][..., p_rows, p_cols])
        move = lambda xs: torch.stack(xs).to(self.device, non_blocking=True)  # noqa: E731
        return Batch(move(latents).float(), _to_pm1(move(pixels)), _to_pm1(move(teacher)) if teacher else None)


def _stack(items: list[torch.Tensor], idx: list[int], device: torch.device | str) -> torch.Tensor:
    return torch.stack([items[k] for k in idx]).to(device)


def val_batches(data: Split, batch_size: int, device: torch.device | str, limit: int | None = None):
    """Validation items in order, batched where their shapes agree: yields (Batch, item indices)."""
    n = len(data) if limit is None else min(limit, len(data))
    i = 0
    while i < n:
        j = i + 1
        while j < n and j - i < batch_size and data.pixels[j].shape == data.pixels[i].shape:
            j += 1
        idx = list(range(i, j))
        teacher = _to_pm1(_stack(data.teacher, idx, device)) if data.teacher is not None else None
        yield Batch(_stack(data.latents, idx, device).float(), _to_pm1(_stack(data.pixels, idx, device)), teacher), idx
        i = j


def mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan
