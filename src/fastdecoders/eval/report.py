"""The evaluation report: markdown + HTML tables, side-by-side grids, 1:1 crops, a quality-vs-speed plot, an MP4.

Everything is written atomically under the output folder:

    report.md, report.html, results.json
    figures/grid_NN_<input>.png    original | teacher | decoders…, whole frames scaled to 256 px high
    figures/crop_NN_<input>.png    the same, 1:1 crops where the decoders differ most from the reference
    figures/quality_vs_speed.png   PSNR (and FID) against ms per image
    figures/side_by_side.mp4       videos: the first clip, original | decoders…
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fastdecoders.io import atomic_path, atomic_write_text, image_grid, write_image, write_video

GRID_HEIGHT = 256
#: (key in the result, column title, digits, higher is better)
COLUMNS = (
    ("psnr", "PSNR dB", 2, True),
    ("ssim", "SSIM", 4, True),
    ("ms_ssim", "MS-SSIM", 4, True),
    ("lpips_alex", "LPIPS-alex", 4, False),
    ("lpips_vgg", "LPIPS-vgg", 4, False),
    ("flicker", "flicker (0-255)", 3, False),
    ("fid", "FID", 2, False),
    ("kid", "KID", 4, False),
    ("fvd", "FVD", 1, False),
)


# -- formatting -----------------------------------------------------------------------------------------------------


def format_value(entry: dict[str, Any] | None, key: str, digits: int) -> str:
    """'31.42 ± 0.85' for {"mean", "ci95"}, '12.3 ± 1.1' for FID with its ci95, '-' when absent."""
    if entry is None:
        return "-"
    value = entry.get(key)
    if value is None:
        return "-"
    if isinstance(value, dict):
        mean, ci = value.get("mean"), value.get("ci95")
    else:
        mean, ci = value, entry.get(f"{key}_ci95")
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")


def _columns(result: dict[str, Any]) -> list[tuple[str, str, int, bool]]:
    return [c for c in COLUMNS if c[0] in result["metrics"]]


def _table(headers: list[str], rows: list[list[str]]) -> tuple[str, str]:
    """The same table as markdown and as HTML."""
    md = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return "\n".join(md), f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def summary_tables(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(title, markdown, html) of the comparison tables: vs the originals, then vs the teacher if there is one."""
    cols = _columns(result)
    decoders = result["decoders"]
    tables = []
    if any(d.get("n") and any(d.get(c[0]) is not None for c in cols) for d in decoders.values()):
        headers = ["decoder", "latents", "params", "ms/image"] + [t + (" ↑" if up else " ↓") for _, t, _, up in cols]
        rows = [
            [
                name + (" (teacher)" if d["role"] == "teacher" else ""),
                d["latent_space"],
                _params(d["params"]),
                f"{d['ms_per_image']:.1f}" if d.get("ms_per_image") is not None else "-",
            ]
            + [format_value(d, k, digits) for k, _, digits, _ in cols]
            for name, d in decoders.items()
        ]
        tables.append(("Against the originals", *_table(headers, rows)))
    if result.get("teacher"):
        headers = ["decoder"] + [t for _, t, _, _ in cols]
        rows = [
            [name] + [format_value(d["vs_teacher"], k, digits) for k, _, digits, _ in cols]
            for name, d in decoders.items()
            if d.get("vs_teacher")
        ]
        if rows:
            tables.append((f"Against the teacher ({result['teacher']})", *_table(headers, rows)))
    return tables


