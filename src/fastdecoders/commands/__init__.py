"""The core CLI verbs (list, decode, roundtrip, convert); bench/eval/train/prune live in their packages."""

from __future__ import annotations

import argparse


def add_weights_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights-dir", default=None, help="folder searched first for upstream-named weights files "
        "(then $FASTDECODERS_WEIGHTS, then ~/.cache/fastdecoders)"
    )  # fmt: skip


#: ``--dtype`` spellings of every verb: the short one is the one printed (help, bench tables); torch's names are
#: accepted too. The parsed value is torch's name, so ``getattr(torch, args.dtype)`` is the dtype.
DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def dtype_arg(text: str) -> str:
    """``fp32``/``float32``/``float`` … -> torch's name (``float32``); argparse turns a ValueError into exit 2."""
    name = text.strip().lower()
    name = {"float": "fp32", "half": "fp16"}.get(name, name)
    if name in DTYPE_NAMES:
        return DTYPE_NAMES[name]
    if name in DTYPE_NAMES.values():
        return name
    raise argparse.ArgumentTypeError(f"expected fp32, fp16 or bf16 (or float32, float16, bfloat16), got {text!r}")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", default="fp32", type=dtype_arg, metavar="{fp32,fp16,bf16}",
                        help="weights and compute dtype (float32, float16, bfloat16 are accepted too)")  # fmt: skip


def format_table(headers: list[str], rows: list[list[object]]) -> str:
    """A plain aligned text table; all-empty ``headers`` give a key/value list with no header row."""
    titled = any(str(c) for c in headers)
    cells = [[str(c) for c in headers]] * titled + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    if titled:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "-" if value is None else str(value)
