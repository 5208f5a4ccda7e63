"""Latents shards: the one file format for many latents (``encode`` writes it, ``decode`` and ``train`` read it).

A shard is a safetensors file holding

* ``latents``: (N, ...) diffusion-space latents of N items of one shape: (N, C, h, w) for images, (N, t, C, h, w)
  (frames first, as ``Teacher.encode`` makes them) or (N, C, t, h, w) for video clips; any float dtype;
* optionally more per-item tensors with the same leading N (``pixels`` (N, 3, H, W) uint8, ``latents_flip``,
  ``teacher`` …: the training cache stores its targets there);
* one metadata entry ``fastdecoders_shard``: JSON with ``version``, ``count``, ``ids`` (N unique strings),
  optional ``prompts`` (N strings), ``latent_space``, ``encoder`` (what made the latents), ``decoder`` (what should
  decode them), optional ``items`` (N JSON objects: source file, metrics …) and ``extra`` (shard-level JSON);
* ``shapes`` only when items differ in size (photos of both orientations in one training-cache shard): each tensor
  is zero-padded at the end of every axis to the largest item, and ``shapes[name][i]`` is item i's true shape.
  ``Shard.item(i)`` crops it back; ``Shard.from_items`` pads.

A plain safetensors/.pt file with one latents tensor and no metadata also reads as a shard (ids ``STEM-00000`` …).
Files are written atomically (temp file, then rename): a shard on disk is always complete. See docs/shards.md.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.io import atomic_path, read_latents

FORMAT_KEY = "fastdecoders_shard"
FORMAT_VERSION = 1
SUFFIXES = (".safetensors", ".pt", ".pth")


@dataclass
class Shard:
    """N items of one shape: ``latents`` (N, ...) plus per-item ids and optional prompts/tensors/JSON."""

    latents: torch.Tensor
    ids: list[str]
    prompts: list[str] | None = None
    #: more per-item tensors, each with the leading N (``pixels``, ``latents_flip``, ``teacher`` …).
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    latent_space: str | None = None
    encoder: str | None = None
    decoder: str | None = None
    #: per-item JSON objects (source path, metrics …), or None.
    items: list[dict] | None = None
    #: shard-level JSON (what the writer wants to remember: split, skipped sources …).
    extra: dict = field(default_factory=dict)
    #: per tensor name, each item's true shape when the items differ in size (the tensors are padded); else None.
    shapes: dict[str, list[list[int]]] | None = None

    def __post_init__(self):
        n = len(self.latents)
        lengths = {"ids": len(self.ids), **({"prompts": len(self.prompts)} if self.prompts is not None else {}),
                   **({"items": len(self.items)} if self.items is not None else {}),
                   **{name: len(t) for name, t in self.tensors.items()}}  # fmt: skip
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong:
            raise FastDecodersError(f"shard: every per-item field needs {n} entries (the latents' N), got {wrong}")
        if len(set(self.ids)) != n:
            raise FastDecodersError(f"shard: expected {n} unique ids, got {len(set(self.ids))} distinct")
        if "latents" in self.tensors:
            raise FastDecodersError("shard: 'latents' is the main tensor, not one of the extra tensors")

    def __len__(self) -> int:
        return len(self.latents)

    @property
    def ragged(self) -> bool:
        return self.shapes is not None

    def item(self, i: int) -> dict[str, torch.Tensor]:
        """Item ``i``'s tensors by name (``latents`` and the extra ones), cropped to its true shape."""
        out = {"latents": self.latents[i], **{k: v[i] for k, v in self.tensors.items()}}
        if self.shapes is not None:
            out = {k: v[tuple(slice(0, n) for n in self.shapes[k][i])] if k in self.shapes else v
                   for k, v in out.items()}  # fmt: skip
        return out

    @classmethod
    def from_items(cls, tensors: list[dict[str, torch.Tensor]], ids: list[str], **fields) -> Shard:
        """Stack per-item tensor dicts (each with ``latents``); items of different sizes are zero-padded and their
        shapes recorded (``shapes``)."""
        if not tensors:
            return cls(torch.empty(0), [], **fields)
        stacked, shapes = {}, {}
        for name in tensors[0]:
            values = [item[name] for item in tensors]
            sizes = [list(v.shape) for v in values]
            if any(s != sizes[0] for s in sizes):
                top = [max(s[d] for s in sizes) for d in range(len(sizes[0]))]
                values = [_pad_to(v, top) for v in values]
                shapes[name] = sizes
            stacked[name] = torch.stack(values)
        return cls(stacked.pop("latents"), ids, tensors=stacked, shapes=shapes or None, **fields)

    def header(self) -> dict:
        return {"version": FORMAT_VERSION, "count": len(self), "ids": list(self.ids), "prompts": self.prompts,
                "latent_space": self.latent_space, "encoder": self.encoder, "decoder": self.decoder,
                "items": self.items, "extra": self.extra, "shapes": self.shapes}  # fmt: skip


