"""The distillation loop: ``train(config, out)`` trains a student decoder to replace a teacher, top to bottom.

It runs on one CPU, one GPU, or N processes under ``torchrun`` (DistributedDataParallel; NCCL on GPUs, gloo on
CPUs; ``train.distributed``). Process 0 alone writes logs, samples, checkpoints and the final model; every process
computes the same weights. Everything that changes while training is one ``RunState`` (``train.state``): a
checkpoint is its ``state_dict()``, a resume its ``load_state_dict()``; batches are a pure function of the step, so a
resumed run is bit-exact.

Output folder::

    OUT/model.safetensors     final (EMA) weights, decoder config and training summary in the metadata
    OUT/README.md             model card;  OUT/result.json: the summary;  OUT/config.yaml: the resolved config
    OUT/checkpoints/          step_NNNNNNN.pt: everything needed to resume exactly (``--resume``)
    OUT/train_log.csv, val_log.csv, tensorboard/, samples/step_NNNNNNN.png
    OUT/cache/                latents (and teacher outputs) in sharded safetensors, unless data.cache_dir is set
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.io import atomic_write_text
from fastdecoders.latents import LatentSpace
from fastdecoders.models import Decoder
from fastdecoders.train import checkpoint as ckpt
from fastdecoders.train.card import describe_phase, weights_sha256, write_outputs
from fastdecoders.train.config import TrainConfig, resolve_paths
from fastdecoders.train.data import Batches, prepare_data
from fastdecoders.train.distributed import (
    Dist,
    all_reduce_grads,
    any_process,
    barrier,
    check_in_sync,
    close,
    init_distributed,
    lost_peers_are_one_line,
)
from fastdecoders.train.features import setup_alignment, teacher_forward
from fastdecoders.train.logs import RunLog, Running
from fastdecoders.train.losses import Objective, adversarial_weight, frames
from fastdecoders.train.losses import hinge_discriminator_loss as d_loss
from fastdecoders.train.perceptual import perceptual_distance
from fastdecoders.train.state import RunState, Stopwatch
from fastdecoders.train.student import DecodeLatents, build_student, check_setup, run_student, sample_grid, validate
from fastdecoders.train.teachers import check_spaces, load_teacher


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
    init = None  # student.name null: the student is the init file's decoder, read once for the checks and the run
    if cfg.student.name is None:
        init = build_student(cfg.student, cfg.teacher.weights_dir, check_spaces(cfg.teacher, cfg.student).name)
    space, kind = check_setup(cfg, init)
    resumed = ckpt.find_resume(cfg.to_dict(), out, resume)
    d = init_distributed(cfg.train.device)
    try:
        last_checkpoint = lambda: next(reversed([p for _, p in ckpt.list_checkpoints(out)]), None)  # noqa: E731
        with lost_peers_are_one_line(d, last_checkpoint):
            return _run(cfg, out, space, kind, resumed, d, init)
    finally:
        close(d)


def _run(cfg: TrainConfig, out: Path, space: LatentSpace, kind: str, resumed: tuple[Path, dict] | None, d: Dist,
         init: Decoder | None) -> dict[str, Any]:  # fmt: skip
    """The run, after the checks: setup, the step loop, the end (``train`` joins and leaves the process group)."""
    t, device = cfg.train, d.device
    random.seed(t.seed)
    np.random.seed(t.seed)
    torch.manual_seed(t.seed)
    out.mkdir(parents=True, exist_ok=True)
    if d.main:
        import yaml

        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    # The student first (its initial weights depend on the seed alone).
    student = (init or build_student(cfg.student, cfg.teacher.weights_dir, space.name)).to(device).train()
    channels_last = t.channels_last and kind == "image"
    if channels_last:
        student = student.to(memory_format=torch.channels_last)

    # Frozen networks: a missing perceptual package or a wrong feature name fails before the (long) caching.
    perceptual = None
    if cfg.loss.uses("perceptual"):
        perceptual = perceptual_distance(cfg.loss.perceptual_net, device)
    teacher = load_teacher(cfg.teacher, device)
    align = None
    if cfg.loss.uses("feature"):
        align, lines = setup_alignment(cfg, student, teacher, space, kind, device)
        if d.main:
            print("feature alignment: " + "; ".join(lines), file=sys.stderr)

    # The data: latents cached once (process 0 builds, the others wait), then sampled by step.
    train_data, val_data, cache = prepare_data(cfg, teacher, out, d, kind)
    facts: dict[str, Any] = {"teacher": teacher.description, "latent_space": space.name, "cache": cache,
                             "perceptual_net": getattr(perceptual, "name", None)}  # fmt: skip
    if align is None:
        del teacher  # the encoder is never needed again
    else:
        teacher.encoder = None  # the decoder runs every feature-alignment step; the encoder never again
    if cfg.data.on_device and device.type != "cpu":
        train_data = train_data.to(device)
    val_data = val_data.to(device)
    # data.shards: each process holds only its own items, so it samples all of them (its own seed) instead of a share
    share = (t.seed + 1_000_003 * d.rank, 0, 1) if cfg.data.shards else (t.seed, d.rank, d.world)
    batches = Batches(train_data, space, cfg.data.crop, t.batch_size, share[0], cfg.data.flips, *share[1:], device)

    # The run state (EMA, optimizer, schedule, discriminator): fresh, or loaded from the checkpoint to resume.
    run = RunState(cfg, student, batches, Stopwatch(device), align.projections if align is not None else None)
    if resumed is not None:
        path, state = resumed
        run.load_state_dict(state)
        if d.main:
            ckpt.drop_after(out, run.step)
        # the checkpoint holds process 0's data position (with data.shards the others' differ: their own items)
        if (d.main or not cfg.data.shards) and state["data"] != batches.position(run.step):
            raise FastDecodersError(f"{path}: data position {state['data']} does not match this data at step "
                                    f"{run.step}")  # fmt: skip
    elif d.main:
        run.init_val = validate(student.eval(), kind, val_data, t.batch_size, device)
        student.train()

    # What runs the forward pass: the decoder's decode_latents, compiled (optional), wrapped for data parallelism.
    forward = DecodeLatents(student)
    forward = torch.compile(forward) if t.compile else forward
    disc = run.disc
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        forward, disc = DDP(forward, device_ids=ids), DDP(disc, device_ids=ids) if disc is not None else None

    objective = Objective(cfg.loss, perceptual)
    log = RunLog(out, d.main, t.steps, run.step, cfg.log.tensorboard)
    running, clock = Running(), run.clock
    last = {"val": -1, "samples": -1, "checkpoint": -1}
    phase, stopped = -1, "steps"

    # The loop: one optimizer step per iteration; the batch is a pure function of the step (exact resume).
    while run.step < t.steps:
        step = run.step
        batch = batches.batch(step)
        if cfg.loss.phases and cfg.loss.phase_at(step) != phase and d.main:
            log.note(step, f"loss phase {describe_phase(cfg.loss, cfg.loss.phase_at(step))}: "
                           f"{cfg.loss.weights_at(step)}")  # fmt: skip
        phase = cfg.loss.phase_at(step)

        # Student step: decode the cached latents, weigh the losses, clip, step, schedule, EMA.
        aligning = align is not None and cfg.loss.weights_at(step)["feature"] > 0
        with _autocast(t.precision, device):
            with align.student.on() if aligning else contextlib.nullcontext():
                output = run_student(forward, kind, batch.latents, channels_last)
            feature = None
            if aligning:
                with align.teacher.on():
                    teacher_forward(teacher, batch.latents)
                feature = align.loss()
            if run.disc is not None:
                run.disc.requires_grad_(False)  # the generator's GAN term must not train the discriminator
            loss, parts = objective(output, batch, step, run.disc, feature)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if align is not None:  # the projections are outside DDP: average their gradients here
            all_reduce_grads(align.projections, d)
        grad_norm = torch.nn.utils.clip_grad_norm_(run.trainable, t.grad_clip or math.inf)
        run.optimizer.step()
        run.scheduler.step()
        if run.ema is not None:
            run.ema.update_parameters(student)

        # Discriminator step (hinge): real photos against the detached student output, in one forward pass.
        if run.disc is not None and adversarial_weight(cfg.loss, step) > 0:
            run.disc.requires_grad_(True)
            with _autocast(t.precision, device):
                real, fake = disc(torch.cat([frames(batch.pixels), frames(output.detach())])).chunk(2)
                loss_d = d_loss(real, fake)
            run.disc_opt.zero_grad(set_to_none=True)
            loss_d.backward()
            run.disc_opt.step()
            parts["disc"] = loss_d.detach()

        run.step = step = step + 1
        clock.count(batch.num_images * d.world)
        running.add({"loss": loss, "grad_norm": grad_norm, **parts})
        log.advance()

        # Logs and the time budget (all processes agree on stopping), then validation, samples, checkpoints.
        if step % cfg.log.every == 0 or step == t.steps:
            images_per_s = clock.lap()
            values = running.means()
            _stop_if_diverged(run, d, out, values["loss"], weights=False)
            log.step(step, {**values, "lr": run.scheduler.get_last_lr()[0], "images_per_s": images_per_s,
                            "phase": -1 if phase is None else phase})  # fmt: skip
            out_of_time = t.max_minutes is not None and clock.seconds >= 60 * t.max_minutes
            if any_process(d, out_of_time) and step < t.steps:
                stopped = f"time budget ({t.max_minutes:g} min)"
                break
        if step == t.steps:
            break
        with clock.paused():  # validation, samples and checkpoints do not count as training time
            if step % cfg.log.val_every == 0:
                if d.main:
                    log.val(step, validate(run.shipped.eval(), kind, val_data, t.batch_size, device))
                last["val"] = step
            if step % cfg.log.sample_every == 0 and cfg.log.samples:
                if d.main:
                    log.grid(step, sample_grid(run.shipped.eval(), kind, val_data, cfg.log.samples, device))
                last["samples"] = step
            if step % cfg.log.checkpoint_every == 0:
                _save(run, d, out, running.loss_sum())
                last["checkpoint"] = step
            student.train()

    # The end: the last checkpoint, validation, samples, the model file and its card.
    if clock.window_steps:  # stopped between log points
        clock.lap()
    if last["checkpoint"] != run.step:
        _save(run, d, out, running.loss_sum())
    model = run.shipped.eval()
    digest = weights_sha256(model)
    result: dict[str, Any] = {"weights_sha256": digest, "steps": run.step, "rank": d.rank, "world_size": d.world}
    if d.main:
        val = validate(model, kind, val_data, t.batch_size, device)
        if last["val"] != run.step:
            log.val(run.step, val)
        if last["samples"] != run.step and cfg.log.samples:
            log.grid(run.step, sample_grid(model, kind, val_data, cfg.log.samples, device))
        facts.update(val=val, init_val=run.init_val, steps=run.step, stopped=stopped, weights_sha256=digest,
                     notes=log.notes)  # fmt: skip
        result.update(write_outputs(cfg, out, model, clock, d, facts))
    log.close()
    barrier(d)
    return result


def _autocast(precision: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def _stop_if_diverged(run: RunState, d: Dist, out: Path, loss: float | None, weights: bool) -> None:
    """Stop, one line, on a non-finite loss (or weights): nothing more is saved, so the checkpoints on disk stay the
    last good ones. All processes agree (no one is left waiting in a collective)."""
    what = "loss" if loss is not None and not math.isfinite(loss) else None
    if what is None and weights and not all(bool(p.detach().isfinite().all()) for p in run.student.parameters()):
        what = "weights"
    if any_process(d, what is not None):
        good = ckpt.list_checkpoints(out)
        kept = f"the last good checkpoint is {good[-1][1]}" if good else "no checkpoint was written before"
        raise FastDecodersError(
            f"training diverged at step {run.step}: the {what or 'loss'} went non-finite (NaN/Inf); stopped without "
            f"saving, {kept} (try a lower train.lr or a train.grad_clip)"
        )


def _save(run: RunState, d: Dist, out: Path, loss: float | None) -> None:
    """A checkpoint of ``run`` (process 0 writes it), after checking that it is finite and the same everywhere."""
    _stop_if_diverged(run, d, out, loss, weights=True)
    check_in_sync(run.student, d)
    if run.projections is not None:
        check_in_sync(run.projections, d)
    if d.main:
        ckpt.save_checkpoint(out, run.step, run.state_dict(), run.cfg.log.keep_checkpoints)
