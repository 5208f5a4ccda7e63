"""What a finished run writes: the model file, its card (``OUT/README.md``: what it is, what it was trained on, for
how long, and how good it is against the decoder it replaces on the same latents) and ``OUT/result.json``."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastdecoders.io import atomic_write_text
from fastdecoders.models.fileformat import save_decoder
from fastdecoders.train.config import LossConfig, TrainConfig
from fastdecoders.train.distributed import Dist
from fastdecoders.train.state import Stopwatch


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


def describe_phase(cfg: LossConfig, index: int | None) -> str:
    """'2 (name)' for phase 2, or the top-level weights."""
    if index is None:
        return "(top-level weights)"
    name = cfg.phases[index].get("name")
    return f"{index}" + (f" ({name})" if name else "")


def weights_sha256(module: nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_outputs(cfg: TrainConfig, out: Path, model: nn.Module, clock: Stopwatch, d: Dist,
                  facts: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Write OUT/model.safetensors, README.md (model card) and result.json; return the summary. ``facts``: what
    the run learnt about itself (teacher, latent_space, cache, init_val, val, steps, stopped, weights_sha256,
    perceptual_net, notes)."""
    import yaml

    metrics = lambda m: None if m is None else {"psnr": m["psnr"], "ssim": m["ssim"]}  # noqa: E731
    data, cache, val = cfg.data, facts["cache"], facts["val"]
    summary = {
        "model": str(out / "model.safetensors"),
        "steps": facts["steps"],
        "seconds": clock.seconds,
        "images_per_s": clock.images / max(clock.train_seconds, 1e-9),
        "val": metrics(val),
        "val_psnr_vs_teacher": val.get("psnr_vs_teacher"),
        "teacher_val": cache["teacher_val"],
        "init_val": metrics(facts["init_val"]),
        "student": {"name": cfg.student.name or Path(cfg.student.init).name, "arch": model.arch,
                    "params": model.num_parameters(), "tiny": cfg.student.tiny},  # fmt: skip
        "teacher": facts["teacher"],
        "latent_space": facts["latent_space"],
        "ema": cfg.train.ema_decay is not None,
        "losses": {k: v for k, v in cfg.loss.base_weights().items() if v},
        "phases": [{"phase": describe_phase(cfg.loss, i), "start": start, "until": None if end == math.inf else end,
                    "weights": {k: v for k, v in cfg.loss.weights_at(start).items() if v}}
                   for i, (start, end) in enumerate(cfg.loss.spans())],  # fmt: skip
        "feature_pairs": [f"{p['student']} -> {p['teacher']}" for p in cfg.loss.features]
        if cfg.loss.uses("feature") else [],
        "perceptual_net": facts["perceptual_net"],
        "global_batch": cfg.train.batch_size * d.world,
        "world_size": d.world,
        "device": (torch.cuda.get_device_name(d.device) if d.device.type == "cuda"
                   else f"cpu ({torch.get_num_threads()} threads)"),
        "stopped": facts["stopped"],
        "weights_sha256": facts["weights_sha256"],
        "cache": {k: cache[k] for k in ("folder", "seconds", "reused", "skipped")},
        "data": {"train_items": cache["train_items"], "val_items": cache["val_items"], "crop": data.crop,
                 "flips": data.flips, "folders": [Path(p).name for p in data.images + data.videos],
                 "val_desc": (f"{', '.join(Path(p).name for p in data.val_images + data.val_videos) or 'held out'}"
                              f", {f'{data.val_size}² centre crops' if data.val_size else 'whole images'}")},
        "notes": facts["notes"],
    }  # fmt: skip
    extra = {"training": {k: summary[k] for k in ("steps", "seconds", "val", "teacher_val", "teacher", "latent_space")},
             "train_config": cfg.to_dict()}  # fmt: skip
    save_decoder(model, out / "model.safetensors", extra=extra)
    config_yaml = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write_text(out / "README.md", model_card(summary, config_yaml))
    atomic_write_text(out / "result.json", json.dumps(summary, indent=2))
    return summary
