"""Latency vs resolution (log-log), one line per decoder (and dtype/backend when the grid has several)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from fastdecoders.io import atomic_path


def plot_latency(rows: list[dict], out: str | Path, title: str = "") -> Path:
    """Write a PNG of median latency (ms) against output side length (px) from ``run_grid`` rows."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt

    combos = {(r["dtype"], r["backend"]) for r in rows}
    lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        label = r["decoder"] if len(combos) == 1 else f"{r['decoder']} {r['dtype']}/{r['backend']}"
        lines[label].append((int(r["shape"].split("x")[-1]), r["ms_median"]))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, points in lines.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("output side (px)")
    ax.set_ylabel("median latency (ms)")
    ax.set_title(title or "decode latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return out