def _pad_to(tensor: torch.Tensor, shape: list[int]) -> torch.Tensor:
    pad = []
    for have, want in zip(reversed(tensor.shape), reversed(shape), strict=True):
        pad += [0, want - have]
    return torch.nn.functional.pad(tensor, pad) if any(pad) else tensor


def write_shard(path: str | os.PathLike, shard: Shard) -> Path:
    """Write ``shard`` as one safetensors file, atomically; returns the path."""
    from safetensors.torch import save_file

    tensors = {"latents": shard.latents, **shard.tensors}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={FORMAT_KEY: json.dumps(shard.header())})
    return Path(path)


def read_header(path: str | os.PathLike) -> dict:
    """The shard's metadata (``count``, ``ids`` … as written) without reading its tensors; plain latents files get
    ``ids`` ``STEM-00000`` … and None elsewhere. Raises FastDecodersError for a missing or unreadable file."""
    path = Path(path)
    if path.suffix in (".pt", ".pth"):
        return _plain_header(path, len(_plain_latents(path)))
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if FORMAT_KEY in meta:
                return _parse_header(path, meta[FORMAT_KEY])
            keys = list(f.keys())
            key = "latents" if "latents" in keys else keys[0] if len(keys) == 1 else None
            if key is None:
                raise FastDecodersError(f"{path}: expected a 'latents' tensor, got tensors {sorted(keys)}")
            shape = f.get_slice(key).get_shape()
    except FastDecodersError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise FastDecodersError(f"{path} is not a readable latents shard ({type(e).__name__}: {e})") from None
    return _plain_header(path, shape[0] if len(shape) >= 4 else 1)


def read_shard(path: str | os.PathLike, tensors: Sequence[str] | None = None) -> Shard:
    """A whole shard; ``tensors`` limits which extra tensors are read (default: all). Plain latents files (one
    tensor, no metadata) read as shards of their N items (a 3-d tensor is one item)."""
    path = Path(path)
    if path.suffix in (".pt", ".pth"):
        latents = _plain_latents(path)
        return Shard(latents, _plain_header(path, len(latents))["ids"])
    from safetensors import safe_open

    header = read_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            main = "latents" if "latents" in keys else keys[0]
            latents = f.get_tensor(main)
            wanted = [k for k in keys if k != main and (tensors is None or k in tensors)]
            extra = {k: f.get_tensor(k) for k in wanted}
    except Exception as e:
        raise FastDecodersError(f"{path} is not a readable latents shard ({type(e).__name__}: {e})") from None
    if header.get("version") is None:  # a plain file
        latents = latents[None] if latents.ndim == 3 else latents
        return Shard(latents, header["ids"])
    return Shard(latents, header["ids"], header.get("prompts"), extra, header.get("latent_space"),
                 header.get("encoder"), header.get("decoder"), header.get("items"),
                 header.get("extra") or {}, header.get("shapes"))  # fmt: skip


def list_shards(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Shard files from folders (``*.safetensors`` directly inside, sorted), globs and file names, in the given
    order, each once. One clear error when an input matches nothing."""
    found: list[Path] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.suffix == ".safetensors" and not p.name.startswith("."))
        elif path.is_file():
            matches = [path]
        else:
            matches = [Path(p) for p in sorted(glob.glob(text, recursive=True)) if Path(p).suffix in SUFFIXES]
        if not matches:
            raise FastDecodersError(f"{text}: expected a latents shard, a folder of shards or a glob, found none")
        found += matches
    unique: dict[Path, None] = {}
    for p in found:
        unique.setdefault(p.resolve(), None)
    return list(unique)


def _parse_header(path: Path, text: str) -> dict:
    try:
        header = json.loads(text)
    except json.JSONDecodeError as e:
        raise FastDecodersError(f"{path}: the {FORMAT_KEY} metadata is not JSON ({e})") from None
    if not isinstance(header, dict) or header.get("version") != FORMAT_VERSION:
        got = header.get("version") if isinstance(header, dict) else type(header).__name__
        raise FastDecodersError(f"{path}: expected shard format version {FORMAT_VERSION}, got {got}")
    return header


def _plain_header(path: Path, count: int) -> dict:
    return {"version": None, "count": count, "ids": [f"{path.stem}-{i:05d}" for i in range(count)], "prompts": None,
            "latent_space": None, "encoder": None, "decoder": None, "items": None, "extra": {}}  # fmt: skip


def _plain_latents(path: Path) -> torch.Tensor:
    latents = read_latents(path)
    return latents[None] if latents.ndim == 3 else latents
