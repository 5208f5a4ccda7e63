"""The Pareto report of pruning: for each keep ratio and selection method, decode speed-up against quality retention.

* speed: median wall time of one decode of ``bench`` latents (``fastdecoders.bench.timing.time_fn``), teacher time
  divided by student time;
* quality: with photos, PSNR of the decoded photo latents against the photos (student and teacher) and the
  retention ``PSNR_student / PSNR_teacher``; always, PSNR of the student's output against the teacher's (fidelity;
  the only quality number for random-weight teachers).

Methods: ``independent`` (greedy independence-aware selection + least-squares fold), ``pivoted`` (pivoted QR + fold),
``magnitude`` (filter-L1 selection, plain slicing: the usual baseline); a ``+fold`` / ``-nofold`` suffix overrides the
fold, e.g. ``magnitude+fold`` isolates the selection rule.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastdecoders.bench.flops import count_flops
from fastdecoders.bench.timing import default_sync, time_fn
from fastdecoders.errors import FastDecodersError
from fastdecoders.eval.metrics import psnr
from fastdecoders.io import atomic_path
from fastdecoders.latents import to_01
from fastdecoders.models.fileformat import save_decoder
from fastdecoders.progress import progress
from fastdecoders.prune.core import decoder_parameters, prune
from fastdecoders.prune.plan import METHODS


@dataclass(frozen=True)
class Variant:
    """One pruning recipe of the sweep: a selection method and whether dropped channels are folded."""

    label: str
    method: str
    fold: bool


def parse_methods(text: str) -> list[Variant]:
    """``"independent,magnitude"`` -> variants (``magnitude`` alone means no fold; the others fold)."""
    out = []
    for label in (t.strip() for t in text.split(",") if t.strip()):
        name, fold = label, None
        for suffix, value in (("+fold", True), ("-nofold", False)):
            if label.endswith(suffix):
                name, fold = label[: -len(suffix)], value
        if name not in METHODS:
            raise FastDecodersError(f"expected methods among {', '.join(METHODS)} (+fold/-nofold), got {label!r}")
        out.append(Variant(label, name, name != "magnitude" if fold is None else fold))
    if not out:
        raise FastDecodersError(f"expected at least one method, got {text!r}")
    return out


def _run(decoder: nn.Module, latents: torch.Tensor, batch_size: int) -> torch.Tensor:
    param = next(decoder.parameters())
    with torch.inference_mode():
        outs = [decoder(c.to(param.device, param.dtype)).float().cpu() for c in latents.split(batch_size)]
    return torch.cat(outs)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) of outputs in [-1, 1] (video frames folded into the batch), both clamped."""
    if a.ndim == 5:
        a, b = a.transpose(1, 2).flatten(0, 1), b.transpose(1, 2).flatten(0, 1)
    return float(psnr(to_01(a).clamp(0, 1), to_01(b).clamp(0, 1)).mean())


def _time_ms(decoder: nn.Module, latents: torch.Tensor, runs: int) -> tuple[float, float]:
    """(min, median) milliseconds of one decode; the minimum is the speed figure (robust on a shared CPU)."""
    param = next(decoder.parameters())
    z = latents.to(param.device, param.dtype)

    def call() -> None:
        with torch.inference_mode():
            decoder(z)

    timing = time_fn(call, warmup=1, runs=runs, sync=default_sync(param.device))
    return timing.ms_min, timing.ms_median


def _gflops(decoder: nn.Module, latents: torch.Tensor) -> float:
    """Conv/matmul GFLOPs of one decode of ``latents`` (``fastdecoders.bench.flops``): a load-independent proxy."""
    param = next(decoder.parameters())
    z = latents.to(param.device, param.dtype)
    return count_flops(lambda: decoder(z)) / 1e9


