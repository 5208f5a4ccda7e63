"""The state of a training run: everything that changes while it trains, in one object with ``state_dict()`` /
``load_state_dict()`` (what a checkpoint holds, so resuming is loading it), plus its parts: the EMA of the weights
(``torch.optim.swa_utils.AveragedModel``), the warm-up + cosine schedule (``LambdaLR``) and the stopwatch.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from fastdecoders.bench.timing import default_sync
from fastdecoders.train import checkpoint as ckpt
from fastdecoders.train.config import OptimConfig, TrainConfig
from fastdecoders.train.data import Batches
from fastdecoders.train.losses import PatchDiscriminator


def warmup_cosine(step: int, cfg: OptimConfig) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup_steps``, then cosine down to ``min_lr_ratio`` at ``steps``.
    A pure function of the step and the config, so ``train.steps`` may change on a resume."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def ema_with_warmup(decay: float):
    """``AveragedModel``'s ``multi_avg_fn``: an EMA whose decay warms up as min(decay, n / (n + 9)) after n updates,
    so that the first weights do not linger in the average."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        d = min(decay, float(n) / (float(n) + 9))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return update


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of ``model`` (buffers copied, not averaged), starting from its current weights."""
    ema = AveragedModel(model, multi_avg_fn=ema_with_warmup(decay), use_buffers=False)
    ema.n_averaged.fill_(1)  # the copy is the first average: the next update blends, it does not overwrite
    return ema.requires_grad_(False).eval()


class Stopwatch:
    """Wall time, training time (validation and checkpoint pauses left out) and images, across resumed runs."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.train_seconds, self.images = device, 0.0, 0.0, 0
        self._sync = default_sync(device)  # waits for the device before reading the clock (bench.timing's one helper)
        self._mark = self._window_start = time.perf_counter()
        self.window_steps, self._window_images, self._window_paused = 0, 0, 0.0

    def count(self, images: int) -> None:
        self.window_steps += 1
        self._window_images += images

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self._window_paused += time.perf_counter() - start

    def lap(self) -> float:
        """Close the current window (waiting for the device); images/s in it."""
        self._sync()
        now = time.perf_counter()
        busy = max(now - self._window_start - self._window_paused, 1e-9)
        rate = self._window_images / busy
        self.train_seconds += busy
        self.images += self._window_images
        self.seconds += now - self._mark
        self._mark = self._window_start = now
        self.window_steps, self._window_images, self._window_paused = 0, 0, 0.0
        return rate


@dataclass
class RunState:
    """Student, EMA, optimizer and schedule, discriminator, feature projections, step, clock: a checkpoint is
    ``state_dict()``, a resume is ``load_state_dict()`` (RNG states included, so the run continues bit-exactly)."""

    cfg: TrainConfig
    student: nn.Module
    batches: Batches
    clock: Stopwatch
    projections: nn.Module | None = None
    step: int = 0
    #: validation of the initial weights (process 0), for the model card
    init_val: dict[str, float] | None = None
    ema: AveragedModel | None = field(init=False)
    optimizer: torch.optim.Optimizer = field(init=False)
    scheduler: torch.optim.lr_scheduler.LambdaLR = field(init=False)
    disc: PatchDiscriminator | None = field(init=False)
    disc_opt: torch.optim.Optimizer | None = field(init=False)

    def __post_init__(self) -> None:
        t, loss = self.cfg.train, self.cfg.loss
        self.ema = make_ema(self.student, t.ema_decay) if t.ema_decay else None
        # one optimizer for the student and the feature projections (no weight decay on those), one schedule
        groups = [{"params": list(self.student.parameters())}]
        if self.projections is not None and list(self.projections.parameters()):
            groups.append({"params": list(self.projections.parameters()), "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, functools.partial(warmup_cosine, cfg=t))
        self.disc = self.disc_opt = None
        if loss.uses("adversarial"):
            device = next(self.student.parameters()).device
            self.disc = PatchDiscriminator(loss.disc_channels, loss.disc_layers).to(device).train()
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=loss.disc_lr or t.lr, betas=(0.5, 0.9))

    @property
    def trainable(self) -> list[nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    @property
    def shipped(self) -> nn.Module:
        """The weights that are validated and saved: the EMA's, or the raw student's without one."""
        return self.ema.module if self.ema is not None else self.student

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds (``checkpoint.REQUIRED_KEYS`` and the optional parts)."""
        optional = lambda m: m.state_dict() if m is not None else None  # noqa: E731
        return {
            "step": self.step, "student": self.student.state_dict(),
            "ema": optional(self.ema.module if self.ema is not None else None),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "disc": optional(self.disc), "disc_optimizer": optional(self.disc_opt),
            "projections": optional(self.projections), "rng": ckpt.rng_state(),
            "data": self.batches.position(self.step), "seconds": self.clock.seconds,
            "train_seconds": self.clock.train_seconds, "images": self.clock.images, "init_val": self.init_val,
            "config": self.cfg.to_dict(),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.student.load_state_dict(state["student"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"])
            self.ema.n_averaged.fill_(self.step + 1)  # one update per step after the initial copy
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.disc is not None:
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_optimizer"])
        if self.projections is not None:
            self.projections.load_state_dict(state["projections"])
        ckpt.set_rng_state(state["rng"])
        clock = self.clock
        clock.seconds, clock.train_seconds, clock.images = state["seconds"], state["train_seconds"], state["images"]
        self.init_val = state.get("init_val")
