"""Flash-VAED's three-phase dynamic distillation of a pruned decoder, as a thin driver over the trainer.

A recipe (``configs/flash-vaed-*.yaml``) is a training config (``fastdecoders.train.config``: teacher, data, loss,
train, log) plus a ``prune`` section: how the student is made: ``teacher`` (default: ``teacher.decoder``), ``keep``
(a ratio or per-stage ratios), ``method``, ``fold``, calibration (``calib`` photos / ``calib_count`` /
``calib_size``, or random latents for random-weight teachers) and video operator swaps (``sep3d_stages``,
``frame2d_stages``). The driver prunes, saves the student (a file names its own architecture and config) and
trains that file (``student.name: null``, ``student.init``: the pruned weights). The schedule is either

* the trainer's own (**one run**): ``loss.phases`` with ``until_step`` bounds, e.g. phase 1 ``feature`` (+ a little
  ``distill``), phase 2 ``pixel + distill + perceptual``, phase 3 the same ``+ adversarial``; ``loss.features:
  auto`` pairs the end of every stage but the head (``feature_points``) of student and teacher, projected by 1x1
  convs where widths differ (the trainer's ``features``); or
* a top-level ``phases`` list (**one trainer run per phase**, each from the previous model): ``{name, steps, lr?,
  batch_size?, loss: {...}}``, the phase's weights updating the recipe's loss section. A phase whose loss has a
  ``feature`` weight and no ``features`` is run here instead (``align_features``, on the calibration latents).

Run: ``fastdecoders prune configs/flash-vaed-tiny.yaml -o runs/flash-vaed-tiny`` (``--phase-steps 5,5,5``
shortens every phase, for smoke tests).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastdecoders.config import from_dict, read_yaml
from fastdecoders.errors import FastDecodersError
from fastdecoders.models.fileformat import save_decoder
from fastdecoders.prune.calib import calibration_latents
from fastdecoders.prune.core import decoder_parameters, prune
from fastdecoders.prune.ops import feature_points, swap_operators
from fastdecoders.prune.source import load_source
from fastdecoders.prune.widths import parse_keep
from fastdecoders.train import config_from_dict, train
from fastdecoders.weights import load_decoder


@dataclass
class PruneSection:
    """The types of a recipe's ``prune`` section (checked by ``fastdecoders.config``); None: the driver's default
    (``run_recipe``). ``recipe.prune`` stays the mapping as written."""

    keep: float | list[float]
    teacher: str | None = None
    method: str | None = None
    fold: bool | None = None
    multiple: int | None = None
    calib: str | None = None
    calib_count: int | None = None
    calib_size: int | None = None
    calib_frames: int | None = None
    calib_latents: str | None = None
    sep3d_stages: int | list[int] | None = None
    frame2d_stages: int | list[int] | None = None
    latents: str | None = None
    random_init: bool | None = None


PRUNE_KEYS = {f.name for f in dataclasses.fields(PruneSection)}
ALIGN_LOSS_KEYS = {"feature", "distill"}


@dataclass
class Phase:
    """One phase of the schedule: its steps and loss weights (a ``feature`` weight makes it an alignment phase)."""

    name: str
    steps: int
    loss: dict[str, Any]
    lr: float | None = None
    batch_size: int | None = None

    @property
    def align(self) -> bool:
        return "feature" in self.loss

    @property
    def local(self) -> bool:
        """An alignment phase run here (no trainer ``features`` given)."""
        return self.align and "features" not in self.loss


@dataclass
class Recipe:
    """A parsed recipe: the pruning settings, the phases, and the trainer's sections (plain YAML data)."""

    prune: dict[str, Any]
    phases: list[Phase]
    train_sections: dict[str, Any]
    source: str = "recipe"


