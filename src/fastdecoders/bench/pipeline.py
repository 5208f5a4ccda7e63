"""End-to-end: a whole diffusers pipeline timed with its own VAE decoder and with ours (``fastdecoders.use``).

Pipelines are built from random-weight components (timing does not depend on weight values) at the published sizes:
SDXL (UNet 2.6B, 1024²), SVD-XT (14×576×1024), Wan 2.1-1.3B (81×480×832), with classifier-free guidance as users run
them; prompt embeddings (and SVD's image) are passed in, so no tokenizer or text encoder is needed. ``tiny=True``
builds few-thousand-weight stand-ins with the same latent geometry (tests, smoke runs).

Two methods:

* ``composed`` (default, cheap): runs of 2 denoising steps, timed inside the pipeline (a callback timestamps each
  step end; ``vae.decode`` is timed by wrapping it): one step, the decode, and the fixed rest (preparation,
  post-processing). A pipeline of n steps is then fixed + n·step + decode. Step and fixed are pooled over the runs
  with both decoders (they are the same work); the decode is each decoder's own.
* ``measured`` (``full=True``): the pipeline really runs n steps for every n, with each decoder.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fastdecoders.bench.speed import DTYPES, Size, check_device, device_name, load_for_bench, parse_dtype
from fastdecoders.bench.timing import default_sync
from fastdecoders.errors import FastDecodersError
from fastdecoders.latents import get_latent_space
from fastdecoders.models.diffusers_vae import PUBLISHED
from fastdecoders.progress import progress as show_progress
from fastdecoders.testing.tiny_pipelines import tiny_pipeline

PIPELINES = ("sdxl", "svd", "wan2.1")
TEACHERS = {"sdxl": "sdxl-vae", "svd": "svd-vae", "wan2.1": "wan2.1-vae"}
DEFAULT_DECODERS = {"sdxl": "taesdxl", "svd": "tae-temporal-svd", "wan2.1": "taew2_1"}
LATENTS = {"sdxl": "sdxl", "svd": "svd", "wan2.1": "wan2.1"}
SIZES = {"sdxl": Size(1024, 1024), "svd": Size(576, 1024, 14), "wan2.1": Size(480, 832, 81)}
TINY_SIZES = {"sdxl": Size(64, 64), "svd": Size(64, 64, 3), "wan2.1": Size(32, 32, 5)}
ROW_KEYS = ("pipeline", "shape", "dtype", "steps", "decoder", "teacher", "ms_step", "ms_total_teacher", "ms_total",
            "ms_decode_teacher", "ms_decode", "decoder_share_teacher", "decoder_share", "speedup_e2e",
            "method")  # fmt: skip


# -- building ---------------------------------------------------------------------------------------------------------


def _sdxl(tiny: bool, size: Size, gen: torch.Generator, device: torch.device) -> tuple[Any, dict]:
    import diffusers


    with torch.device(device):  # random init directly on the device: seconds on a GPU for billions
        if tiny:
            tiny_pipe, _ = tiny_pipeline("sdxl", force_upcast=False)
            unet, vae = tiny_pipe.unet, tiny_pipe.vae
            tokens, text_dim, pooled_dim = 6, 32, 16
        else:  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
            unet = diffusers.UNet2DConditionModel(
                sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816,
            )  # fmt: skip
            # force_upcast off: fp16 decoding as with the fp16-fix VAE most SDXL deployments use
            vae = diffusers.AutoencoderKL(**{**PUBLISHED["sdxl-vae"][2], "force_upcast": False})
            tokens, text_dim, pooled_dim = 77, 2048, 1280
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(),
    )  # fmt: skip

    def embeds(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    kwargs = {
        "prompt_embeds": embeds(1, tokens, text_dim), "pooled_prompt_embeds": embeds(1, pooled_dim),
        "negative_prompt_embeds": embeds(1, tokens, text_dim), "negative_pooled_prompt_embeds": embeds(1, pooled_dim),
        "guidance_scale": 5.0, "height": size.height, "width": size.width,
    }  # fmt: skip
    return pipe, kwargs


def _svd(tiny: bool, size: Size, gen: torch.Generator, device: torch.device) -> tuple[Any, dict]:
    import diffusers
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection


    with torch.device(device):  # random init directly on the device: seconds on a GPU for billions
        if tiny:
            tiny_pipe, _ = tiny_pipeline("svd")
            unet, vae, image_encoder = tiny_pipe.unet, tiny_pipe.vae, tiny_pipe.image_encoder
        else:  # stabilityai/stable-video-diffusion-img2vid-xt: the class defaults are its config
            unet = diffusers.UNetSpatioTemporalConditionModel()
            vae = diffusers.AutoencoderKLTemporalDecoder(**PUBLISHED["svd-vae"][2])
            clip = CLIPVisionConfig(hidden_size=1280, projection_dim=1024, num_hidden_layers=32,
                                    num_attention_heads=16, intermediate_size=5120, image_size=224, patch_size=14,
                                    hidden_act="gelu")  # fmt: skip
            image_encoder = CLIPVisionModelWithProjection(clip)
    pipe = diffusers.StableVideoDiffusionPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(), feature_extractor=CLIPImageProcessor(),
    )  # fmt: skip
    pixels = (torch.rand(size.height, size.width, 3, generator=gen) * 255).to(torch.uint8).numpy()
    # guidance 1 -> 3 (the pipeline's defaults): classifier-free guidance on, as users run it
    kwargs = {"image": Image.fromarray(pixels), "height": size.height, "width": size.width, "num_frames": size.frames}
    return pipe, kwargs


def _wan(tiny: bool, size: Size, gen: torch.Generator, device: torch.device) -> tuple[Any, dict]:
    import diffusers

    with torch.device(device):  # random init directly on the device: seconds on a GPU for billions
        if tiny:
            tiny_pipe, _ = tiny_pipeline("wan")
            vae, transformer = tiny_pipe.vae, tiny_pipe.transformer
            tokens, text_dim = 6, 32
        else:  # Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json; the VAE's class defaults are Wan 2.1's
            vae = diffusers.AutoencoderKLWan()
            transformer = diffusers.WanTransformer3DModel(
                patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
            )  # fmt: skip
            tokens, text_dim = 512, 4096
    pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                                 scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))  # fmt: skip
    kwargs = {
        "prompt_embeds": torch.randn(1, tokens, text_dim, generator=gen),
        "negative_prompt_embeds": torch.randn(1, tokens, text_dim, generator=gen), "guidance_scale": 5.0,
        "height": size.height, "width": size.width, "num_frames": size.frames,
    }  # fmt: skip
    return pipe, kwargs


_BUILDERS: dict[str, Callable[[bool, Size, torch.Generator, torch.device], tuple[Any, dict]]] = {
    "sdxl": _sdxl, "svd": _svd, "wan2.1": _wan,
}  # fmt: skip


def pipeline_size(name: str, size: Size | None, tiny: bool) -> Size:
    """The size to run ``name`` at (its published one by default), checked against its latent geometry."""
    check_pipeline(name)
    default = (TINY_SIZES if tiny else SIZES)[name]
    size = size or default
    space = get_latent_space(LATENTS[name])
    f = space.spatial_factor
    if size.height % f or size.width % f:
        raise FastDecodersError(f"--sizes: {name} expected height and width multiples of {f} pixels, got {size}")
    if name == "sdxl" and size.frames:
        raise FastDecodersError(f"--sizes: sdxl makes images, expected N or HxW, got {size}")
    if name != "sdxl":
        size = Size(size.height, size.width, size.frames or default.frames)
        space.latent_frames(size.frames)  # Wan: 1 + 4k frames (one clear error otherwise)
    return size


def check_pipeline(name: str) -> None:
    if name not in PIPELINES:
        raise FastDecodersError(f"--pipeline: expected one of {', '.join(PIPELINES)}, got {name!r}")


def build_pipeline(name: str, tiny: bool, device: torch.device, dtype: torch.dtype, size: Size) -> tuple[Any, dict]:
    """(pipeline with random weights on ``device`` in ``dtype``, call kwargs: conditioning, size, CFG)."""
    check_pipeline(name)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    pipe, kwargs = _BUILDERS[name](tiny, size, gen, device)
    pipe.to(device)
    if dtype != torch.float32:  # built in fp32 (diffusers warns about casts it considers lossy; harmless here)
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    for key, value in kwargs.items():
        if torch.is_tensor(value):
            kwargs[key] = value.to(device=device, dtype=dtype)
    return pipe, kwargs


# -- timing -----------------------------------------------------------------------------------------------------------


@dataclass
class PipelineRun:
    """One pipeline call: total ms, the ms between consecutive step ends, and the ms spent in ``vae.decode``."""

    total_ms: float
    step_ms: list[float]
    decode_ms: float

    @property
    def fixed_ms(self) -> float:
        """Everything but the steps and the decode (preparation, post-processing); needs >= 2 steps."""
        steps = len(self.step_ms) + 1
        return self.total_ms - steps * statistics.median(self.step_ms) - self.decode_ms


def timed_call(pipe: Any, kwargs: dict, steps: int, sync: Callable[[], None],
               clock: Callable[[], float] = time.perf_counter) -> PipelineRun:  # fmt: skip
    """Run ``pipe`` for ``steps`` steps, timestamping each step end (callback) and every ``vae.decode`` call."""
    stamps: list[float] = []
    decode_s: list[float] = []
    vae = pipe.vae
    original = vae.decode

    def decode(*args: Any, **kw: Any) -> Any:
        sync()
        start = clock()
        out = original(*args, **kw)
        sync()
        decode_s.append(clock() - start)
        return out

    def on_step_end(p: Any, i: int, t: Any, tensors: dict) -> dict:
        sync()
        stamps.append(clock())
        return tensors

    vae.decode = decode  # an instance attribute shadows the method for this call only
    try:
        sync()
        start = clock()
        with torch.inference_mode():
            pipe(**kwargs, num_inference_steps=steps, output_type="np", callback_on_step_end=on_step_end)
        sync()
        total = clock() - start
    finally:
        del vae.decode
    gaps = [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:], strict=False)]
    return PipelineRun(total * 1e3, gaps, sum(decode_s) * 1e3)


def compose(step_ms: float, fixed_ms: float, decode_ms: float, steps: int) -> float:
    """Total ms of a run of ``steps`` steps from its parts."""
    return fixed_ms + steps * step_ms + decode_ms


def e2e_row(pipeline: str, shape: str, dtype: str, steps: int, decoder: str, step_ms: float,
            total_teacher: float, total: float, decode_teacher: float, decode: float, method: str) -> dict:  # fmt: skip
    """One result row: the decoder's share of each total and the end-to-end speed-up (teacher total / ours)."""
    return {
        "pipeline": pipeline, "shape": shape, "dtype": dtype, "steps": steps, "decoder": decoder,
        "teacher": TEACHERS[pipeline], "ms_step": step_ms, "ms_total_teacher": total_teacher, "ms_total": total,
        "ms_decode_teacher": decode_teacher, "ms_decode": decode,
        "decoder_share_teacher": decode_teacher / total_teacher if total_teacher > 0 else None,
        "decoder_share": decode / total if total > 0 else None,
        "speedup_e2e": total_teacher / total if total > 0 else None, "method": method,
    }  # fmt: skip


