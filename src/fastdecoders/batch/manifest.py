"""The job manifest: one JSON line per item outcome, appended (and fsynced) as items finish; the last line of an id
wins. A driver killed mid-write leaves at most one torn last line, which reading skips; the job's end rewrites the
file atomically with one line per item."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fastdecoders.io import atomic_write_text

#: the columns of every row. decode: ``shard``/``index`` say where the latents came from (``index`` is None for a
#: shard that could not be read at all), ``output`` the file written, ``bytes`` its size. encode: ``source`` is the
#: input file, ``shard``/``index`` where its latents went (``output`` is the shard too).
FIELDS = ("id", "source", "shard", "index", "output", "status", "error", "decoder", "encoder", "seconds", "bytes")


class Manifest:
    """Rows by id, loaded from ``path`` if it exists; ``append`` writes through to the file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: dict[str, dict] = {}
        self._file = None
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a killed driver: that item is simply redone
                    continue
                if isinstance(row, dict) and "id" in row:
                    self.rows[row["id"]] = row

    def open(self) -> Manifest:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = self.path.is_file() and self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n")
        self._file = open(self.path, "a")  # noqa: SIM115 (closed by close())
        if torn:
            self._file.write("\n")
        return self

    def append(self, rows: list[dict]) -> None:
        for row in rows:
            self.rows[row["id"]] = row
            self._file.write(json.dumps({k: row.get(k) for k in FIELDS}) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self, compact: bool = True) -> None:
        """Close; ``compact`` rewrites the file atomically with one line per item."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if compact:
            atomic_write_text(self.path, "".join(json.dumps({k: r.get(k) for k in FIELDS}) + "\n"
                                                 for r in self.rows.values()))  # fmt: skip