def parse_recipe(values: dict[str, Any], source: str = "recipe") -> Recipe:
    """A ``Recipe`` from YAML data, every phase's trainer config validated up front (one error, before any work)."""
    phase_keys = {f.name for f in dataclasses.fields(Phase)}
    if not isinstance(values, dict):
        raise FastDecodersError(f"{source}: expected a mapping with prune/phases and trainer sections, got {values!r}")
    values = dict(values)
    prune_cfg, phases_raw = values.pop("prune", None), values.pop("phases", None)
    if not isinstance(prune_cfg, dict) or "keep" not in prune_cfg:
        raise FastDecodersError(f"{source}: expected a prune section with keep (e.g. prune: {{keep: 0.5}}), got "
                                f"{prune_cfg!r}")  # fmt: skip
    unknown = set(prune_cfg) - PRUNE_KEYS
    if unknown:
        raise FastDecodersError(f"{source}: expected prune keys among {', '.join(sorted(PRUNE_KEYS))}, got "
                                f"{', '.join(sorted(unknown))}")  # fmt: skip
    from_dict(PruneSection, prune_cfg, f"{source}: prune")  # types: one line naming the key
    loss = values.get("loss") or {}
    if phases_raw is None and not (isinstance(loss, dict) and loss.get("phases")):
        raise FastDecodersError(f"{source}: expected a schedule (loss.phases, or a top-level phases list), got none")
    if phases_raw is not None and (not isinstance(phases_raw, list) or not phases_raw):
        raise FastDecodersError(f"{source}: expected phases (a non-empty list), got {phases_raw!r}")
    phases = []
    for i, raw in enumerate(phases_raw or []):
        if not isinstance(raw, dict) or set(raw) - phase_keys or "steps" not in raw or "loss" not in raw:
            raise FastDecodersError(f"{source}: phase {i}: expected keys steps, loss (and name, lr, batch_size), "
                                    f"got {raw!r}")  # fmt: skip
        phase = from_dict(Phase, {"name": f"phase{i + 1}", **raw}, f"{source}: phase {i}")
        if phase.steps < 1:
            raise FastDecodersError(f"{source}: phase {i}: expected steps >= 1, got {phase.steps}")
        if phase.align and "features" not in phase.loss and set(phase.loss) - ALIGN_LOSS_KEYS:
            raise FastDecodersError(f"{source}: phase {phase.name}: an alignment phase (loss.feature) takes loss "
                                    f"keys {', '.join(sorted(ALIGN_LOSS_KEYS))}, got {sorted(phase.loss)}")  # fmt: skip
        phases.append(phase)
    recipe = Recipe(prune_cfg, phases, values, source)
    for phase in recipe.phases:
        if not phase.local:
            config_from_dict(_with_features(phase_config(recipe, phase, "pruned-student", None), ["x"]),
                             f"{source} phase {phase.name}")  # fmt: skip
    if not recipe.phases:
        config_from_dict(_with_features(_student(values, "pruned-student", None), ["x"]), source)
    return recipe


def _student(values: dict[str, Any], name: str | None, init: str | None) -> dict[str, Any]:
    values = copy.deepcopy(values)
    values["student"] = {"name": name, "init": init}
    return values


def _with_features(values: dict[str, Any], points: Sequence[str]) -> dict[str, Any]:
    """``loss.features: auto`` (or missing where a feature weight is used) -> the stage-end pairs."""
    loss = values.get("loss") or {}
    uses = float(loss.get("feature", 0) or 0) > 0 or any(
        float(p.get("feature", 0) or 0) > 0 for p in loss.get("phases") or [] if isinstance(p, dict)
    )
    if loss.get("features") in (None, "auto") and uses:
        loss = {**loss, "features": [{"student": p, "teacher": p} for p in points]}
    elif loss.get("features") == "auto":
        loss = {k: v for k, v in loss.items() if k != "features"}
    return {**values, "loss": loss}


def load_recipe(path: str | Path) -> Recipe:
    return parse_recipe(read_yaml(path, "recipe", "prune/phases and trainer sections"), str(path))


def phase_config(recipe: Recipe, phase: Phase, student: str | None, init: str | None) -> dict[str, Any]:
    """The trainer config (plain data) of a trainer phase: the recipe's sections, the phase's loss weights and
    steps, the student and its starting weights."""
    values = copy.deepcopy(recipe.train_sections)
    values["loss"] = {**(values.get("loss") or {}), **phase.loss}
    train = {**(values.get("train") or {}), "steps": phase.steps}
    if phase.lr is not None:
        train["lr"] = phase.lr
    if phase.batch_size is not None:
        train["batch_size"] = phase.batch_size
    values["train"] = train
    return _student(values, student, init)


