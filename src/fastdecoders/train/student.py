"""The student: built from the config, checked against the teacher and the data before anything is loaded, run on
training batches through the decoder's own ``decode_latents``, and validated.

Batch layouts (``train.data.Batch``): images (B, C, h, w) -> (B, 3, H, W); clips (B, t, C, h, w) -> (B, T, 3, H, W).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.eval.metrics import psnr, ssim
from fastdecoders.io import image_grid
from fastdecoders.latents import LatentSpace, get_latent_space, to_01
from fastdecoders.models import Decoder, build_decoder
from fastdecoders.models.fileformat import config_from_saved, config_to_dict, load_strict
from fastdecoders.registry import get_spec
from fastdecoders.train import data as data_mod
from fastdecoders.train.config import StudentConfig, TrainConfig
from fastdecoders.train.data import Split
from fastdecoders.train.losses import frames
from fastdecoders.train.teachers import check_spaces, spaces_compatible
from fastdecoders.weights import load_decoder


def student_kind(decoder: Decoder) -> str:
    """What the student trains on, for the data checks and the batch layout (never to choose how to call it:
    ``decode_latents`` does): ``image``; ``frames`` (clips, frames decoded together: forward takes frames +
    num_frames); ``clip`` (forward takes NCTHW clips). Both clip kinds get (B, t, C, h, w) batches."""
    if decoder.latent_ndim == 5:
        return "clip"
    return "frames" if decoder.decodes_clips else "image"


class DecodeLatents(nn.Module):
    """``forward`` = the decoder's ``decode_latents``: what DDP and torch.compile wrap, so that the training step
    calls every architecture the same way."""

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder.decode_latents(latents)


def run_student(model: nn.Module, kind: str, latents: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """Batch latents -> decoded frames in the batch's pixel layout, RGB about [-1, 1]. ``model``: a decoder, or a
    ``DecodeLatents`` (possibly compiled / DDP-wrapped)."""
    x = latents.transpose(1, 2) if latents.ndim == 5 else latents  # (B, t, C, h, w) -> NCTHW
    if channels_last and kind == "image":
        x = x.contiguous(memory_format=torch.channels_last)
    out = model.decode_latents(x) if isinstance(model, Decoder) else model(x)
    return out.transpose(1, 2) if latents.ndim == 5 else out


def build_student(cfg: StudentConfig, weights_dir: str | None, latents: str | None = None) -> Decoder:
    """The student: the registered architecture (tiny or full, with config overrides), then ``init`` weights.
    Without ``name``, the student is the ``init`` decoder itself (its own architecture and config, e.g. a pruned
    decoder)."""
    if cfg.name is None:
        student = load_decoder(cfg.init, latents=latents, weights_dir=weights_dir, dtype=torch.float32)
        return student.float().train().requires_grad_(True)
    spec = get_spec(cfg.name)
    config = spec.tiny if cfg.tiny else spec.config
    if cfg.config:
        try:
            config = config_from_saved(type(config), {**config_to_dict(config), **cfg.config})
        except (TypeError, ValueError) as e:
            raise FastDecodersError(f"student.config: {e}") from None
    student = build_decoder(spec, config=config)
    if cfg.init is not None:
        source = load_decoder(cfg.init, latents=spec.latents, weights_dir=weights_dir)
        if student.arch == "tae-temporal" and source.arch == "tae":  # start as the frame-wise TAE it extends
            student.load_tae_weights(source.state_dict())
        else:
            load_strict(student, {k: v.float() for k, v in source.state_dict().items()}, f"student.init {cfg.init}")
    return student


def check_student_space(student: Decoder, space: LatentSpace) -> None:
    """A student read from a file must decode the teacher's latents."""
    name = getattr(student, "latent_space_name", None)
    if name is not None and not spaces_compatible(get_latent_space(name), space):
        raise FastDecodersError(f"teacher/student latent mismatch: expected a student for {space.name} latents, "
                                f"got student.init reading {name} latents")  # fmt: skip


