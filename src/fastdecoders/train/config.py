"""Training configuration: typed dataclasses that a YAML file maps onto one to one, plus ``--set key=value``.

A config file has the six sections below (any may be left out to keep its defaults)::

    teacher: {encoder: taesdxl_encoder, decoder: taesdxl, weights_dir: ../shared/weights/taesd}
    student: {name: tae192-sdxl}
    data:    {images: [../shared/data/images/bsds500], val_images: [../shared/data/images/kodak24], crop: 256}
    loss:    {pixel: 1.0, distill: 1.0, perceptual: 0.1}
    train:   {steps: 5000, batch_size: 16, lr: 1.0e-3}
    log:     {val_every: 1000}

Unknown keys, values of the wrong type and out-of-range values are one ``FastDecodersError`` naming the key, raised
before anything is loaded. Relative paths are resolved against the current directory by ``resolve_paths``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastdecoders.config import apply_overrides, from_dict, read_yaml, to_dict, unknown_key
from fastdecoders.config import fail as _fail

PIXEL_KINDS = ("l1", "mse")
PERCEPTUAL_NETS = ("auto", "lpips", "effnet")
PRECISIONS = ("bf16", "fp32")


def _positive(section: str, **values: float | int | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            _fail(f"{section}.{name} must be > 0, got {value}")


def _non_negative(section: str, **values: float | int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 0:
            _fail(f"{section}.{name} must be >= 0, got {value}")


# -- sections -------------------------------------------------------------------------------------------------------


@dataclass
class TeacherConfig:
    """The model being replaced: makes the latents (encoder) and, optionally, the distillation targets (decoder)."""

    #: TAE encoder weights stem (``taesdxl_encoder``, ``taef2_encoder`` …), found on the weights search path.
    encoder: str | None = None
    #: teacher decoder: a registry name (``taesdxl``), a weights file/folder, or a hub id; None: no distillation.
    decoder: str | None = None
    #: a diffusers VAE (folder or hub id) used as encoder and decoder instead of the two above.
    vae: str | None = None
    #: subfolder of ``vae`` holding the VAE (``vae`` for a whole pipeline repo).
    vae_subfolder: str | None = None
    #: latent space name; by default the teacher decoder's, or the one space whose tiny encoder is ``encoder``.
    latents: str | None = None
    #: folder searched first for weights files (then $FASTDECODERS_WEIGHTS, then ~/.cache/fastdecoders).
    weights_dir: str | None = None

    def __post_init__(self):
        if self.vae is not None and (self.encoder is not None or self.decoder is not None):
            _fail("teacher: give either vae (a diffusers VAE) or encoder/decoder (weights files), not both")
        if self.vae is None and self.encoder is None:
            _fail("teacher: needs an encoder (e.g. taesdxl_encoder) or a diffusers vae to make latents")


@dataclass
class StudentConfig:
    """The decoder being trained."""

    #: a registered architecture (``fastdecoders list``): tae192-sdxl, taesdxl, effvit-sdxl, tae-temporal-svd …;
    #: null: the decoder in ``init`` as it is (its own architecture and config, e.g. a pruned decoder).
    name: str | None = "tae192-sdxl"
    #: weights to start from: a file/folder of ours or upstream, or a registry name with weights; None: random init.
    init: str | None = None
    #: the registry's tiny test config of ``name`` (tests and smoke runs).
    tiny: bool = False
    #: overrides of the architecture config's fields, e.g. ``{pool: true}`` for a TAE on FLUX.2 latents.
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.name is None and self.init is None:
            _fail("student: expected a registered name or an init file (student.init), got neither")
        if self.name is None and (self.tiny or self.config):
            _fail("student.tiny/student.config: expected a registered student.name to apply them to, got null")


@dataclass
class DataConfig:
    """Where the photos/videos come from, how they are cut, and where their latents are cached."""

    #: folders of training images (searched recursively).
    images: list[str] = field(default_factory=list)
    #: folders of training videos (video files and folders of frames, searched recursively).
    videos: list[str] = field(default_factory=list)
    #: latents shards to train on instead of images/videos (``fastdecoders encode --pixels`` output, or another run's
    #: cache): folders, globs or files; each process reads only its own share (shard i -> process i mod world).
    shards: list[str] = field(default_factory=list)
    #: validation shards; when empty, the last shard of ``shards`` is held out.
    val_shards: list[str] = field(default_factory=list)
    #: folders used only for validation; when empty, ``val_count`` items of the training list are held out.
    val_images: list[str] = field(default_factory=list)
    val_videos: list[str] = field(default_factory=list)
    #: items held out for validation when no val folders are given (a fixed choice: by hash of the file path).
    val_count: int = 8
    #: use at most this many training items (sorted order; smoke runs).
    max_items: int | None = None
    #: the short side is scaled down to this before caching (never up); None keeps the native size.
    resize: int | None = 512
    #: side of the random square training crops, pixels (a multiple of the latent factor).
    crop: int = 256
    #: side of the centred validation crops, pixels; None: the whole (resized) image.
    val_size: int | None = 256
    #: random horizontal flips (the flipped image's latents are cached as well: the encoder never runs again).
    flips: bool = True
    #: pixel frames per training clip (video); causal video VAEs need 1 + k·temporal_factor.
    frames: int = 8
    #: take every N-th frame of a video.
    frame_step: int = 1
    #: consecutive clips taken from the start of each video.
    clips_per_video: int = 2
    #: cache folder; None: OUT/cache. Runs with the same teacher and data share its entries.
    cache_dir: str | None = None
    #: items per safetensors shard of the cache.
    shard_items: int = 64
    #: keep the cached data on the training device (a GPU holds a few GB easily; no host->device copies).
    on_device: bool = True

    def __post_init__(self):
        _positive("data", crop=self.crop, val_size=self.val_size, resize=self.resize, frames=self.frames,
                  frame_step=self.frame_step, clips_per_video=self.clips_per_video, shard_items=self.shard_items,
                  max_items=self.max_items)  # fmt: skip
        _non_negative("data", val_count=self.val_count)
        if not (self.images or self.videos or self.shards):
            _fail("data: give training images (data.images), videos (data.videos) or latents shards (data.shards)")
        if self.resize is not None and self.resize < self.crop:
            _fail(f"data.resize ({self.resize}) is smaller than data.crop ({self.crop}): no crop would fit")


#: loss terms that carry a weight (in ``loss`` and in each of ``loss.phases``).
WEIGHTED_TERMS = ("pixel", "distill", "perceptual", "adversarial", "temporal", "feature")
#: terms of which at least one must be on at every step (the others refine, they cannot train alone).
MAIN_TERMS = ("pixel", "distill", "perceptual", "feature")
PHASE_BOUNDS = ("start_step", "until_step")


@dataclass
class LossConfig:
    """Loss terms; each is multiplied by its weight, and a weight of 0 turns the term (and its cost) off.

    Weights (floats >= 0): ``pixel``, ``distill``, ``perceptual``, ``adversarial``, ``temporal``, ``feature``.

    **Feature alignment** (``feature`` > 0): the student's intermediate activations are pulled towards the teacher
    decoder's. ``features`` lists the pairs of module names (``named_modules()`` of the student and of the teacher
    decoder; for a diffusers VAE teacher the names are the VAE's, e.g. ``decoder.up_blocks.0``)::

        features:
          - {student: layers.4, teacher: layers.4}
          - {student: layers.9, teacher: layers.9}

    The output of each named module is captured with a forward hook; when the channel counts differ, the student's
    activation goes through a 1x1 convolution (``student width -> teacher width``) that is trained with the student
    (saved in checkpoints, not in the final model). The term is the mean over pairs of ``feature_kind`` (mse or l1)
    between the (projected) student activation and the teacher's, which must have the same shape otherwise. The
    teacher decoder then runs (without gradients) on every step where ``feature`` > 0.

    **Phases** (``phases``): a list of weight schedules, for multi-phase distillation. Each entry holds
    ``start_step`` (first step, inclusive) and/or ``until_step`` (end, exclusive), an optional ``name``, and any of
    the weights above; weights it leaves out keep the top-level value. A phase without ``start_step`` starts where
    the previous one ended (step 0 for the first); a phase without ``until_step`` ends where the next one starts
    (never, for the last). Steps outside every phase use the top-level weights::

        loss:
          pixel: 1.0
          distill: 1.0
          features: [{student: layers.4, teacher: layers.4}]
          phases:
            - {name: align, until_step: 2000, pixel: 0, distill: 0, feature: 1.0}
            - {name: distill, until_step: 8000, feature: 0.1}
            - {name: finetune, perceptual: 0.1, feature: 0}
    """

    #: student vs the original image.
    pixel: float = 1.0
    pixel_kind: str = "l1"
    #: student vs the teacher decoder's output on the same latents (needs teacher.decoder or teacher.vae).
    distill: float = 0.0
    distill_kind: str = "l1"
    #: feature distance to the original image: LPIPS when its weights are found, else EfficientNet-Lite0 features.
    perceptual: float = 0.0
    perceptual_net: str = "auto"
    #: patch-GAN hinge loss against the original images.
    adversarial: float = 0.0
    #: the GAN (discriminator and generator term) starts at this step ...
    adversarial_start: int = 0
    #: ... and its generator weight ramps linearly from 0 to ``adversarial`` over this many steps.
    adversarial_warmup: int = 500
    #: discriminator learning rate; None: train.lr.
    disc_lr: float | None = None
    disc_channels: int = 64
    disc_layers: int = 3
    #: frame-difference consistency with the original clip (video students only).
    temporal: float = 0.0
    #: feature alignment with the teacher decoder (see the class docstring); needs ``features``.
    feature: float = 0.0
    feature_kind: str = "mse"
    #: pairs ``{student: MODULE, teacher: MODULE}`` of module names whose outputs are aligned.
    features: list[dict[str, str]] = field(default_factory=list)
    #: weight schedules (see the class docstring).
    phases: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self):
        _non_negative("loss", pixel=self.pixel, distill=self.distill, perceptual=self.perceptual,
                      adversarial=self.adversarial, adversarial_start=self.adversarial_start,
                      adversarial_warmup=self.adversarial_warmup, temporal=self.temporal,
                      feature=self.feature)  # fmt: skip
        _positive("loss", disc_lr=self.disc_lr, disc_channels=self.disc_channels, disc_layers=self.disc_layers)
        for name, kinds in (("pixel_kind", PIXEL_KINDS), ("distill_kind", PIXEL_KINDS),
                            ("feature_kind", PIXEL_KINDS), ("perceptual_net", PERCEPTUAL_NETS)):  # fmt: skip
            if getattr(self, name) not in kinds:
                _fail(f"loss.{name} must be one of {', '.join(kinds)}, got {getattr(self, name)!r}")
        for i, pair in enumerate(self.features):
            if set(pair) != {"student", "teacher"} or not all(isinstance(v, str) and v for v in pair.values()):
                _fail(f"loss.features[{i}]: expected {{student: MODULE, teacher: MODULE}}, got {pair!r}")
        self._spans = self._phase_spans()
        schedules = [("loss", self.base_weights())] if not self._covered() else []
        schedules += [(f"loss.phases[{i}]", self._phase_weights(i)) for i in range(len(self.phases))]
        for where, weights in schedules:
            if not any(weights[t] for t in MAIN_TERMS):
                _fail(f"{where}: expected a weight > 0 for at least one of {', '.join(MAIN_TERMS)}, got none")
        if self.uses("feature") and not self.features:
            _fail("loss.feature > 0: expected loss.features (pairs of student/teacher module names), got none")

    def _phase_spans(self) -> list[tuple[int, float]]:
        """[start, end) of each phase, in order; one clear error for bad or overlapping bounds."""
        spans: list[tuple[int, float]] = []
        for i, phase in enumerate(self.phases):
            where = f"loss.phases[{i}]"
            if not isinstance(phase, dict):
                _fail(f"{where}: expected a mapping of weights, got {type(phase).__name__}")
            for key, value in phase.items():
                if key == "name":
                    if not isinstance(value, str):
                        _fail(f"{where}.name: expected str, got {type(value).__name__} {value!r}")
                elif key in PHASE_BOUNDS:
                    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                        _fail(f"{where}.{key}: expected an int >= 0, got {value!r}")
                elif key in WEIGHTED_TERMS:
                    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                        _fail(f"{where}.{key}: expected a weight >= 0, got {value!r}")
                else:
                    unknown_key(f"{where}.{key}", ["name", *PHASE_BOUNDS, *WEIGHTED_TERMS])
        for i, phase in enumerate(self.phases):
            start = phase.get("start_step", spans[-1][1] if spans else 0)
            if "until_step" in phase:
                end: float = phase["until_step"]
            elif i + 1 < len(self.phases):
                if "start_step" not in self.phases[i + 1]:
                    _fail(f"loss.phases[{i}]: expected until_step (or start_step in phases[{i + 1}]), got neither")
                end = self.phases[i + 1]["start_step"]
            else:
                end = math.inf
            if start == math.inf:
                _fail(f"loss.phases[{i}]: expected start_step (phases[{i - 1}] never ends), got none")
            if spans and start < spans[-1][1]:
                _fail(f"loss.phases[{i}]: expected to start at or after step {spans[-1][1]}, got start {start}")
            if end <= start:
                _fail(f"loss.phases[{i}]: expected until_step > start step {start}, got {end}")
            spans.append((int(start), end))
        return spans

    def spans(self) -> list[tuple[int, float]]:
        """[start, end) of each phase (end ``math.inf`` for an open last phase)."""
        return list(self._spans)

    def base_weights(self) -> dict[str, float]:
        """The top-level weights, {term: weight}."""
        return {t: float(getattr(self, t)) for t in WEIGHTED_TERMS}

    def _phase_weights(self, index: int) -> dict[str, float]:
        phase = self.phases[index]
        return {t: float(phase.get(t, getattr(self, t))) for t in WEIGHTED_TERMS}

    def phase_at(self, step: int) -> int | None:
        """Index of the phase that holds ``step`` (0-based optimizer step), or None (top-level weights)."""
        for i, (start, end) in enumerate(self._spans):
            if start <= step < end:
                return i
        return None

    def weights_at(self, step: int) -> dict[str, float]:
        """{term: weight} in force at optimizer step ``step`` (before the adversarial warm-up ramp)."""
        i = self.phase_at(step)
        return self.base_weights() if i is None else self._phase_weights(i)

    def _covered(self) -> bool:
        """True when the phases cover every step (the top-level weights are then never used as such)."""
        s = self._spans
        return (
            bool(s)
            and s[0][0] == 0
            and s[-1][1] == math.inf
            and all(a[1] == b[0] for a, b in zip(s, s[1:], strict=False))
        )

    def uses(self, term: str) -> bool:
        """True if ``term`` has a weight > 0 at some step (its network, cache entries or hooks must be set up)."""
        if getattr(self, term) and not self._covered():
            return True
        return any(self._phase_weights(i)[term] for i in range(len(self.phases)))


@dataclass
class OptimConfig:
    """The optimisation: AdamW with linear warm-up and cosine decay, bf16 autocast, EMA weights."""

    #: optimizer steps in the whole run (the cosine schedule spans them).
    steps: int = 10_000
    #: samples (images or clips) per step and process; the global batch is this × the number of processes.
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 200
    #: the learning rate at the end of the cosine, as a fraction of ``lr``.
    min_lr_ratio: float = 0.05
    #: clip the gradient norm to this; None: no clipping.
    grad_clip: float | None = 1.0
    #: EMA decay of the weights that are validated and saved; None: save the raw weights.
    ema_decay: float | None = 0.999
    #: bf16: autocast matmuls/convs to bfloat16 (weights and optimizer stay float32); fp32: no autocast.
    precision: str = "bf16"
    channels_last: bool = True
    #: torch.compile the student's training forward (GPU runs; the first steps are slow while it compiles).
    compile: bool = False
    seed: int = 0
    #: auto: cuda (this process's LOCAL_RANK under torchrun) when available, else cpu.
    device: str = "auto"
    #: stop (with a checkpoint and the final model) after this much training time; None: run all steps.
    max_minutes: float | None = None

    def __post_init__(self):
        _positive("train", steps=self.steps, batch_size=self.batch_size, lr=self.lr, grad_clip=self.grad_clip,
                  max_minutes=self.max_minutes)  # fmt: skip
        _non_negative("train", weight_decay=self.weight_decay, warmup_steps=self.warmup_steps,
                      min_lr_ratio=self.min_lr_ratio)  # fmt: skip
        if self.min_lr_ratio > 1:
            _fail(f"train.min_lr_ratio must be within [0, 1], got {self.min_lr_ratio}")
        if not all(0 <= b < 1 for b in self.betas):
            _fail(f"train.betas must be within [0, 1), got {list(self.betas)}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            _fail(f"train.ema_decay must be within (0, 1), got {self.ema_decay}")
        if self.precision not in PRECISIONS:
            _fail(f"train.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.device != "auto":
            import torch

            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                _fail(f"train.device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class LogConfig:
    """What is written and how often (steps); checkpoints and logs come from process 0 only."""

    every: int = 50
    val_every: int = 1000
    sample_every: int = 1000
    checkpoint_every: int = 1000
    #: checkpoints kept on disk (the newest ones).
    keep_checkpoints: int = 2
    #: validation items shown in the sample grids (original | teacher | student).
    samples: int = 4
    tensorboard: bool = True

    def __post_init__(self):
        _positive("log", every=self.every, val_every=self.val_every, sample_every=self.sample_every,
                  checkpoint_every=self.checkpoint_every, keep_checkpoints=self.keep_checkpoints)  # fmt: skip
        _non_negative("log", samples=self.samples)


@dataclass
class TrainConfig:
    """A whole training run; ``load_config`` builds it from YAML."""

    teacher: TeacherConfig
    data: DataConfig
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self):
        for term in ("distill", "feature"):
            if self.loss.uses(term) and self.teacher.decoder is None and self.teacher.vae is None:
                _fail(f"loss.{term} > 0: expected a teacher decoder (teacher.decoder or teacher.vae), got none")

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready: tuples become lists."""
        return to_dict(self)




