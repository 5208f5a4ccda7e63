"""Kept widths of a pruned decoder: ``--keep`` ratios, per stage, rounded to hardware-friendly multiples."""

from __future__ import annotations

import math
from collections.abc import Sequence

from fastdecoders.errors import FastDecodersError


def parse_keep(keep: float | str | Sequence[float]) -> tuple[float, ...]:
    """``0.5`` / ``"0.5"`` -> (0.5,); ``"1,0.5,0.125"`` -> per stage, latent side first. Each in (0, 1]."""
    if isinstance(keep, str):
        try:
            values = tuple(float(v) for v in keep.replace("/", ",").split(",") if v.strip())
        except ValueError:
            raise FastDecodersError(f"--keep takes a ratio or comma-separated ratios per stage, got {keep!r}") from None
    elif isinstance(keep, (int, float)):
        values = (float(keep),)
    else:
        values = tuple(float(v) for v in keep)
    if not values or not all(0 < v <= 1 for v in values):
        raise FastDecodersError(f"keep ratios must lie in (0, 1], got {keep!r}")
    return values


def stage_keeps(keep: Sequence[float], stages: int) -> tuple[float, ...]:
    if len(keep) == 1:
        return tuple(keep) * stages
    if len(keep) != stages:
        raise FastDecodersError(f"this decoder has {stages} stages (latent side first); got {len(keep)} keep ratios")
    return tuple(keep)


def pruned_width(width: int, keep: float, multiple: int = 8, divisor: int = 1) -> int:
    """``width · keep`` rounded to a multiple of ``multiple`` (GPU-friendly) and of ``divisor`` (norm groups).

    Small results fall back to multiples of ``divisor`` alone, so tiny test decoders can still be pruned."""
    if keep >= 1:
        return width
    target = width * keep
    step = math.lcm(multiple, divisor) if target >= multiple else divisor
    w = max(step, round(target / step) * step)
    return min(w, width)
