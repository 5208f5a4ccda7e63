"""The distillation loop: ``train(config, out)`` trains a student decoder to replace a teacher.

One readable function, ``train``, with the small helpers it uses above it. It runs on one CPU, one GPU, or N
processes under ``torchrun`` (DistributedDataParallel; NCCL on GPUs, gloo on CPUs). Process 0 alone writes logs,
samples, checkpoints and the final model; every process computes the same weights.

Output folder::

    OUT/model.safetensors     final (EMA) weights, decoder config and training summary in the metadata
    OUT/README.md             model card;  OUT/result.json: the summary;  OUT/config.yaml: the resolved config
    OUT/checkpoints/          step_NNNNNNN.pt: everything needed to resume exactly (``--resume``)
    OUT/train_log.csv, val_log.csv, tensorboard/, samples/step_NNNNNNN.png
    OUT/cache/                latents (and teacher outputs) in sharded safetensors, unless data.cache_dir is set
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.io import atomic_write_text, image_grid
from fastdecoders.latents import LatentSpace, to_01
from fastdecoders.models import Decoder
from fastdecoders.train import checkpoint as ckpt
from fastdecoders.train import data as data_mod
from fastdecoders.train.card import model_card
from fastdecoders.train.config import LossConfig, OptimConfig, StudentConfig, TrainConfig, resolve_paths
from fastdecoders.train.data import Batches, Split
from fastdecoders.train.features import FeatureAlignment
from fastdecoders.train.logs import RunLog
from fastdecoders.train.losses import Objective, PatchDiscriminator, adversarial_weight, frames
from fastdecoders.train.losses import hinge_discriminator_loss as d_loss
from fastdecoders.train.teachers import Teacher, check_spaces, load_teacher

#: config fields that may change when a run is resumed (budgets and logging); anything else is an error.
RESUMABLE_CHANGES = ("train.steps", "train.max_minutes", "train.compile", "train.device", "data.cache_dir",
                     "data.on_device", "log.")  # fmt: skip


# -- processes ------------------------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), if any."""
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and world > 1:
        device = f"cuda:{local}"
    dev = torch.device(device)
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise FastDecodersError(f"train.device {device}: no such CUDA device here "
                                f"({torch.cuda.device_count()} visible)")  # fmt: skip
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        # the cache is built by process 0 while the others wait: allow it time
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(hours=2))
    return Dist(dist.get_rank() if world > 1 else 0, world, dev)


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def any_process(d: Dist, flag: bool) -> bool:
    """True on every process if ``flag`` is true on any (so that all stop at the same step)."""
    if d.world == 1:
        return flag
    t = torch.tensor([float(flag)], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def check_in_sync(module: nn.Module, d: Dist) -> None:
    """All processes must hold bit-identical weights; a per-process checksum is compared across them."""
    if d.world == 1:
        return
    with torch.no_grad():
        sums = torch.stack([torch.stack([p.double().sum(), p.double().pow(2).sum()]) for p in module.parameters()])
    gathered = [torch.empty_like(sums) for _ in range(d.world)]
    dist.all_gather(gathered, sums)
    if not all(torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError("distributed training: the processes' weights have diverged")


# -- helpers --------------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def warmup_cosine(step: int, cfg: OptimConfig) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup_steps``, then cosine down to ``min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """An exponential moving average of a model's weights (buffers copied), kept in float32 in eval mode."""

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # a short warm-up of the decay, so that early weights do not linger in the average
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1 - d)
        for mine, theirs in zip(self.model.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)


def student_kind(decoder: Decoder | type[Decoder]) -> str:
    """image: (B, C, h, w); frames: (B·T, C, h, w) + num_frames (TemporalTAEDecoder); clip: NCTHW."""
    if decoder.latent_ndim == 5:
        return "clip"
    return "frames" if decoder.arch == "tae-temporal" else "image"


def run_student(model: nn.Module, kind: str, latents: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """Batch latents (``Batch`` layout) -> decoded frames in the batch's pixel layout, RGB about [-1, 1]."""
    if kind == "image":
        return model(latents.contiguous(memory_format=torch.channels_last) if channels_last else latents)
    b, t = latents.shape[:2]
    if kind == "frames":
        return model(latents.flatten(0, 1), num_frames=t).unflatten(0, (b, t))
    return model(latents.transpose(1, 2)).transpose(1, 2)  # (B, t, C, h, w) -> NCTHW -> (B, T, 3, H, W)


def build_student(cfg: StudentConfig, weights_dir: str | None, latents: str | None = None) -> Decoder:
    """The student: the registered architecture (tiny or full, with config overrides), then ``init`` weights.
    Without ``name``, the student is the ``init`` decoder itself (its own architecture and config, e.g. a pruned
    decoder)."""
    from fastdecoders.models import build_decoder
    from fastdecoders.models.base import config_from_dict, config_to_dict
    from fastdecoders.registry import get_spec
    from fastdecoders.weights import load_decoder, load_strict

    if cfg.name is None:
        student = load_decoder(cfg.init, latents=latents, weights_dir=weights_dir, dtype=torch.float32)
        return student.float().train().requires_grad_(True)
    spec = get_spec(cfg.name)
    config = spec.tiny if cfg.tiny else spec.config
    if cfg.config:
        try:
            config = config_from_dict(type(config), {**config_to_dict(config), **cfg.config})
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


def weights_sha256(module: nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _autocast(cfg: OptimConfig, device: torch.device):
    if cfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Wall time, training time (validation and checkpoint pauses left out) and images, across resumed runs."""

    def __init__(self, device: torch.device, seconds: float = 0.0, train_seconds: float = 0.0, images: int = 0):
        self.device, self.seconds, self.train_seconds, self.images = device, seconds, train_seconds, images
        self._mark = self._window_start = time.perf_counter()
        self.window_steps, self._window_images, self._window_paused = 0, 0, 0.0

    def count(self, images: int) -> None:
        self.window_steps += 1
        self._window_images += images

    @contextlib.contextmanager
    def paused(self):
        _sync(self.device)
        start = time.perf_counter()
        yield
        _sync(self.device)
        self._window_paused += time.perf_counter() - start

    def lap(self) -> float:
        """Close the current window (waiting for the device); images/s in it."""
        _sync(self.device)
        now = time.perf_counter()
        busy = max(now - self._window_start - self._window_paused, 1e-9)
        rate = self._window_images / busy
        self.train_seconds += busy
        self.images += self._window_images
        self.seconds += now - self._mark
        self._mark = self._window_start = now
        self.window_steps, self._window_images, self._window_paused = 0, 0, 0.0
        return rate


@torch.no_grad()
def validate(model: nn.Module, kind: str, val: Split, batch_size: int, device: torch.device) -> dict[str, float]:
    """Mean over validation items of per-frame PSNR/SSIM against the original pixels (and against the teacher's
    output when cached). float32: the numbers describe the weights, not a reduced-precision run."""
    from fastdecoders.eval.metrics import psnr, ssim

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


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def _resume_state(cfg: TrainConfig, out: Path, resume: bool | str | None) -> tuple[Path, dict] | None:
    """The checkpoint to continue from, or None for a fresh run; one clear error for a clash."""
    existing = ckpt.list_checkpoints(out)
    if not resume:
        if existing:
            raise FastDecodersError(
                f"{out} already holds a run ({existing[-1][1].name}); pass --resume to continue it, or another --out"
            )
        return None
    if isinstance(resume, str) and resume != "auto":
        path = Path(resume)
        found = (path, ckpt.load_checkpoint(path)) if path.is_file() else None
        if found is None:
            raise FastDecodersError(f"--resume {resume}: no such checkpoint file")
    else:
        found = ckpt.latest_checkpoint(out)
        if found is None:
            if resume == "auto":
                return None
            raise FastDecodersError(f"--resume: {out}/checkpoints holds no readable checkpoint")
    changed = [k for k in _diff_keys(found[1]["config"], cfg.to_dict()) if not k.startswith(RESUMABLE_CHANGES)]
    if changed:
        raise FastDecodersError(
            f"--resume: the config differs from the checkpoint's in {', '.join(changed)}; "
            f"only {', '.join(RESUMABLE_CHANGES)} may change"
        )
    return found


def check_student_space(student: Decoder, space: LatentSpace) -> None:
    """A student read from a file must decode the teacher's latents."""
    from fastdecoders.latents import get_latent_space
    from fastdecoders.train.teachers import spaces_compatible

    name = getattr(student, "latent_space_name", None)
    if name is not None and not spaces_compatible(get_latent_space(name), space):
        raise FastDecodersError(f"teacher/student latent mismatch: expected a student for {space.name} latents, "
                                f"got student.init reading {name} latents")  # fmt: skip


def check_setup(cfg: TrainConfig) -> tuple[LatentSpace, str]:
    """Every check that needs no weights or data: latent spaces, student kind vs data, crop sizes. (space, kind)"""

    space = check_spaces(cfg.teacher, cfg.student)
    if cfg.student.name is None:  # the student is the init file's decoder: its architecture is known once read
        student = build_student(cfg.student, cfg.teacher.weights_dir, space.name)
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


# -- feature alignment ----------------------------------------------------------------------------------------------


def teacher_forward(teacher: Teacher, kind: str, latents: torch.Tensor) -> None:
    """Run the teacher decoder on a batch's latents (for its feature hooks): images as one batch, clips one by one
    ((t, C, h, w) each, the teacher's own clip layout). No gradients; the output is dropped."""
    if kind == "image":
        teacher.decode_live(latents)
    else:
        for clip in latents:
            teacher.decode_live(clip)


def setup_alignment(cfg: TrainConfig, student: Decoder, teacher: Teacher, space: LatentSpace, kind: str,
                    device: torch.device) -> tuple[FeatureAlignment, list[str]]:  # fmt: skip
    """Hooks on both decoders, checked and sized on one zero-latent crop: (FeatureAlignment, a line per pair)."""
    if teacher.decoder_module is None:
        raise FastDecodersError("loss.feature > 0: expected a teacher decoder, got none")
    align = FeatureAlignment(cfg.loss.features, student, teacher.decoder_module, cfg.loss.feature_kind).to(device)
    cells = cfg.data.crop // space.spatial_factor
    if kind == "image":
        z = torch.zeros(1, space.channels, cells, cells, device=device)
    else:
        z = torch.zeros(1, space.latent_frames(cfg.data.frames), space.channels, cells, cells, device=device)
    was_training = student.training
    student.eval()  # no BatchNorm statistics from the probe
    try:
        lines = align.probe(lambda: run_student(student, kind, z), lambda: teacher_forward(teacher, kind, z),
                            cfg.train.seed)  # fmt: skip
    finally:
        student.train(was_training)
    return align.to(device), lines


def all_reduce_grads(module: nn.Module, d: Dist) -> None:
    """Average ``module``'s gradients over the processes (for parameters that DDP does not wrap)."""
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= d.world


def describe_phase(cfg: LossConfig, index: int | None) -> str:
    """'2 (name)' for phase 2, or the top-level weights."""
    if index is None:
        return "(top-level weights)"
    name = cfg.phases[index].get("name")
    return f"{index}" + (f" ({name})" if name else "")


# -- data -----------------------------------------------------------------------------------------------------------


def prepare_data(cfg: TrainConfig, teacher, out: Path, d: Dist, kind: str) -> tuple[Split, Split, dict]:
    """Build (process 0) or reuse the latent cache, then load both splits: (train, val, cache info)."""
    if cfg.data.shards:  # encode's shards: nothing to build, and each process reads only its own share
        return data_mod.load_shards(cfg.data, d.rank, d.world)
    source_kind = "image" if kind == "image" else "video"
    train_sources, val_sources = data_mod.split_sources(cfg.data, source_kind)
    sources = {"train": train_sources, "val": val_sources}
    teacher_outputs = cfg.loss.uses("distill")
    key = data_mod.cache_key(cfg.data, teacher.fingerprint, sources, cfg.data.flips, teacher_outputs)
    folder = Path(cfg.data.cache_dir or out / "cache") / key
    done = folder / "index.json"
    start, reused = time.perf_counter(), done.is_file()
    if d.main and not reused:
        data_mod.build_cache(folder, sources, cfg.data, teacher, cfg.data.flips, teacher_outputs)
    barrier(d)
    train, skipped_train, _ = data_mod.load_split(folder, "train")
    val, skipped_val, metrics = data_mod.load_split(folder, "val")
    if not len(train) or not len(val):
        raise FastDecodersError(
            f"data: no usable {'training' if not len(train) else 'validation'} items "
            f"(all smaller than data.crop={cfg.data.crop} / data.val_size={cfg.data.val_size}?)"
        )
    teacher_val = None
    if metrics:
        teacher_val = {"psnr": data_mod.mean([data_mod.mean(m[0]) for m in metrics]),
                       "ssim": data_mod.mean([data_mod.mean(m[1]) for m in metrics])}  # fmt: skip
    seconds = time.perf_counter() - start
    if d.main and not reused:
        index = {"key": key, "train": len(train), "val": len(val), "teacher": teacher.description,
                 "teacher_val": teacher_val, "skipped": skipped_train + skipped_val, "seconds": seconds}  # fmt: skip
        atomic_write_text(done, json.dumps(index, indent=2))
    if reused:
        seconds = json.loads(done.read_text()).get("seconds", 0.0)
    info = {"folder": str(folder), "train_items": len(train), "val_items": len(val), "teacher_val": teacher_val,
            "skipped": skipped_train + skipped_val, "seconds": seconds, "reused": reused}  # fmt: skip
    return train, val, info


# -- the loop -------------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, out: str | os.PathLike, resume: bool | str | None = None) -> dict[str, Any]:
    """Train ``cfg.student`` to replace ``cfg.teacher``; returns the run summary (see ``OUT/result.json``).

    Args:
        out: the run folder (checkpoints, logs, the final model).
        resume: True: continue from the newest checkpoint in ``out``; a path: from that checkpoint; "auto":
            continue if there is one, else start. A fresh run refuses an ``out`` that already holds checkpoints.
    """
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise FastDecodersError(f"-o {out}: expected a run folder, got an existing file")
    cfg = resolve_paths(cfg)
    space, kind = check_setup(cfg)
    resumed = _resume_state(cfg, out, resume)
    d = init_distributed(cfg.train.device)
    try:
        return _train(cfg, out, space, kind, resumed, d)
    finally:
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, out: Path, space: LatentSpace, kind: str, resumed, d: Dist) -> dict[str, Any]:
    t, device = cfg.train, d.device
    seed_everything(t.seed)
    out.mkdir(parents=True, exist_ok=True)
    if d.main:
        import yaml

        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    # The student first (its initial weights depend on the seed alone), and its EMA.
    student = build_student(cfg.student, cfg.teacher.weights_dir, space.name).to(device).train()
    channels_last = t.channels_last and kind == "image"
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
    ema = EMA(student, t.ema_decay) if t.ema_decay else None

    # Frozen networks: a missing perceptual package or a wrong feature name fails before the (long) caching.
    perceptual = None
    if cfg.loss.uses("perceptual"):
        from fastdecoders.train.perceptual import perceptual_distance

        perceptual = perceptual_distance(cfg.loss.perceptual_net, device)
    teacher = load_teacher(cfg.teacher, device)
    align = None
    if cfg.loss.uses("feature"):
        align, lines = setup_alignment(cfg, student, teacher, space, kind, device)
        if d.main:
            print("feature alignment: " + "; ".join(lines), file=sys.stderr)
    train_data, val_data, cache = prepare_data(cfg, teacher, out, d, kind)
    teacher_desc = teacher.description
    if align is None:
        del teacher  # the encoder is never needed again
    else:
        teacher.encoder = None  # the decoder runs every feature-alignment step; the encoder never again
    on_device = cfg.data.on_device and device.type != "cpu"
    if on_device:
        train_data = train_data.to(device)
    val_data = val_data.to(device)
    # data.shards: each process holds only its own items, so it samples all of them (its own seed) instead of a share
    share = (t.seed + 1_000_003 * d.rank, 0, 1) if cfg.data.shards else (t.seed, d.rank, d.world)
    batches = Batches(train_data, space, cfg.data.crop, t.batch_size, share[0], cfg.data.flips, *share[1:], device)

    # The optimizer (student and feature projections) and schedule; the discriminator when the GAN term is on.
    groups = [{"params": list(student.parameters())}]
    if align is not None and list(align.projections.parameters()):
        groups.append({"params": list(align.projections.parameters()), "weight_decay": 0.0})
    trainable = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(warmup_cosine, cfg=t))
    disc = disc_opt = None
    if cfg.loss.uses("adversarial"):
        disc = PatchDiscriminator(cfg.loss.disc_channels, cfg.loss.disc_layers).to(device).train()
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.loss.disc_lr or t.lr, betas=(0.5, 0.9))
    objective = Objective(cfg.loss, perceptual)

    step, seconds, train_seconds, images, init_val = 0, 0.0, 0.0, 0, None
    if resumed is not None:
        path, state = resumed
        student.load_state_dict(state["student"])
        if align is not None:
            align.projections.load_state_dict(state["projections"])
        if ema is not None:
            ema.model.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if disc is not None:
            disc.load_state_dict(state["disc"])
            disc_opt.load_state_dict(state["disc_optimizer"])
        ckpt.set_rng_state(state["rng"])
        step, seconds, train_seconds, images = state["step"], state["seconds"], state["train_seconds"], state["images"]
        init_val = state.get("init_val")
        if d.main:
            ckpt.drop_after(out, step)
        # the checkpoint holds process 0's data position (with data.shards the others' differ: their own items)
        if (d.main or not cfg.data.shards) and state["data"] != batches.position(step):
            raise FastDecodersError(f"{path}: data position {state['data']} does not match this data at step {step}")
    elif d.main:
        init_val = validate(student.eval(), kind, val_data, t.batch_size, device)
        student.train()

    # What runs the forward pass: compiled (optional), then wrapped for data parallelism.
    forward = torch.compile(student) if t.compile else student
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        forward = DDP(forward, device_ids=[device.index] if device.type == "cuda" else None)
        disc_ddp = DDP(disc, device_ids=[device.index] if device.type == "cuda" else None) if disc else None
    else:
        disc_ddp = disc

    log = RunLog(out, d.main, t.steps, step, cfg.log.tensorboard)
    clock = Stopwatch(device, seconds, train_seconds, images)
    last = {"val": -1, "samples": -1, "checkpoint": -1}
    running: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    current_phase: int | None = -1
    stopped = "steps"
    final = lambda: ema.model if ema is not None else student  # noqa: E731  (the weights that are shipped)

    def stop_if_diverged(step: int, loss: float | None, weights: bool) -> None:
        """Stop, one line, on a non-finite loss (or weights): nothing more is saved, so the checkpoints on disk stay
        the last good ones. All processes agree (no one is left waiting in a collective)."""
        what = "loss" if loss is not None and not math.isfinite(loss) else None
        if what is None and weights and not all(bool(p.detach().isfinite().all()) for p in student.parameters()):
            what = "weights"
        if any_process(d, what is not None):
            good = ckpt.list_checkpoints(out)
            kept = f"the last good checkpoint is {good[-1][1]}" if good else "no checkpoint was written before"
            raise FastDecodersError(
                f"training diverged at step {step}: the {what or 'loss'} went non-finite (NaN/Inf); stopped without "
                f"saving, {kept} (try a lower train.lr or a train.grad_clip)"
            )

    def save(step: int) -> None:
        # the loss summed since the last log point (one sync per checkpoint, not per step)
        stop_if_diverged(step, float(running["loss"]) if "loss" in running else None, weights=True)
        check_in_sync(student, d)
        if align is not None:
            check_in_sync(align.projections, d)
        if d.main:
            state = {
                "step": step, "student": student.state_dict(), "ema": ema.model.state_dict() if ema else None,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "disc": disc.state_dict() if disc else None, "disc_optimizer": disc_opt.state_dict() if disc else None,
                "projections": align.projections.state_dict() if align is not None else None,
                "rng": ckpt.rng_state(), "data": batches.position(step), "seconds": clock.seconds,
                "train_seconds": clock.train_seconds, "images": clock.images, "init_val": init_val,
                "config": cfg.to_dict(),
            }  # fmt: skip
            ckpt.save_checkpoint(out, step, state, cfg.log.keep_checkpoints)
        last["checkpoint"] = step

    # The loop: one optimizer step per iteration; batches are a pure function of the step (exact resume).
    while step < t.steps:
        batch = batches.batch(step)

        # Student step: decode the cached latents, weigh the losses, clip, step, schedule, EMA.
        phase = cfg.loss.phase_at(step)
        if cfg.loss.phases and phase != current_phase and d.main:
            log.note(step, f"loss phase {describe_phase(cfg.loss, phase)}: {cfg.loss.weights_at(step)}")
        current_phase = phase
        aligning = align is not None and cfg.loss.weights_at(step)["feature"] > 0
        with _autocast(t, device):
            with align.student.on() if aligning else contextlib.nullcontext():
                output = run_student(forward, kind, batch.latents, channels_last)
            feature = None
            if aligning:
                with align.teacher.on():
                    teacher_forward(teacher, kind, batch.latents)
                feature = align.loss()
            if disc is not None:
                disc.requires_grad_(False)  # the generator's GAN term must not train the discriminator
            loss, parts = objective(output, batch, step, disc, feature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if align is not None and d.world > 1:  # the projections are outside DDP: average their gradients here
            all_reduce_grads(align.projections, d)
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, t.grad_clip or math.inf)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(student, step)

        # Discriminator step (hinge): real photos against the detached student output, in one forward pass.
        if disc is not None and adversarial_weight(cfg.loss, step) > 0:
            disc.requires_grad_(True)
            with _autocast(t, device):
                real, fake = disc_ddp(torch.cat([frames(batch.pixels), frames(output.detach())])).chunk(2)
                loss_d = d_loss(real, fake)
            disc_opt.zero_grad(set_to_none=True)
            loss_d.backward()
            disc_opt.step()
            parts["disc"] = loss_d.detach()

        step += 1
        clock.count(batch.num_images * d.world)
        for name, value in {"loss": loss.detach(), "grad_norm": grad_norm.detach(), **parts}.items():
            running[name] = running.get(name, 0) + value.float()  # summed on the device: no sync per step
            counts[name] = counts.get(name, 0) + 1
        log.advance()

        # Logs and the time budget (all processes agree on stopping), then validation, samples, checkpoints.
        if step % cfg.log.every == 0 or step == t.steps:
            images_per_s = clock.lap()
            values = {k: float(v) / counts[k] for k, v in running.items()}
            stop_if_diverged(step, values["loss"], weights=False)
            phase_index = -1 if current_phase is None else current_phase
            log.step(step, {**values, "lr": scheduler.get_last_lr()[0], "images_per_s": images_per_s,
                            "phase": phase_index})  # fmt: skip
            running, counts = {}, {}
            out_of_time = t.max_minutes is not None and clock.seconds >= 60 * t.max_minutes
            if any_process(d, out_of_time) and step < t.steps:
                stopped = f"time budget ({t.max_minutes:g} min)"
                break
        if step == t.steps:
            break
        with clock.paused():  # validation, samples and checkpoints do not count as training time
            if step % cfg.log.val_every == 0:
                if d.main:
                    log.val(step, validate(final().eval(), kind, val_data, t.batch_size, device))
                last["val"] = step
            if step % cfg.log.sample_every == 0 and cfg.log.samples:
                if d.main:
                    log.grid(step, sample_grid(final().eval(), kind, val_data, cfg.log.samples, device))
                last["samples"] = step
            if step % cfg.log.checkpoint_every == 0:
                save(step)
            student.train()

    # The end: the last checkpoint, validation, samples, the model file and its card.
    if clock.window_steps:  # stopped between log points
        clock.lap()
    if last["checkpoint"] != step:
        save(step)
    model = final().eval()
    digest = weights_sha256(model)
    result: dict[str, Any] = {"weights_sha256": digest, "steps": step, "rank": d.rank, "world_size": d.world}
    if d.main:
        val = validate(model, kind, val_data, t.batch_size, device)
        if last["val"] != step:
            log.val(step, val)
        if last["samples"] != step and cfg.log.samples:
            log.grid(step, sample_grid(model, kind, val_data, cfg.log.samples, device))
        result.update(_finish(cfg, out, model, space, teacher_desc, cache, val, init_val, step, clock, stopped, d,
                              digest, perceptual, log.notes))  # fmt: skip
    log.close()
    barrier(d)
    return result