def phase_steps(text: str | None, recipe: Recipe) -> None:
    """``--phase-steps 5,5,5``: override each phase's steps in place (one number: every phase). With the trainer's
    ``loss.phases`` the bounds become cumulative ``until_step`` values and ``train.steps`` their sum."""
    if not text:
        return
    native = [] if recipe.phases else list((recipe.train_sections.get("loss") or {}).get("phases") or [])
    count = len(recipe.phases) or len(native)
    try:
        steps = [int(v) for v in text.split(",")]
    except ValueError:
        raise FastDecodersError(f"expected --phase-steps as comma-separated integers, got {text!r}") from None
    steps = steps * count if len(steps) == 1 else steps
    if len(steps) != count or min(steps) < 1:
        raise FastDecodersError(f"expected {count} positive --phase-steps values, got {text!r}")
    if recipe.phases:
        for phase, n in zip(recipe.phases, steps, strict=True):
            phase.steps = n
        return
    bound, phases = 0, []
    for phase, n in zip(native, steps, strict=True):
        bound += n
        phases.append({**{k: v for k, v in phase.items() if k not in ("start_step", "until_step")},
                       "until_step": bound})  # fmt: skip
    sections = recipe.train_sections
    sections["loss"] = {**sections["loss"], "phases": phases}
    sections["train"] = {**(sections.get("train") or {}), "steps": bound}


# -- phase 1: feature alignment --------------------------------------------------------------------------------------


class _Taps:
    """Forward hooks that collect a module list's outputs (a decoder may call one module per frame chunk)."""

    def __init__(self, model: nn.Module, points: Sequence[str]):
        self.outputs: dict[str, list[torch.Tensor]] = {p: [] for p in points}
        self.handles = [model.get_submodule(p).register_forward_hook(self._hook(p)) for p in points]

    def _hook(self, point: str):
        def hook(module, args, out):
            self.outputs[point].append(out)

        return hook

    def take(self) -> dict[str, list[torch.Tensor]]:
        out = self.outputs
        self.outputs = {p: [] for p in out}
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _projection(c_s: int, c_t: int, ndim: int) -> nn.Module:
    conv = nn.Conv3d if ndim == 5 else nn.Conv2d
    return conv(c_s, c_t, 1, bias=False)


@torch.no_grad()
def _least_squares_init(proj: nn.Module, f_s: torch.Tensor, f_t: torch.Tensor, ridge: float = 1e-3) -> None:
    xs = f_s.detach().movedim(1, -1).reshape(-1, f_s.shape[1]).double()
    xt = f_t.detach().movedim(1, -1).reshape(-1, f_t.shape[1]).double()
    g = xs.T @ xs
    lam = ridge * float(g.diagonal().mean().clamp_min(1e-12))
    w = torch.linalg.solve(g + lam * torch.eye(g.shape[0], dtype=g.dtype), xs.T @ xt).T  # (C_t, C_s)
    proj.weight.copy_(w.reshape(proj.weight.shape).to(proj.weight.dtype))