def decoder_tables(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """One small table per decoder: each metric against the originals (and the teacher, if any), with n."""
    out = []
    teacher = bool(result.get("teacher"))
    for name, d in result["decoders"].items():
        blank = [""] * (2 if teacher else 1)
        rows = [["params", f"{d['params']:,}", *blank], ["ms per image", _ms(d.get("ms_per_image")), *blank]]
        if d.get("ms_per_clip") is not None:
            rows.append(["ms per clip", _ms(d["ms_per_clip"]), *blank])
        for key, title, digits, _ in _columns(result):
            value = d.get(key)
            n = value["n"] if isinstance(value, dict) and "n" in value else d.get("n")
            row = [title, format_value(d, key, digits)]
            row += [format_value(d.get("vs_teacher"), key, digits)] if teacher else []
            rows.append(row + [str(n)])
        role = ", teacher" if d["role"] == "teacher" else ""
        title = f"{name} — {d['latent_space']} latents, {d['kind']} decoder{role}"
        headers = ["", "vs originals"] + (["vs teacher"] if teacher else []) + ["n"]
        out.append((title, *_table(headers, rows)))
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# -- pictures -------------------------------------------------------------------------------------------------------


def _label(text: str, width: int, height: int = 22) -> torch.Tensor:
    """(3, height, width) white strip with ``text`` in black."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new("RGB", (width, height), "white")
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        font = ImageFont.load_default()
    ImageDraw.Draw(strip).text((4, 3), text, fill="black", font=font)
    return torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1).float() / 255


def _fit(image: torch.Tensor, height: int) -> torch.Tensor:
    if image.shape[-2] <= height:
        return image
    width = max(1, round(image.shape[-1] * height / image.shape[-2]))
    return F.interpolate(image[None], size=(height, width), mode="area")[0]


def _labelled_row(cells: list[tuple[str, torch.Tensor]]) -> torch.Tensor:
    columns = [torch.cat([_label(name, img.shape[-1]), img.float().cpu()], dim=1) for name, img in cells]
    return image_grid([columns])


def worst_window(reference: torch.Tensor, outputs: list[torch.Tensor], size: int) -> tuple[int, int]:
    """(top, left) of the ``size``² window where the outputs' mean absolute error against the reference is
    largest: where the details are that the decoders lose."""
    h, w = reference.shape[-2:]
    size_h, size_w = min(size, h), min(size, w)
    error = torch.stack([(o - reference).abs().mean(0) for o in outputs]).mean(0)
    pooled = F.avg_pool2d(error[None, None], (size_h, size_w), stride=max(1, min(size_h, size_w) // 4))[0, 0]
    row, col = divmod(int(pooled.argmax()), pooled.shape[-1])
    stride = max(1, min(size_h, size_w) // 4)
    return row * stride, col * stride


def _cells(visual, teacher: str | None) -> list[tuple[str, torch.Tensor]]:
    cells = [("original", visual.original)] if visual.original is not None else []
    order = ([teacher] if teacher in visual.outputs else []) + [n for n in visual.outputs if n != teacher]
    return cells + [(n + (" (teacher)" if n == teacher else ""), visual.outputs[n]) for n in order]


def write_figures(result: dict[str, Any], visuals: list, folder: Path, crop_size: int = 128) -> dict[str, list[str]]:
    """Grids, crops and the MP4; returns their paths relative to the report folder, by kind."""
    figures = folder / "figures"
    written: dict[str, list[str]] = {"grids": [], "crops": [], "videos": []}
    for i, visual in enumerate(visuals):
        stem = f"{i:02d}_{re.sub(r'[^A-Za-z0-9_-]', '_', visual.key)[:60]}"
        cells = _cells(visual, result.get("teacher"))
        grid = _labelled_row([(n, _fit(img, GRID_HEIGHT)) for n, img in cells])
        write_image(grid, figures / f"grid_{stem}.png")
        written["grids"].append(f"figures/grid_{stem}.png")
        reference = cells[0][1]  # the original, else the teacher's output
        top, left = worst_window(reference, [img for _, img in cells[1:]] or [reference], crop_size)
        crops = [(n, img[:, top : top + crop_size, left : left + crop_size]) for n, img in cells]
        write_image(_labelled_row(crops), figures / f"crop_{stem}.png")
        written["crops"].append(f"figures/crop_{stem}.png")
    clip = next((v for v in visuals if v.clip_outputs), None)
    if clip is not None:
        written["videos"].append(_side_by_side(clip, result.get("teacher"), figures / "side_by_side.mp4", folder))
    return written


def _side_by_side(visual, teacher: str | None, path: Path, folder: Path) -> str:
    names = ([teacher] if teacher in visual.clip_outputs else []) + [n for n in visual.clip_outputs if n != teacher]
    clips = ([("original", visual.clip_original)] if visual.clip_original is not None else []) + [
        (n, visual.clip_outputs[n]) for n in names
    ]
    frames = torch.stack([_labelled_row([(n, c[t]) for n, c in clips]) for t in range(len(clips[0][1]))])
    write_video(frames, path, fps=visual.fps)
    return str(path.relative_to(folder))


def write_plot(result: dict[str, Any], path: Path) -> bool:
    """Quality against ms per image, one point per decoder (error bars: 95% intervals). False without matplotlib
    or without timings."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    points = {n: d for n, d in result["decoders"].items() if d.get("ms_per_image") and d.get("n")}
    panels = [
        (k, t)
        for k, t, _, _ in COLUMNS
        if k in ("psnr", "fid", "fvd") and k in result["metrics"] and any(d.get(k) is not None for d in points.values())
    ]
    if not points or not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        for name, d in points.items():
            value = d.get(key)
            mean = value.get("mean") if isinstance(value, dict) else value
            if mean is None:
                continue
            ci = value.get("ci95") if isinstance(value, dict) else d.get(f"{key}_ci95")
            # a legend, not text labels: decoders of one architecture sit on top of each other
            ax.errorbar(d["ms_per_image"], mean, yerr=ci, fmt="o", capsize=3, label=name)
        times = [d["ms_per_image"] for d in points.values()]
        if max(times) > 10 * min(times):  # spans an order of magnitude: log scale, plain tick labels
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.set_xlabel(f"ms per image ({result.get('device', 'cpu')}, log scale)")
        else:
            ax.set_xlim(0, max(times) * 1.2)
            ax.set_xlabel(f"ms per image ({result.get('device', 'cpu')})")
        ax.set_ylabel(title + (" (higher is better)" if key == "psnr" else " (lower is better)"))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return True


# -- the documents --------------------------------------------------------------------------------------------------

_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}img,video{max-width:100%;image-rendering:pixelated}"
    "code{background:#f4f4f4;padding:1px 4px}"
)