def _finish(cfg: TrainConfig, out: Path, model: Decoder, space: LatentSpace, teacher_desc: str, cache: dict,
            val: dict, init_val: dict | None, step: int, clock: Stopwatch, stopped: str, d: Dist, digest: str,
            perceptual: nn.Module | None, notes: list[str]) -> dict[str, Any]:  # fmt: skip
    """Write OUT/model.safetensors, README.md (model card) and result.json; return the summary."""
    import yaml

    from fastdecoders.weights import save_decoder

    metrics = lambda m: None if m is None else {"psnr": m["psnr"], "ssim": m["ssim"]}  # noqa: E731
    data = cfg.data
    summary = {
        "model": str(out / "model.safetensors"),
        "steps": step,
        "seconds": clock.seconds,
        "images_per_s": clock.images / max(clock.train_seconds, 1e-9),
        "val": metrics(val),
        "val_psnr_vs_teacher": val.get("psnr_vs_teacher"),
        "teacher_val": cache["teacher_val"],
        "init_val": metrics(init_val),
        "student": {"name": cfg.student.name or Path(cfg.student.init).name, "arch": model.arch,
                    "params": model.num_parameters(), "tiny": cfg.student.tiny},  # fmt: skip
        "teacher": teacher_desc,
        "latent_space": space.name,
        "ema": cfg.train.ema_decay is not None,
        "losses": {k: v for k, v in cfg.loss.base_weights().items() if v},
        "phases": [{"phase": describe_phase(cfg.loss, i), "start": start, "until": None if end == math.inf else end,
                    "weights": {k: v for k, v in cfg.loss.weights_at(start).items() if v}}
                   for i, (start, end) in enumerate(cfg.loss.spans())],  # fmt: skip
        "feature_pairs": [f"{p['student']} -> {p['teacher']}" for p in cfg.loss.features]
        if cfg.loss.uses("feature") else [],
        "perceptual_net": getattr(perceptual, "name", None),
        "global_batch": cfg.train.batch_size * d.world,
        "world_size": d.world,
        "device": (torch.cuda.get_device_name(d.device) if d.device.type == "cuda"
                   else f"cpu ({torch.get_num_threads()} threads)"),
        "stopped": stopped,
        "weights_sha256": digest,
        "cache": {k: cache[k] for k in ("folder", "seconds", "reused", "skipped")},
        "data": {"train_items": cache["train_items"], "val_items": cache["val_items"], "crop": data.crop,
                 "flips": data.flips, "folders": [Path(p).name for p in data.images + data.videos],
                 "val_desc": (f"{', '.join(Path(p).name for p in data.val_images + data.val_videos) or 'held out'}"
                              f", {f'{data.val_size}² centre crops' if data.val_size else 'whole images'}")},
        "notes": notes,
    }  # fmt: skip
    extra = {"training": {k: summary[k] for k in ("steps", "seconds", "val", "teacher_val", "teacher", "latent_space")},
             "train_config": cfg.to_dict()}  # fmt: skip
    save_decoder(model, out / "model.safetensors", extra=extra)
    config_yaml = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write_text(out / "README.md", model_card(summary, config_yaml))
    atomic_write_text(out / "result.json", json.dumps(summary, indent=2))
    return summary