def align_features(
    teacher: nn.Module,
    student: nn.Module,
    latents: torch.Tensor,
    steps: int,
    *,
    feature: float = 1.0,
    distill: float = 0.0,
    lr: float = 1e-3,
    batch_size: int = 4,
    seed: int = 0,
    log_every: int = 0,
) -> dict[str, Any]:
    """Phase 1: train ``student`` (in place) so that its stage outputs, projected to the teacher's widths by 1x1
    convs (trained alongside, least-squares initialised), match the teacher's on ``latents``.

    Loss per step: ``feature · mean_p ‖P_p s_p − t_p‖² / ‖t_p‖²`` (p over ``feature_points``; per-pixel mean) plus
    ``distill · L1(student(z), teacher(z))`` (outputs in [-1, 1]). Returns ``{"steps", "loss_first",
    "loss_last", "seconds", "points"}``.
    """
    points = feature_points(teacher)
    missing = [p for p in points if p not in dict(student.named_modules())]
    if missing:
        raise FastDecodersError(f"expected the student to share the teacher's layout, got no module {missing[0]}")
    param = next(student.parameters())
    device, dtype = param.device, param.dtype
    teacher = teacher.eval().requires_grad_(False)
    student.train()
    t_taps, s_taps = _Taps(teacher, points), _Taps(student, points)
    gen = torch.Generator().manual_seed(seed)
    projections: nn.ModuleDict | None = None
    optimizer: torch.optim.Optimizer | None = None
    history: list[float] = []
    start = time.perf_counter()
    try:
        for step in range(steps):
            idx = torch.randint(0, latents.shape[0], (min(batch_size, latents.shape[0]),), generator=gen)
            z = latents[idx].to(device, dtype)
            if torch.rand((), generator=gen) < 0.5:
                z = z.flip(-1)  # latents of a mirrored photo are close to mirrored latents: cheap augmentation
            with torch.no_grad():
                t_out = teacher(z)
            t_feats = t_taps.take()
            s_out = student(z)
            s_feats = s_taps.take()
            if projections is None:  # first step: one projection per point, fitted to this batch
                projections = nn.ModuleDict()
                for i, p in enumerate(points):
                    dim = 2 if s_feats[p][0].ndim == 5 else 0  # video chunks: along time
                    f_s, f_t = torch.cat(s_feats[p], dim), torch.cat(t_feats[p], dim)
                    proj = _projection(f_s.shape[1], f_t.shape[1], f_s.ndim).to(device, dtype)
                    _least_squares_init(proj, f_s, f_t)
                    projections[str(i)] = proj
                params = list(student.parameters()) + list(projections.parameters())
                optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
            loss = z.new_zeros(())
            if feature:
                terms = []
                for i, p in enumerate(points):
                    for f_s, f_t in zip(s_feats[p], t_feats[p], strict=True):
                        terms.append((projections[str(i)](f_s) - f_t).pow(2).mean() / f_t.pow(2).mean().clamp_min(1e-8))
                loss = loss + feature * torch.stack(terms).mean()
            if distill:
                loss = loss + distill * F.l1_loss(s_out, t_out)
            for group in optimizer.param_groups:  # linear warm-up over the first 10% of the phase, then constant
                group["lr"] = lr * min(1.0, (step + 1) / max(1, math.ceil(0.1 * steps)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            history.append(float(loss.detach()))
            if log_every and (step + 1) % log_every == 0:
                print(f"align {step + 1}/{steps}: loss {history[-1]:.4f}", flush=True)
    finally:
        t_taps.close()
        s_taps.close()
    student.eval()
    return {"steps": steps, "loss_first": history[0], "loss_last": history[-1],
            "seconds": time.perf_counter() - start, "points": points}  # fmt: skip


# -- the driver ------------------------------------------------------------------------------------------------------


def _pair_teacher_names(values: dict[str, Any], points: Sequence[str], points_t: Sequence[str]) -> None:
    """Auto pairs name the student's modules; the trainer's teacher may name the same module differently."""
    rename = dict(zip(points, points_t, strict=True))
    for pair in (values.get("loss") or {}).get("features") or []:
        if isinstance(pair, dict) and pair.get("teacher") in rename:
            pair["teacher"] = rename[pair["teacher"]]


def _stage_list(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def run_recipe(recipe: Recipe, out: str | Path, device: str = "cpu", weights_dir: str | None = None,
               log_every: int = 0) -> dict[str, Any]:  # fmt: skip
    """Prune, then run every phase in order; writes ``OUT/pruned.safetensors``, ``OUT/<i>-<name>/model.safetensors``
    per phase and ``OUT/result.json``. Returns the summary (the final model under ``checkpoint``)."""
    out = Path(out)
    p, teacher_cfg = recipe.prune, recipe.train_sections.get("teacher") or {}
    source = p.get("teacher", teacher_cfg.get("decoder"))
    weights_dir = weights_dir or teacher_cfg.get("weights_dir")
    if source is None:
        raise FastDecodersError(f"{recipe.source}: expected prune.teacher or teacher.decoder, got neither")
    teacher = load_source(source, p.get("latents", teacher_cfg.get("latents")), weights_dir,
                          bool(p.get("random_init", False)), device, torch.float32)  # fmt: skip
    if getattr(teacher, "latent_space_name", None) is None:
        raise FastDecodersError(f"{source}: expected a known latent space, got none; set prune.latents")
    latents, calib_note = calibration_latents(
        teacher, latents_path=p.get("calib_latents"), photos=p.get("calib"), count=int(p.get("calib_count", 32)),
        size=int(p.get("calib_size", 256)), frames=int(p.get("calib_frames", 3)), weights_dir=weights_dir,
        device=device,
    )  # fmt: skip
    keep = parse_keep(recipe.prune["keep"])
    result = prune(teacher, keep, latents, method=p.get("method", "independent"), fold=bool(p.get("fold", True)),
                   multiple=int(p.get("multiple", 8)))  # fmt: skip
    student = result.student
    sep3d, frame2d = _stage_list(p.get("sep3d_stages")), _stage_list(p.get("frame2d_stages"))
    if sep3d or frame2d:
        student = swap_operators(student, sep3d, frame2d)
    base = (getattr(teacher, "registry_name", None) or Path(str(source)).stem).replace("random:", "")
    student.latent_space_name = teacher.latent_space_name
    # the student is its file (name saved in it): every trainer phase starts from the previous file, never from a
    # registry entry, so nothing is registered at run time
    student.registry_name = f"{base}-flash-vaed-keep{'-'.join(f'{k:g}' for k in keep)}"
    current = save_decoder(student, out / "pruned.safetensors", extra={"pruned_from": str(source),
                                                                       "keep": list(keep)})  # fmt: skip
    summary: dict[str, Any] = {
        "teacher": str(source), "student": student.registry_name, "keep": list(result.keep),
        "widths": {"teacher": list(result.teacher_widths), "student": list(result.student_widths)},
        "params": [decoder_parameters(teacher), decoder_parameters(student)], "calibration": calib_note,
        "pruned": current, "phases": [],
    }  # fmt: skip
    points = feature_points(teacher)
    points_t = [p.removeprefix("vae.") for p in points]  # the trainer's diffusers teacher is the bare VAE
    if not recipe.phases:  # the trainer's own schedule: one run
        values = _student(recipe.train_sections, None, current)
        values = _with_features(values, points)
        _pair_teacher_names(values, points, points_t)
        values["data"] = {"cache_dir": str(out / "cache"), **(values.get("data") or {})}
        trained = train(config_from_dict(values, recipe.source), out / "train")
        current = trained["model"]
        summary["phases"] = [{"name": p.get("name", f"phase{i + 1}"), "kind": "train", "model": current,
                              "loss": {k: v for k, v in p.items() if k not in ("name", "start_step")}}
                             for i, p in enumerate(values["loss"].get("phases") or [])]  # fmt: skip
        summary["train"] = {"steps": trained["steps"], "seconds": trained["seconds"], "val": trained["val"],
                            "teacher_val": trained["teacher_val"], "init_val": trained.get("init_val")}  # fmt: skip
    for i, phase in enumerate(recipe.phases, start=1):
        folder = out / f"{i}-{phase.name}"
        if phase.local:
            model = load_decoder(current).to(device)
            info = align_features(teacher, model, latents, phase.steps, feature=float(phase.loss["feature"]),
                                  distill=float(phase.loss.get("distill", 0.0)), lr=float(phase.lr or 1e-3),
                                  batch_size=int(phase.batch_size or 4), log_every=log_every)  # fmt: skip
            model.registry_name = student.registry_name
            current = save_decoder(model, folder / "model.safetensors", extra={"phase": phase.name, **info})
            summary["phases"].append({"name": phase.name, "kind": "align", "loss": phase.loss, "model": current,
                                      **{k: v for k, v in info.items() if k != "points"}})  # fmt: skip
            continue
        values = _with_features(phase_config(recipe, phase, None, current), points)
        _pair_teacher_names(values, points, points_t)
        values["data"] = {"cache_dir": str(out / "cache"), **(values.get("data") or {})}  # phases share one cache
        cfg = config_from_dict(values, f"{recipe.source} phase {phase.name}")
        trained = train(cfg, folder)
        current = trained["model"]
        summary["phases"].append({"name": phase.name, "kind": "train", "loss": phase.loss, "model": current,
                                  "steps": trained["steps"], "seconds": trained["seconds"], "val": trained["val"],
                                  "teacher_val": trained["teacher_val"]})  # fmt: skip
    summary["checkpoint"] = current
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
