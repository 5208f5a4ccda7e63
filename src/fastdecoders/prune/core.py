"""``prune(teacher, keep, latents)``: a narrower decoder of the teacher's architecture, same latent space.

The student is a normal decoder (a TAE with narrower ``widths``, or a diffusers VAE decoder with narrower
``block_out_channels``) with its own config; ``save_decoder`` writes it and every verb loads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.models import Decoder, TAEDecoder
from fastdecoders.models.fileformat import load_strict
from fastdecoders.progress import progress
from fastdecoders.prune.diffusers_vae import as_teacher, vae_prune_setup
from fastdecoders.prune.plan import METHODS, Plan, Stats, calibrate, choose, student_state
from fastdecoders.prune.plan import refine as refine_layers
from fastdecoders.prune.tae import tae_plan, tae_stages, tae_student
from fastdecoders.prune.widths import parse_keep, pruned_width, stage_keeps


@dataclass
class PruneResult:
    student: Decoder
    plan: Plan
    selection: dict[str, torch.Tensor]
    #: per stage, latent side first.
    teacher_widths: tuple[int, ...]
    student_widths: tuple[int, ...]
    keep: tuple[float, ...]
    method: str
    folded: bool
    notes: list[str] = field(default_factory=list)
    #: the calibration statistics (None for plain magnitude slicing); pass to the next ``prune`` of a sweep.
    stats: Stats | None = None


def prune(
    teacher: nn.Module,
    keep: float | str | Sequence[float],
    latents: torch.Tensor | None = None,
    *,
    method: str = "independent",
    fold: bool = True,
    multiple: int = 8,
    batch_size: int = 4,
    refine: bool = False,
    stats: Stats | None = None,
) -> PruneResult:
    """Prune ``teacher`` (a TAE decoder or a diffusers-VAE decoder) to ``keep`` of its channels per stage.

    Args:
        keep: one ratio for every stage, or one per stage (latent side first), e.g. ``(1, 0.5, 0.125, 0.125)``.
        latents: calibration latents in the teacher's input layout (diffusion space); required unless
            ``method="magnitude"`` with ``fold=False``.
        method: ``independent`` (greedy output-aware), ``pivoted`` (pivoted QR) or ``magnitude`` (filter L1).
        fold: rebuild dropped channels from kept ones by least squares and fold that into the next layers.
        multiple: round pruned widths to this multiple (tensor-core friendly) where they are large enough.
        refine: after folding, correct every reading layer in forward order by least squares against the teacher
            on the calibration latents (``plan.refine``); slower (two partial forwards per layer), better start.
        stats: calibration statistics of an earlier ``prune`` of the same teacher on the same latents
            (``result.stats``), reused when they cover this plan's layers (sweeps calibrate once).
    """
    if method not in METHODS:
        raise FastDecodersError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    keeps = parse_keep(keep)
    teacher = teacher.eval()
    if isinstance(teacher, TAEDecoder):
        per_stage = stage_keeps(keeps, tae_stages(teacher.config))
        teacher_widths = tuple(teacher.config.widths)
        widths = tuple(pruned_width(w, k, multiple) for w, k in zip(teacher_widths, per_stage, strict=True))
        plan, student, notes = tae_plan(teacher, widths), tae_student(teacher, widths), []
    else:
        teacher = as_teacher(teacher).eval()
        setup = vae_prune_setup(teacher.vae, keeps, multiple)
        per_stage, teacher_widths, widths = setup.keep, setup.teacher_widths, setup.widths
        plan, notes = setup.plan, setup.notes
        student = setup.build_student(teacher)
    wanted = set(student.state_dict())  # a wrapped teacher may still hold its encoder: leave it out
    state = {k: v.detach().float().cpu() for k, v in teacher.state_dict().items() if k in wanted or k in plan.params}
    needed = {**plan.consumers(), **plan.observers()}
    qk = any(s.kind == "qk" for s in plan.spaces.values())
    if stats is not None and (qk or not set(needed) <= set(stats.gram)):
        stats = None  # a different plan (new shortcut projections, attention energies): calibrate afresh
    if stats is None and (method != "magnitude" or fold):
        if latents is None:
            raise FastDecodersError(f"method {method!r}{' with folding' if fold else ''} needs calibration latents")
        stats = calibrate(teacher, plan, lambda: _feed(teacher, latents, batch_size))
    selection = choose(plan, state, method, stats)
    new_state = student_state(plan, state, selection, stats if fold else None)
    load_strict(student, new_state, "pruned weights")
    param = next(teacher.parameters())
    student = student.to(device=param.device, dtype=param.dtype).eval()
    if refine:
        if latents is None:
            raise FastDecodersError("refine needs calibration latents")
        batches = list(latents.split(batch_size))
        refine_layers(teacher, student, plan, selection, batches, lambda m, b: m(b.to(param.device, param.dtype)))
    return PruneResult(student, plan, selection, teacher_widths, widths, per_stage, method, fold, notes, stats)


def decoder_parameters(decoder: nn.Module) -> int:
    """Parameters a decoder uses (a wrapped diffusers VAE may still hold its encoder: not counted)."""
    skip = ("vae.encoder.", "vae.quant_conv.")
    return sum(p.numel() for n, p in decoder.named_parameters() if not n.startswith(skip))


@torch.no_grad()
def _feed(decoder: nn.Module, latents: torch.Tensor, batch_size: int) -> None:
    param = next(decoder.parameters())
    for chunk in progress(latents.split(batch_size), desc="calibrate", unit="batch"):
        decoder(chunk.to(param.device, param.dtype))