def check_setup(cfg: TrainConfig, student: Decoder | None = None) -> tuple[LatentSpace, str]:
    """Every check that needs no weights or data: latent spaces, student kind vs data, crop sizes. (space, kind).
    ``student``: the ``student.init`` decoder when already read (``student.name: null``), so it is read once."""
    space = check_spaces(cfg.teacher, cfg.student)
    if cfg.student.name is None:  # the student is the init file's decoder: its architecture is known once read
        student = student or build_student(cfg.student, cfg.teacher.weights_dir, space.name)
        check_student_space(student, space)
        kind = student_kind(student)
    else:  # built on the meta device (no memory, no init): wrappers of video VAEs set their layout per instance
        with torch.device("meta"):
            kind = student_kind(build_student(replace(cfg.student, init=None), None))
    d, f = cfg.data, space.spatial_factor
    if kind == "image" and not (d.images or d.shards):
        raise FastDecodersError(f"student {cfg.student.name} decodes images; data.images is empty")
    if kind != "image" and not (d.videos or d.shards):
        raise FastDecodersError(f"student {cfg.student.name} decodes video; data.videos is empty")
    if kind == "image" and (d.videos or d.val_videos):
        raise FastDecodersError(f"student {cfg.student.name} decodes images; data.videos is for video students")
    if d.crop % f or (d.val_size is not None and d.val_size % f):
        raise FastDecodersError(f"data.crop and data.val_size must be multiples of {f} ({space.name} latents)")
    if kind != "image":
        if d.frames < 2 and cfg.loss.uses("temporal"):
            raise FastDecodersError("loss.temporal needs data.frames >= 2")
        space.latent_frames(d.frames)  # causal spaces: frames must be 1 + k·temporal_factor
    elif cfg.loss.uses("temporal"):
        raise FastDecodersError(f"loss.temporal is for video students; {cfg.student.name} decodes images")
    return space, kind


@torch.no_grad()
def validate(model: nn.Module, kind: str, val: Split, batch_size: int, device: torch.device) -> dict[str, float]:
    """Mean over validation items of per-frame PSNR/SSIM against the original pixels (and against the teacher's
    output when cached). float32: the numbers describe the weights, not a reduced-precision run."""
    scores: dict[str, list[float]] = {"psnr": [], "ssim": [], "psnr_vs_teacher": []}
    for batch, _ in data_mod.val_batches(val, batch_size, device):
        out = to_01(run_student(model, kind, batch.latents).float())
        ref = to_01(batch.pixels)
        per = lambda metric, a, b: metric(frames(a), frames(b)).view(a.shape[0], -1).mean(1).tolist()  # noqa: E731
        scores["psnr"] += per(psnr, out, ref)
        scores["ssim"] += per(ssim, out, ref)
        if batch.teacher is not None:
            scores["psnr_vs_teacher"] += per(psnr, out, to_01(batch.teacher))
    return {k: data_mod.mean(v) for k, v in scores.items() if v}


@torch.no_grad()
def sample_grid(model: nn.Module, kind: str, val: Split, count: int, device: torch.device) -> torch.Tensor:
    """Rows of original | teacher | student for the first ``count`` validation items (first frame of clips)."""
    rows = []
    for batch, _ in data_mod.val_batches(val, count, device, limit=count):
        out = run_student(model, kind, batch.latents).float()
        cells = [batch.pixels] + ([batch.teacher] if batch.teacher is not None else []) + [out]
        for i in range(batch.pixels.shape[0]):
            rows.append([to_01(c[i, 0] if c.ndim == 5 else c[i]).cpu() for c in cells])
    h = min(r[0].shape[-2] for r in rows)
    w = min(r[0].shape[-1] for r in rows)
    return image_grid([[c[:, :h, :w] for c in r] for r in rows])
