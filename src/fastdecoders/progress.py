"""One progress display for every long step (roundtrip, prune, bench, eval, the training latent cache).

On a terminal it is a tqdm bar on stderr. Otherwise (a log file, a pipe, CI) the same tqdm status is written as a
plain line every ``every`` seconds, and nothing at all for a step that ends before ``every`` seconds: a short run
stays quiet, a long one says where it is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm

#: seconds between two plain progress lines when stderr is not a terminal (env FASTDECODERS_PROGRESS_EVERY)
EVERY_S = 10.0
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} done, {elapsed} elapsed, {remaining} left"


class _Lines:
    """A file for tqdm that turns its carriage-return redraws into whole lines (for logs that are not terminals)."""

    def __init__(self, stream: TextIO):
        self.stream, self.last = stream, ""

    def write(self, text: str) -> None:
        for part in text.replace("\r", "\n").split("\n"):
            part = part.rstrip()
            if part and part != self.last:  # close() redraws the last status: once is enough
                self.stream.write(part + "\n")
                self.last = part

    def flush(self) -> None:
        self.stream.flush()


def _every() -> float:
    try:
        return max(0.0, float(os.environ.get("FASTDECODERS_PROGRESS_EVERY", EVERY_S)))
    except ValueError:
        return EVERY_S


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    file: TextIO | None = None,
) -> tqdm:
    """A tqdm object (iterate it, or call ``update``/``set_postfix_str``/``close``) that shows a bar on a terminal and
    a line every ``FASTDECODERS_PROGRESS_EVERY`` (10) seconds elsewhere; ``enabled=False`` shows nothing."""
    stream = file if file is not None else sys.stderr
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
    every = _every()
    # delay: nothing for steps shorter than one period; mininterval/maxinterval: at most one line per period
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=_Lines(stream), bar_format=LINE_FORMAT,
                mininterval=every, maxinterval=every, miniters=1, delay=every)  # fmt: skip
