"""Per input, every decoder: latents (cached per encoder + preprocessing), each decoder's output, per-input metrics
and feature vectors (cached per decoder weights + teacher + metric set). ``run_inputs`` goes through the inputs and
skips (and records) an input only for input errors; anything else (out of memory, a bug) stops the run."""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from fastdecoders.bench.timing import default_sync
from fastdecoders.errors import FastDecodersError, require_finite
from fastdecoders.eval import codec, features, lpips, metrics
from fastdecoders.eval.cache import Store
from fastdecoders.eval.config import EvalConfig
from fastdecoders.eval.data import Item, Preprocess, Sample, SkipList, load
from fastdecoders.latents import LatentSpace

PIXEL_METRICS = ("psnr", "ssim", "ms_ssim", "lpips_alex", "lpips_vgg")
CLIP_METRICS = ("flicker",)
#: errors that belong to one input (unreadable or too short file, latents or a shape a decoder cannot take: all
#: raised as FastDecodersError; OSError: a file gone or unreadable mid-run): skip it, go on. Anything else, such as
#: an out-of-memory RuntimeError or a plain bug, is not the input's fault and stops the run.
PER_INPUT_ERRORS = (FastDecodersError, OSError)


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


class Nets:
    """The feature networks a run needs, loaded once."""

    def __init__(self, chosen: tuple[str, ...], config: EvalConfig):

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
    decoded: torch.Tensor, reference: torch.Tensor, chosen: tuple[str, ...], nets: Nets
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


class Runner:
    def __init__(
        self,
        runs: list[Run],
        teacher: Run | None,
        config: EvalConfig,
        prep: Preprocess,
        chosen: tuple[str, ...],
        nets: Nets,
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
        self.sync = default_sync(config.device)  # timings wait for the device
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
        return codec.to_decoder_input(z, run.decoder, space)

    # decoding ---------------------------------------------------------------------------------------------------

    def decode(self, run: Run, sample: Sample, stamp: str) -> tuple[torch.Tensor, float]:
        """(T, 3, H, W) decoded frames in [0, 1] and the decoder's wall time in ms (latents ready, warmed up)."""
        z = self.latents(run, sample, stamp)
        if not run.warm:  # first call pays for allocation and kernel selection: not part of the timing
            codec.decode(run.decoder, z, self.config.batch_size)
            run.warm = True
        self.sync()
        start = time.perf_counter()
        frames = codec.decode(run.decoder, z, self.config.batch_size)
        self.sync()
        ms = (time.perf_counter() - start) * 1000
        require_finite(frames, f"{run.name}'s output")  # NaN metrics (n=0) or black figures otherwise
        if sample.pixels is not None and frames.shape != sample.pixels.shape:
            raise FastDecodersError(
                f"{run.name} decoded {tuple(frames.shape)} from an input of {tuple(sample.pixels.shape)} (T, 3, H, W)"
            )
        return frames, ms

    def process(self, item: Item) -> None:
        """Every decoder on one input; its records count only once all decoders got through it (paired)."""
        sample = load(item, self.prep, self.latent_ndim)
        stamp = item.source_stamp()
        originals = self._original_features(item, sample, stamp)
        want_visual = len(self.visuals) < self.config.grid_count
        outputs: dict[str, torch.Tensor] = {}
        timings: dict[str, float] = {}

        def output(run: Run) -> torch.Tensor:
            if run.name not in outputs:
                outputs[run.name], timings[run.name] = self.decode(run, sample, stamp)
            return outputs[run.name]

        records = {}
        for run in self.runs:
            parts = ("results", run.fingerprint, self.teacher.fingerprint if run.vs_teacher else "none",
                     self._latents_key(run), self.prep_key, _short(self.metric_key))  # fmt: skip
            cached = self.store.get(parts, item.key, stamp)
            if cached is None:
                cached = self._measure(run, sample, output, timings)
                self.store.put(parts, item.key, stamp, *cached)
            elif want_visual:
                output(run)
            records[run.name] = cached
        # only now, when every decoder got through this input, does it count (paired comparisons)
        for name, record in records.items():
            self.records[name][item.key] = record
        self.originals[item.key] = originals
        if want_visual:
            self.visuals.append(_visual(item, sample, outputs, self.runs))

    def _original_features(self, item: Item, sample: Sample, stamp: str) -> dict[str, torch.Tensor]:
        """Set-metric features of the input itself (cached); none for latents inputs."""
        if sample.pixels is None:
            return {}
        self.sizes.add(tuple(sample.pixels.shape[-2:]))
        parts = ("originals", self.prep_key, _short(self.metric_key))
        cached = self.store.get(parts, item.key, stamp)
        if cached is not None:
            return cached[0]
        tensors = self.nets.set_features(sample.pixels)
        self.store.put(parts, item.key, stamp, tensors)
        return tensors

    def _measure(self, run: Run, sample: Sample, output: Callable[[Run], torch.Tensor],
                 timings: dict[str, float]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:  # fmt: skip
        """(set-metric features, record: timing and per-input metrics vs the original and the teacher) of ``run``."""
        decoded = output(run)
        record: dict[str, Any] = {"ms": timings[run.name], "frames": len(decoded), "orig": None, "teacher": None}
        if sample.pixels is not None:
            record["orig"] = pixel_metrics(decoded, sample.pixels, self.chosen, self.nets)
        if run.vs_teacher:
            record["teacher"] = pixel_metrics(decoded, output(self.teacher), self.chosen, self.nets)
        return self.nets.set_features(decoded), record

    def _latents_key(self, run: Run) -> str:
        if self.config.kind == "latents":
            return "file"
        return self.encoder(run.space).key


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


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


def run_inputs(runner: Runner, items: list[Item], skipped: SkipList, unit: str, progress: bool) -> None:
    """``runner.process`` on every input; an input error (``PER_INPUT_ERRORS``) skips that input (recorded in
    ``skipped``) and the run goes on."""
    with torch.inference_mode():
        # always drawn (also in logs): tests/test_eval_cli.py reads the bar's final state from stderr
        bar = tqdm(items, desc="eval", unit=unit, file=sys.stderr, disable=not progress, dynamic_ncols=True)
        for item in bar:
            try:
                runner.process(item)
            except PER_INPUT_ERRORS as e:
                skipped.add(item.label, one_line(e))


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, FastDecodersError) else f"{type(e).__name__}: {text}"[:400]
