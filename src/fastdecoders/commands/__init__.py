"""The core CLI verbs (list, decode, roundtrip, convert); bench/eval/train/prune live in their packages."""

from __future__ import annotations

import argparse


def add_weights_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights-dir", default=None, help="folder searched first for upstream-named weights files "
        "(then $FASTDECODERS_WEIGHTS, then ~/.cache/fastdecoders)"
    )  # fmt: skip


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])


def format_table(headers: list[str], rows: list[list[object]]) -> str:
    """A plain aligned text table."""
    cells = [[str(c) for c in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "-" if value is None else str(value)