def pareto(
    teacher: nn.Module,
    keeps: Sequence[float],
    variants: Sequence[Variant],
    calib: torch.Tensor,
    eval_latents: torch.Tensor,
    bench_latents: torch.Tensor,
    photos01: torch.Tensor | None = None,
    out_dir: str | Path | None = None,
    extra: dict[str, nn.Module] | None = None,
    *,
    multiple: int = 8,
    batch_size: int = 4,
    runs: int = 5,
) -> dict[str, Any]:
    """Prune ``teacher`` at every ``keeps`` ratio with every variant and measure each student.

    Args:
        calib: calibration latents; eval_latents: held-out latents (of ``photos01`` (N, 3, H, W) in [0, 1] when
            given); bench_latents: what one timed decode takes (batch 1 is usual).
        out_dir: where the students are saved (``keep{k}-{label}.safetensors``); None: not saved.
        extra: more students (e.g. distilled ones) placed in the table, label -> decoder.

    ``ms`` is the fastest of ``runs`` timed decodes (``ms_median`` the median), ``speedup`` teacher ms / student ms.
    Returns ``{"teacher": {...}, "points": [{"label", "keep", "method", "fold", "widths", "params", "ms", "ms_median",
    "speedup", "psnr", "retention", "psnr_vs_teacher", "checkpoint"}], "runs", "bench_shape", "eval_count"}``.
    """
    ref = _run(teacher, eval_latents, batch_size)
    t_psnr = _psnr(ref, photos01 * 2 - 1) if photos01 is not None else None
    t_ms, t_median = _time_ms(teacher, bench_latents, runs)
    t_gflops = _gflops(teacher, bench_latents)
    t_params = decoder_parameters(teacher)
    points = []

    def measure(label: str, student: nn.Module, **info: Any) -> dict[str, Any]:
        out = _run(student, eval_latents, batch_size)
        s_psnr = _psnr(out, photos01 * 2 - 1) if photos01 is not None else None
        ms, median = _time_ms(student, bench_latents, runs)
        return {
            "label": label, **info, "params": decoder_parameters(student), "ms": ms, "ms_median": median,
            "speedup": t_ms / ms, "gflops": (g := _gflops(student, bench_latents)), "flops_ratio": t_gflops / g,
            "psnr": s_psnr, "retention": None if t_psnr is None else s_psnr / t_psnr,
            "psnr_vs_teacher": _psnr(out, ref),
        }  # fmt: skip

    stats = None
    bar = progress(total=len(keeps) * len(variants) + len(extra or {}), desc="pareto", unit="student")
    for keep in keeps:
        for v in variants:
            bar.set_postfix_str(f"keep {keep:g} {v.label}")
            result = prune(teacher, keep, calib, method=v.method, fold=v.fold, multiple=multiple,
                           batch_size=batch_size, stats=stats)  # fmt: skip
            stats = result.stats or stats
            student = result.student
            student.latent_space_name = getattr(teacher, "latent_space_name", None)
            checkpoint = None
            if out_dir is not None:
                checkpoint = save_decoder(student, Path(out_dir) / f"keep{keep:g}-{v.label}.safetensors",
                                          extra={"keep": [keep], "method": v.method, "fold": v.fold})  # fmt: skip
            points.append(measure(v.label, student, keep=keep, method=v.method, fold=v.fold,
                                  widths=list(result.student_widths), checkpoint=checkpoint))  # fmt: skip
            bar.update()
    for label, student in (extra or {}).items():
        points.append(measure(label, student.eval(), keep=None, method="extra", fold=None, widths=None,
                              checkpoint=None))  # fmt: skip
        bar.update()
    bar.close()
    return {
        "teacher": {
            "name": getattr(teacher, "registry_name", None),
            "params": t_params,
            "ms": t_ms,
            "ms_median": t_median,
            "gflops": t_gflops,
            "psnr": t_psnr,
        },
        "points": points,
        "runs": runs,
        "bench_shape": list(bench_latents.shape),
        "eval_count": int(eval_latents.shape[0]),
        "threads": torch.get_num_threads(),
        "device": str(next(teacher.parameters()).device),
    }


def render_pareto(result: dict[str, Any]) -> str:
    """A Markdown table of the sweep (teacher first)."""
    t = result["teacher"]

    def fmt(v: float | None, spec: str) -> str:
        return "–" if v is None else format(v, spec)

    lines = [
        "| student | keep | widths | params | GFLOPs | ms (min) | speed-up | PSNR dB | retention | PSNR vs teacher |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| teacher {t['name'] or ''} | 1 | – | {t['params']:,} | {t['gflops']:.2f} | {t['ms']:.1f} | 1.00× | "
        f"{fmt(t['psnr'], '.2f')} | 100% | – |",
    ]
    for p in result["points"]:
        widths = "–" if p["widths"] is None else "/".join(map(str, p["widths"]))
        retention = "–" if p["retention"] is None else f"{p['retention']:.1%}"
        lines.append(
            f"| {p['label']} | {fmt(p['keep'], 'g')} | {widths} | {p['params']:,} | {p['gflops']:.2f} | "
            f"{p['ms']:.1f} | {p['speedup']:.2f}× | {fmt(p['psnr'], '.2f')} | {retention} | "
            f"{p['psnr_vs_teacher']:.2f} |"
        )
    return "\n".join(lines)


def plot_pareto(result: dict[str, Any], out: str | Path, title: str = "") -> Path:
    """PNG: speed-up (y) against quality retention (x; PSNR vs teacher without photos), one series per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    use_retention = result["teacher"]["psnr"] is not None
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    for label in dict.fromkeys(p["label"] for p in result["points"]):
        pts = sorted((p for p in result["points"] if p["label"] == label), key=lambda p: p["speedup"])
        xs = [100 * p["retention"] if use_retention else p["psnr_vs_teacher"] for p in pts]
        ax.plot(xs, [p["speedup"] for p in pts], marker="o", label=label)
        for x, p in zip(xs, pts, strict=True):
            if p["keep"] is not None:
                ax.annotate(f"{p['keep']:g}", (x, p["speedup"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.scatter([100 if use_retention else 0], [1.0], marker="*", s=120, color="k", label="teacher")
    ax.set_xlabel("PSNR retention vs teacher (%)" if use_retention else "PSNR vs teacher output (dB)")
    ax.set_ylabel("decode speed-up (×)")
    ax.set_title(title or "pruning: speed-up vs quality")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return out


def write_report(result: dict[str, Any], out_dir: str | Path, title: str = "") -> dict[str, str]:
    """``pareto.json``, ``pareto.md`` and ``pareto.png`` in ``out_dir``; their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "pareto.json", "table": out_dir / "pareto.md"}
    with atomic_path(paths["json"]) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2))
    with atomic_path(paths["table"]) as tmp:
        Path(tmp).write_text(render_pareto(result) + "\n")
    paths["plot"] = plot_pareto(result, out_dir / "pareto.png", title)
    return {k: str(v) for k, v in paths.items()}