def run_pipeline(
    name: str, decoder: str | None, steps: list[int], *, device: str = "cpu", dtype: str = "fp32",
    size: Size | None = None, runs: int = 3, warmup: int = 1, tiny: bool = False, full: bool = False,
    progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Time pipeline ``name`` with its own decoder and with ``decoder`` (default: ours for that family)."""
    import fastdecoders

    check_pipeline(name)
    dev = check_device(device)
    dtype = parse_dtype(dtype)
    if not steps or any(s < 1 for s in steps):
        raise FastDecodersError(f"--steps: expected positive step counts like 1,4,30, got {steps}")
    if runs < 1 or warmup < 0:
        raise FastDecodersError(f"expected --runs >= 1 and --warmup >= 0, got {runs} and {warmup}")
    size = pipeline_size(name, size, tiny)
    decoder_name = decoder or DEFAULT_DECODERS[name]
    ours = load_for_bench(decoder_name, dev, DTYPES[dtype], tiny)
    pipe, kwargs = build_pipeline(name, tiny, dev, DTYPES[dtype], size)
    sync = default_sync(dev)
    shape = f"1x3x{size.frames}x{size.height}x{size.width}" if size.frames else f"1x3x{size.height}x{size.width}"
    plan = [2] if not full else sorted(set(steps))
    work = [(who, n) for n in plan for who in ("teacher", "ours")]
    results: dict[tuple[str, int], list[PipelineRun]] = {}
    bar = show_progress(work, desc=f"pipeline {name}", unit="config", enabled=progress)
    for who, n in bar:
        bar.set_postfix_str(f"{who} {n} steps")
        swap = fastdecoders.use(pipe, ours) if who == "ours" else None
        try:
            for _ in range(warmup):
                timed_call(pipe, kwargs, n, sync)
            results[(who, n)] = [timed_call(pipe, kwargs, n, sync) for _ in range(runs)]
        finally:
            if swap is not None:
                swap.restore()
    median = statistics.median
    rows = []
    if full:
        for n in plan:
            t, o = results[("teacher", n)], results[("ours", n)]
            gaps = [g for r in t + o for g in r.step_ms]
            step = median(gaps) if gaps else float("nan")  # 1-step runs have no gap between step ends
            rows.append(e2e_row(name, shape, dtype, n, decoder_name, step, median(r.total_ms for r in t),
                                median(r.total_ms for r in o), median(r.decode_ms for r in t),
                                median(r.decode_ms for r in o), "measured"))  # fmt: skip
    else:
        t, o = results[("teacher", 2)], results[("ours", 2)]
        step = median(g for r in t + o for g in r.step_ms)
        fixed = median(r.total_ms - 2 * step - r.decode_ms for r in t + o)
        decode_t, decode_o = median(r.decode_ms for r in t), median(r.decode_ms for r in o)
        for n in steps:
            rows.append(e2e_row(name, shape, dtype, n, decoder_name, step, compose(step, fixed, decode_t, n),
                                compose(step, fixed, decode_o, n), decode_t, decode_o, "composed"))  # fmt: skip
    method = ("measured: the pipeline run at every step count with each decoder" if full else
              "composed: fixed + n*step + decode, from 2-step runs (use --full to run every step count)")  # fmt: skip
    return {
        "device": device_name(device), "mode": "pipeline", "pipeline": name, "tiny": tiny, "runs": runs,
        "method": method, "rows": rows,
    }  # fmt: skip
