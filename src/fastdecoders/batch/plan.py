"""The work of a decode job: shards cut into units (one batch each), items already done skipped.

A unit is a run of consecutive items of one shard that share one shape, at most ``batch_size`` long, cut at fixed
positions (0, B, 2B … within each run) whatever was done before: a resumed job forms the same batches as an
unbroken one, so its outputs are the same bit for bit. Only the items not yet done and verified are written.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fastdecoders.batch.outputs import output_path, verified
from fastdecoders.errors import FastDecodersError
from fastdecoders.shards import read_header, read_shard


@dataclass(frozen=True)
class Unit:
    """One batch: items ``start:stop`` of ``shard`` (true shape ``shape``), their ids and output paths; ``write``
    says which of them still need writing."""

    shard: str
    start: int
    stop: int
    ids: tuple[str, ...]
    outputs: tuple[str, ...]
    write: tuple[bool, ...]
    #: the items' true shape when the shard pads them (ragged shards), else None.
    shape: tuple[int, ...] | None = None

    def as_row(self) -> dict:
        """JSON-ready (Ray Data rows)."""
        return {"shard": self.shard, "start": self.start, "stop": self.stop, "ids": list(self.ids),
                "outputs": list(self.outputs), "write": list(self.write),
                "shape": list(self.shape) if self.shape is not None else None}  # fmt: skip

    @classmethod
    def from_row(cls, row: dict) -> Unit:
        shape = row.get("shape")
        return cls(str(row["shard"]), int(row["start"]), int(row["stop"]), tuple(row["ids"]), tuple(row["outputs"]),
                   tuple(bool(w) for w in row["write"]), tuple(shape) if shape is not None else None)  # fmt: skip


@dataclass
class Plan:
    units: list[Unit] = field(default_factory=list)
    #: manifest rows of shards that could not be read at all (one row per shard).
    failed: list[dict] = field(default_factory=list)
    total: int = 0
    skipped: int = 0

    @property
    def pending(self) -> int:
        return sum(sum(u.write) for u in self.units)


def make_plan(shards: list[Path], out_dir: Path, fmt: str, batch_size: int, done: dict[str, dict],
              resume: bool) -> Plan:  # fmt: skip
    """Cut ``shards`` into units; ``done`` maps ids to manifest rows (items verified there are skipped on resume).
    Duplicate ids across the job are a bad invocation (two items would write one file)."""
    plan, seen = Plan(), {}
    for shard in shards:
        try:
            header = read_header(shard)
        except FastDecodersError as e:
            plan.failed.append({"id": f"shard:{shard.name}", "shard": str(shard), "index": None, "output": None,
                                "status": "failed", "error": str(e)})  # fmt: skip
            continue
        ids = header["ids"]
        shapes = (header.get("shapes") or {}).get("latents")
        for item_id in ids:
            if item_id in seen:
                raise FastDecodersError(f"item id {item_id!r} is in both {seen[item_id]} and {shard}: ids must be "
                                        "unique across the job")  # fmt: skip
            seen[item_id] = shard
        plan.total += len(ids)
        start = 0
        while start < len(ids):
            stop = start + 1
            while stop < len(ids) and stop - start < batch_size and (shapes is None or shapes[stop] == shapes[start]):
                stop += 1
            outputs = [str(output_path(out_dir, item_id, fmt)) for item_id in ids[start:stop]]
            write = [not (resume and verified(done.get(item_id))) for item_id in ids[start:stop]]
            plan.skipped += write.count(False)
            if any(write):
                shape = tuple(shapes[start]) if shapes is not None else None
                plan.units.append(Unit(str(shard), start, stop, tuple(ids[start:stop]), tuple(outputs), tuple(write),
                                       shape))  # fmt: skip
            start = stop
    return plan


def read_unit(unit: Unit) -> torch.Tensor:
    """The unit's latents, (stop - start, ...) as stored (cropped to the true shape for ragged shards)."""
    path = Path(unit.shard)
    try:
        if path.suffix in (".pt", ".pth"):
            latents = read_shard(path).latents[unit.start : unit.stop]
        else:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
                key = "latents" if "latents" in keys else keys[0]
                sliced = f.get_slice(key)
                if len(sliced.get_shape()) == 3:  # a plain file with one item
                    latents = f.get_tensor(key)[None]
                else:
                    latents = sliced[unit.start : unit.stop]
    except FastDecodersError:
        raise
    except Exception as e:
        raise FastDecodersError(
            f"{path}: cannot read items {unit.start}:{unit.stop} ({type(e).__name__}: {e})"
        ) from None
    if unit.shape is not None:
        latents = latents[(slice(None), *(slice(0, n) for n in unit.shape))]
    return latents


def to_bytes(array: np.ndarray | torch.Tensor) -> bytes:
    """An array as .npy bytes (dtype and shape kept): how tensors travel through Ray Data rows."""
    buffer = io.BytesIO()
    np.save(buffer, array.numpy() if isinstance(array, torch.Tensor) else array, allow_pickle=False)
    return buffer.getvalue()


def from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
