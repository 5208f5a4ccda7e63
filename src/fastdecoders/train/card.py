"""The model card written next to a trained decoder (``OUT/README.md``): what it is, what it was trained on, for
how long, and how good it is against the decoder it replaces on the same latents."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _metric_row(name: str, metrics: dict[str, float] | None) -> str:
    if metrics is None:
        return f"| {name} | – | – |"
    return f"| {name} | {_fmt(metrics.get('psnr'))} | {_fmt(metrics.get('ssim'), 4)} |"


def model_card(summary: dict[str, Any], config_yaml: str) -> str:
    """Markdown for ``summary`` (see ``loop.train``'s result) and the resolved config."""
    s = summary
    data = s["data"]
    lines = [
        f"# {s['student']['name']} distilled for {s['latent_space']} latents",
        "",
        f"A `{s['student']['arch']}` decoder ({s['student']['params'] / 1e6:.2f} M parameters) trained with "
        f"`fastdecoders train` to replace **{s['teacher']}**: diffusion-space {s['latent_space']} latents in, "
        "RGB in [-1, 1] out.",
        "",
        "```python",
        "import fastdecoders",
        f'decoder = fastdecoders.load_decoder("{Path(s["model"]).name}")  # this file; config inside',
        "images = decoder.decode(latents).sample",
        "```",
        "",
        "## Validation",
        "",
        f"{data['val_items']} held-out items ({data['val_desc']}); latents from the teacher's encoder; "
        "PSNR/SSIM against the original pixels (both decoders see the same latents).",
        "",
        "| decoder | PSNR dB | SSIM |",
        "|---|---|---|",
        _metric_row(f"this model ({'EMA ' if s['ema'] else ''}weights)", s["val"]),
        _metric_row("at initialisation", s.get("init_val")),
        _metric_row(f"teacher ({s['teacher']})", s["teacher_val"]),
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| data | {data['train_items']} training items from {', '.join(data['folders'])} |",
        f"| crops | {data['crop']}² random crops{', random flips' if data['flips'] else ''}; latents cached once |",
        f"| losses | {', '.join(f'{k} × {v:g}' for k, v in s['losses'].items()) or '–'} |",
        *[
            f"| phase {p['phase']} | steps {p['start']}–{'end' if p['until'] is None else p['until']}: "
            f"{', '.join(f'{k} × {v:g}' for k, v in p['weights'].items())} |"
            for p in s.get("phases", [])
        ],
        *([f"| feature alignment | {'; '.join(s['feature_pairs'])} |"] if s.get("feature_pairs") else []),
        f"| perceptual network | {s['perceptual_net'] or '–'} |",
        f"| steps | {s['steps']} (global batch {s['global_batch']}, {s['world_size']} process(es)) |",
        f"| training time | {s['seconds'] / 60:.1f} min on {s['device']} |",
        f"| throughput | {s['images_per_s']:.1f} images/s |",
        f"| latent cache | {s['cache']['seconds']:.0f} s to build{' (reused)' if s['cache']['reused'] else ''} |",
        f"| stopped | {s['stopped']} |",
        f"| weights sha256 | `{s['weights_sha256']}` |",
        "",
        "## Config",
        "",
        "```yaml",
        config_yaml.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
