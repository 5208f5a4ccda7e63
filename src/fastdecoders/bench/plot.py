"""PNG plots of bench results: latency vs resolution (log-log, one line per decoder) and pipeline time vs steps."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from fastdecoders.io import atomic_path


def output_megapixels(shape: str) -> float:
    """Decoded pixels per call in millions, from a row's shape 'Bx3xHxW' or 'Bx3xTxHxW' (B·T·H·W / 1e6)."""
    dims = [int(x) for x in shape.split("x")]
    return math.prod(dims[:1] + dims[2:]) / 1e6


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return out


def plot_latency(rows: list[dict], out: str | Path, title: str = "") -> Path:
    """Write a PNG of median latency (ms) against decoded megapixels from ``run_grid`` rows; one line per decoder
    (per decoder, dtype and backend when the grid has several). Rows may be empty (an empty, labelled plot)."""
    plt = _pyplot()
    combos = {(r["dtype"], r["backend"]) for r in rows}
    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        label = r["decoder"] if len(combos) == 1 else f"{r['decoder']} {r['dtype']}/{r['backend']}"
        lines[label].append((output_megapixels(r["shape"]), r["ms_median"]))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        for label, points in lines.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("decoded megapixels per call (B·T·H·W / 1e6)")
        ax.set_ylabel("median latency (ms)")
        ax.set_title(title or "decode latency")
        ax.grid(True, which="both", alpha=0.3)
        if lines:
            ax.legend(fontsize=8)
        return _save(fig, out)
    finally:
        plt.close(fig)


def plot_pipeline(result: dict, out: str | Path) -> Path:
    """Write a PNG of total pipeline time (ms) against denoising steps, with the original decoder and with ours."""
    plt = _pyplot()
    rows = sorted(result["rows"], key=lambda r: r["steps"])
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        if rows:
            steps = [r["steps"] for r in rows]
            ax.plot(steps, [r["ms_total_teacher"] for r in rows], marker="o", label=rows[0]["teacher"])
            ax.plot(steps, [r["ms_total"] for r in rows], marker="o", label=rows[0]["decoder"])
            ax.legend(fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("denoising steps")
        ax.set_ylabel("pipeline time (ms)")
        ax.set_title(f"{result['pipeline']} end to end ({result['method'].split(':')[0]}), {result['device']}",
                     fontsize=9)  # fmt: skip
        ax.grid(True, which="both", alpha=0.3)
        return _save(fig, out)
    finally:
        plt.close(fig)