# -- building from plain data (YAML): fastdecoders.config does the type checks ----------------------------------

SECTIONS: dict[str, type] = {
    "teacher": TeacherConfig,
    "student": StudentConfig,
    "data": DataConfig,
    "loss": LossConfig,
    "train": OptimConfig,
    "log": LogConfig,
}


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """A validated ``TrainConfig`` from plain nested data (what YAML gives)."""
    if not isinstance(values, dict):
        _fail(f"{source}: expected a mapping with sections {', '.join(SECTIONS)}, got {type(values).__name__}")
    for key in values:
        if key not in SECTIONS:
            unknown_key(str(key), list(SECTIONS))
    if "teacher" not in values:
        _fail(f"{source}: the teacher section is required (teacher.encoder or teacher.vae)")
    sections = {name: from_dict(cls, values.get(name), name) for name, cls in SECTIONS.items()}
    if "data" not in values:
        _fail(f"{source}: the data section is required (data.images or data.videos)")
    return TrainConfig(**sections)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config, apply ``--set`` overrides, check types and ranges: a ``TrainConfig`` or one clear error."""
    values = read_yaml(path, "config", f"sections {', '.join(SECTIONS)}")
    return config_from_dict(apply_overrides(values, overrides or [], TrainConfig), str(path))


def resolve_paths(cfg: TrainConfig) -> TrainConfig:
    """The config with data folders, teacher/student files and weights_dir resolved against the current directory;
    a missing data folder is one clear error."""
    cwd = Path.cwd()

    def folders(paths: list[str], key: str) -> list[str]:
        out = []
        for p in paths:
            full = (cwd / p).resolve()
            if not full.is_dir():
                _fail(f"{key}: folder {p} not found (resolved against {cwd} to {full})")
            out.append(str(full))
        return out

    def maybe_path(value: str | None) -> str | None:
        # registry names and hub ids stay as they are; only things that exist on disk become absolute
        if value is None or not (cwd / value).exists():
            return value
        return str((cwd / value).resolve())

    data = dataclasses.replace(
        cfg.data,
        images=folders(cfg.data.images, "data.images"),
        videos=folders(cfg.data.videos, "data.videos"),
        val_images=folders(cfg.data.val_images, "data.val_images"),
        val_videos=folders(cfg.data.val_videos, "data.val_videos"),
        # shards may be globs: made absolute, checked when listed
        shards=[str(cwd / p) for p in cfg.data.shards],
        val_shards=[str(cwd / p) for p in cfg.data.val_shards],
        cache_dir=str((cwd / cfg.data.cache_dir).resolve()) if cfg.data.cache_dir else None,
    )
    weights_dir = cfg.teacher.weights_dir
    if weights_dir is not None:
        if not (cwd / weights_dir).is_dir():
            _fail(f"teacher.weights_dir: folder {weights_dir} not found (resolved against {cwd})")
        weights_dir = str((cwd / weights_dir).resolve())
    teacher = dataclasses.replace(
        cfg.teacher, decoder=maybe_path(cfg.teacher.decoder), vae=maybe_path(cfg.teacher.vae), weights_dir=weights_dir
    )
    student = dataclasses.replace(cfg.student, init=maybe_path(cfg.student.init))
    return dataclasses.replace(cfg, data=data, teacher=teacher, student=student)