def write_report(result: dict[str, Any], visuals: list, folder: str | Path, crop_size: int = 128) -> dict[str, Path]:
    """Write report.md, report.html, results.json and the figures; returns the two document paths."""
    folder = Path(folder)
    figures = write_figures(result, visuals, folder, crop_size)
    plot = folder / "figures" / "quality_vs_speed.png"
    has_plot = write_plot(result, plot)
    inputs = result["inputs"]
    prep = inputs["preprocess"]
    size = f"{prep['size']}×{prep['size']} (short side resized, centre crop)" if prep["size"] else "native size"
    lead = (
        f"{inputs['evaluated']} {inputs['kind']} from `{inputs['source']}` at {size}; "
        f"{inputs['skipped']} skipped. Intervals are 95% (Student t over inputs; FID: bootstrap over inputs). "
        f"Timings: median decoder wall time on {result.get('device', 'cpu')}."
    )
    md = ["# Decoder evaluation", "", lead, ""]
    body = [f"<h1>Decoder evaluation</h1><p>{html.escape(lead)}</p>"]
    for title, table_md, table_html in summary_tables(result):
        md += [f"## {title}", "", table_md, ""]
        body.append(f"<h2>{html.escape(title)}</h2>{table_html}")
    if has_plot:
        md += ["## Quality versus speed", "", "![quality vs speed](figures/quality_vs_speed.png)", ""]
        body.append('<h2>Quality versus speed</h2><img src="figures/quality_vs_speed.png">')
    if figures["grids"]:
        md += ["## Side by side", ""]
        body.append("<h2>Side by side</h2>")
        for grid, crop in zip(figures["grids"], figures["crops"], strict=True):
            md += [f"![grid]({grid})", "", f"1:1 crop where the decoders differ most: ![crop]({crop})", ""]
            body.append(
                f'<p><img src="{grid}"></p><p>1:1 crop where the decoders differ most:<br><img src="{crop}"></p>'
            )
    for video in figures["videos"]:
        md += [f"Video, side by side: [{video}]({video})", ""]
        body.append(f'<p><video src="{video}" controls loop></video></p>')
    md += ["## Per decoder", ""]
    body.append("<h2>Per decoder</h2>")
    for title, table_md, table_html in decoder_tables(result):
        md += [f"### {title}", "", table_md, ""]
        body.append(f"<h3>{html.escape(title)}</h3>{table_html}")
    if result["notes"]:
        md += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in result["notes"]) + "</ul>")
    skipped = result["skipped"]
    md += [f"## Skipped ({len(skipped)})", ""] + [f"- `{s['path']}`: {s['why']}" for s in skipped] + [""]
    body.append(
        f"<h2>Skipped ({len(skipped)})</h2><ul>"
        + "".join(f"<li><code>{html.escape(s['path'])}</code>: {html.escape(s['why'])}</li>" for s in skipped)
        + "</ul>"
    )
    paths = {"markdown": folder / "report.md", "html": folder / "report.html"}
    result["report"], result["html"] = str(paths["markdown"]), str(paths["html"])
    atomic_write_text(paths["markdown"], "\n".join(md))
    atomic_write_text(
        paths["html"],
        f"<!doctype html><html><head><meta charset='utf-8'><title>Decoder evaluation"
        f"</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>",
    )
    atomic_write_text(folder / "results.json", json.dumps(result, indent=2, default=str))
    return paths
