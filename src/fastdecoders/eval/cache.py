"""On-disk cache of per-input work (latents, features, metrics), so that an interrupted run resumes where it stopped.

One safetensors file per input and cache key: tensors plus a JSON ``record`` and the input's ``stamp`` (size and
mtime of the source file) in the metadata. A record whose stamp differs (the file changed), or that cannot be read
(a crash mid-write is impossible — writes are atomic — but a user may copy caches around), counts as missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fastdecoders.io import atomic_path

_RECORD, _STAMP = "record", "stamp"


class Store:
    """``get``/``put`` of (tensors, record) under ``root/<part>/…/<item key>.safetensors``; ``enabled=False``
    reads nothing (``--no-resume``) but still writes, so the next run can resume."""

    def __init__(self, root: str | Path, enabled: bool = True):
        self.root = Path(root)
        self.enabled = enabled

    def path(self, parts: tuple[str, ...], key: str) -> Path:
        return self.root.joinpath(*parts) / f"{key}.safetensors"

    def get(self, parts: tuple[str, ...], key: str, stamp: str) -> tuple[dict[str, torch.Tensor], dict] | None:
        path = self.path(parts, key)
        if not self.enabled or not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                if metadata.get(_STAMP) != stamp:
                    return None
                return {k: f.get_tensor(k) for k in f.keys()}, json.loads(metadata.get(_RECORD, "{}"))
        except (SafetensorError, OSError, ValueError):
            return None

    def put(
        self,
        parts: tuple[str, ...],
        key: str,
        stamp: str,
        tensors: dict[str, torch.Tensor],
        record: dict[str, Any] | None = None,
    ) -> None:
        path = self.path(parts, key)
        with atomic_path(path) as tmp:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                str(tmp),
                metadata={_STAMP: stamp, _RECORD: json.dumps(record or {})},
            )
