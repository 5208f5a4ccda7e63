"""Options of one ``fastdecoders eval`` run (built from the CLI through ``fastdecoders.config``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn


@dataclass
class EvalConfig:
    """Options of one run (the CLI flags of ``fastdecoders eval``)."""

    kind: str
    source: str | Path
    out: str | Path
    teacher: str | nn.Module | None = None
    size: int | None = None
    limit: int | None = None
    clip_length: int = 17
    frame_step: int = 1
    clips_per_video: int = 1
    #: None: the kind's defaults, leaving out those whose weights are missing (listed in ``skipped``).
    metrics: tuple[str, ...] | None = None
    lpips_weights: str | None = None
    fvd_net: str | None = None
    fvd_frames: int = 16
    fvd_size: int = 224
    fvd_range: str = "pm1"
    #: frames per clip whose Inception features enter the video FID (evenly spaced).
    fid_frames: int = 4
    vae: str | None = None
    latents_space: str | None = None
    weights_dir: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    cache: str | Path | None = None
    resume: bool = True
    grid_count: int = 4
    crop_size: int = 128
    batch_size: int = 8
    progress: bool = True
    write_report: bool = True
