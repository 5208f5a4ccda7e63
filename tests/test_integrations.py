"""``fastdecoders.use`` in tiny random diffusers pipelines, offline: prompt embeddings are passed in, so no tokenizer or
text encoder is built. Each run checks that

* the pipeline's own VAE decoder never ran and ours did;
* our decoder's input equals the pipeline's final diffusion-space latents (the adapter inverted the pipeline's
  scaling/shift/mean-std exactly, with the checkpoint's numbers);
* the ``output_type="pil"`` images/frames are our decoder's output, pixel for pixel, at the right size and count;
* leaving the ``with`` block restores ``pipe.vae``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import diffusers  # noqa: E402

import fastdecoders  # noqa: E402
from fastdecoders import FastDecodersError  # noqa: E402
from fastdecoders.integrations.diffusers import DiffusersVAEAdapter  # noqa: E402
from fastdecoders.latents import to_01  # noqa: E402
from fastdecoders.models.diffusers_vae import vae_latent_spaces  # noqa: E402
from fastdecoders.testing.tiny_pipelines import conditioning_image, tiny_pipeline  # noqa: E402

# -- tiny random pipelines (testing.tiny_pipelines), with checkpoint numbers that differ from the registry's:
# the adapter must take the checkpoint's own values.


def _wan_stats() -> dict:
    g = torch.Generator().manual_seed(1)
    mean, std = torch.randn(16, generator=g), torch.rand(16, generator=g) + 0.5
    return {"latents_mean": mean.tolist(), "latents_std": std.tolist()}


def build_sd():
    return tiny_pipeline("sd", scaling_factor=0.2)[0]  # not sd1's published 0.18215


def build_sdxl(**vae_config):
    return tiny_pipeline("sdxl", **vae_config)[0]


def build_wan():
    return tiny_pipeline("wan", **_wan_stats())[0]


def build_ltx():
    pipe = tiny_pipeline("ltx", scaling_factor=0.5)[0]
    g = torch.Generator().manual_seed(2)
    pipe.vae.latents_mean.copy_(torch.randn(128, generator=g))  # per-checkpoint buffers, as LTX ships them
    pipe.vae.latents_std.copy_(torch.rand(128, generator=g) + 0.5)
    return pipe


# -- how each is called, and what comes out ----------------------------------------------------------------------------


def _embeds(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(3))


@dataclass
class Case:
    build: Callable[[], object]
    kwargs: Callable[[], dict]
    #: (width, height) of each image and the number of frames per video (0 for image pipelines)
    size: tuple[int, int]
    frames: int = 0
    #: final callback latents -> the diffusion-space latents our decoder should see, in its layout
    latents_for_decoder: Callable[[object, torch.Tensor], torch.Tensor] = lambda pipe, z: z
    extra: dict = field(default_factory=dict)


def _sdxl_kwargs() -> dict:
    return {"prompt_embeds": _embeds(1, 6, 32), "pooled_prompt_embeds": _embeds(1, 16), "guidance_scale": 1.0}


CASES: dict[str, Case] = {
    "sd": Case(build_sd, lambda: {"prompt_embeds": _embeds(1, 6, 32), "guidance_scale": 1.0}, (64, 64)),
    "sdxl": Case(build_sdxl, _sdxl_kwargs, (64, 64)),
    "sd3": Case(
        lambda: tiny_pipeline("sd3")[0],
        lambda: {"prompt_embeds": _embeds(1, 6, 32), "pooled_prompt_embeds": _embeds(1, 16), "guidance_scale": 1.0},
        (64, 48),
    ),  # fmt: skip
    "flux": Case(
        lambda: tiny_pipeline("flux")[0],
        lambda: {"prompt_embeds": _embeds(1, 6, 32), "pooled_prompt_embeds": _embeds(1, 16)},
        (64, 48),
        latents_for_decoder=lambda pipe, z: pipe._unpack_latents(z, 48, 64, pipe.vae_scale_factor),
    ),
    "svd": Case(
        lambda: tiny_pipeline("svd")[0],
        lambda: {
            "image": conditioning_image(),
            "num_frames": 3,
            "decode_chunk_size": 2,
            "max_guidance_scale": 1.0,
            "min_guidance_scale": 1.0,
        },
        (64, 64),
        frames=3,
        latents_for_decoder=lambda pipe, z: z.flatten(0, 1),
    ),  # fmt: skip
    "wan": Case(
        build_wan,
        lambda: {"prompt_embeds": _embeds(1, 6, 32), "num_frames": 5, "guidance_scale": 1.0},
        (32, 32),
        frames=5,
    ),  # fmt: skip
    "ltx": Case(
        build_ltx,
        lambda: {
            "prompt_embeds": _embeds(1, 6, 32),
            "prompt_attention_mask": torch.ones(1, 6),
            "num_frames": 9,
            "guidance_scale": 1.0,
            "decode_timestep": 0.05,
            "decode_noise_scale": 0.5,
        },
        (64, 64),
        frames=9,
        latents_for_decoder=lambda pipe, z: pipe._unpack_latents(z, 2, 2, 2),
    ),  # fmt: skip
}


_PIPES: dict[str, object] = {}


def pipeline(name: str):
    """Each tiny pipeline is built once per session (building is most of a run's cost)."""
    if name not in _PIPES:
        torch.manual_seed(0)
        _PIPES[name] = CASES[name].build()
        _PIPES[name].set_progress_bar_config(disable=True)
    return _PIPES[name]


@dataclass
class Run:
    output: object
    final_latents: torch.Tensor
    decoder_inputs: list[torch.Tensor]
    decoder_outputs: list[torch.Tensor]
    original_decoder_calls: int


def run_with(name: str, decoder, **use_kwargs) -> Run:
    """Run pipeline ``name`` once with ``decoder`` swapped in, recording what went through which decoder."""
    pipe, case = pipeline(name), CASES[name]
    original = pipe.vae
    final: dict[str, torch.Tensor] = {}

    def on_step_end(p, step, timestep, tensors):
        final["latents"] = tensors["latents"].clone()
        return {}

    calls: list[int] = []
    hook = original.decoder.register_forward_hook(lambda *a: calls.append(1))
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    size = {"height": case.size[1], "width": case.size[0]}
    try:
        with fastdecoders.use(pipe, decoder, **use_kwargs) as swap:
            assert pipe.vae is swap.adapter and isinstance(pipe.vae, DiffusersVAEAdapter)

            def record(module, args, out):
                inputs.append(args[0].detach().clone())
                outputs.append(out.detach().clone())

            swap.decoder.register_forward_hook(record)
            output = pipe(**case.kwargs(), **size, num_inference_steps=1, output_type="pil",
                          generator=torch.Generator().manual_seed(0), callback_on_step_end=on_step_end)  # fmt: skip
        assert pipe.vae is original, "leaving the with block restores the pipeline's VAE"
    finally:
        hook.remove()
        pipe.vae = original
    return Run(output, case.latents_for_decoder(pipe, final["latents"]), inputs, outputs, len(calls))


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def _as_uint8(rgb_pm1: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) pixel values, as the pipelines' post-processing rounds them."""
    return to_01(rgb_pm1.float()).mul(255).round().permute(0, 2, 3, 1).numpy().astype(np.int16)


def check_run(name: str, run: Run) -> None:
    case = CASES[name]
    assert run.original_decoder_calls == 0, "the pipeline's own VAE decoder ran"
    assert run.decoder_outputs, "our decoder never ran"
    seen = torch.cat(run.decoder_inputs).float()
    torch.testing.assert_close(seen, run.final_latents.float(), atol=1e-4, rtol=1e-4)
    ours = torch.cat(run.decoder_outputs)
    if case.frames == 0:  # images: (B, 3, H, W)
        images = run.output.images
        assert [im.size for im in images] == [case.size]
    else:
        frames = run.output.frames
        assert len(frames) == 1 and len(frames[0]) == case.frames and frames[0][0].size == case.size
        images = frames[0]
        if ours.ndim == 5:  # NCTHW clips -> frames
            ours = ours.permute(0, 2, 1, 3, 4).flatten(0, 1)
    assert np.abs(_pixels(images) - _as_uint8(ours)).max() <= 1, "the images are not our decoder's output"


# -- the pipelines -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "decoder"),
    [
        ("sd", "taesd"),
        ("sdxl", "taesdxl"),
        ("sdxl", "effvit-sdxl"),
        ("sd3", "taesd3"),
        ("flux", "taef1"),
        ("svd", "taesd"),  # an sd1 image decoder on SVD latents, frame by frame (the temporal one: below)
        ("wan", "taew2_1"),
        ("ltx", "taehv-ltx-video"),
    ],
)
def test_pipeline_decodes_with_ours(name: str, decoder: str):
    check_run(name, run_with(name, fastdecoders.build_decoder(decoder, tiny=True)))


def test_temporal_decoder_gets_num_frames_per_chunk():
    """decode_chunk_size 2 of 3 frames: SVD decodes chunks of 2 and 1 frames, each a clip for tae-temporal-svd."""
    decoder = fastdecoders.build_decoder("tae-temporal-svd", tiny=True)
    seen: list[int | None] = []
    decoder.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs.get("num_frames")), with_kwargs=True)
    check_run("svd", run_with("svd", decoder))
    assert seen == [2, 1]


def test_forced_latent_space_warns_and_runs():
    """An sdxl decoder on SVD latents is refused, unless forced with latents= (then it warns and runs)."""
    decoder = fastdecoders.build_decoder("effvit-sdxl", tiny=True)
    with pytest.raises(FastDecodersError, match="sdxl latents.*svd"):
        fastdecoders.use(pipeline("svd"), decoder)
    with pytest.warns(UserWarning, match="made for sdxl"):
        run = run_with("svd", decoder, latents="svd")
    check_run("svd", run)
    # forcing cannot make 16-channel latents out of 4
    with pytest.warns(UserWarning), pytest.raises(FastDecodersError, match="takes 16-channel latents; svd has 4"):
        fastdecoders.use(pipeline("svd"), fastdecoders.build_decoder("taef1", tiny=True), latents="svd")


def test_sdxl_fp16_force_upcast_path():
    """fp16 pipeline + force_upcast: SDXL upcasts vae (ours with it) to fp32 for decoding, then casts back."""
    pipe = build_sdxl()
    pipe.set_progress_bar_config(disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.to(torch.float16)
        decoder = fastdecoders.build_decoder("taesdxl", tiny=True)
        dtypes: list[torch.dtype] = []
        with fastdecoders.use(pipe, decoder) as swap:
            assert next(swap.decoder.parameters()).dtype == torch.float16  # follows the VAE
            swap.decoder.register_forward_hook(lambda m, args, out: dtypes.append(args[0].dtype))
            kwargs = {k: v.half() if isinstance(v, torch.Tensor) else v for k, v in _sdxl_kwargs().items()}
            out = pipe(**kwargs, height=64, width=64, num_inference_steps=1, output_type="np")
            assert pipe.vae.dtype == torch.float16 and pipe.vae.original_vae.dtype == torch.float16
    assert dtypes == [torch.float32]
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()


# -- errors and bookkeeping --------------------------------------------------------------------------------------------


def test_mismatched_latent_space_is_one_clear_error():
    pipe = pipeline("sdxl")
    original = pipe.vae
    with pytest.raises(FastDecodersError, match=r"taef1 decodes flux1 latents, but StableDiffusionXLPipeline.*sdxl"):
        fastdecoders.use(pipe, fastdecoders.build_decoder("taef1", tiny=True))
    assert pipe.vae is original
    # and a frame-wise decoder cannot make Wan's 4 frames per latent frame
    with pytest.raises(FastDecodersError, match="decodes wan2.1|wan2.1 latents"):
        fastdecoders.use(pipeline("wan"), fastdecoders.build_decoder("taesd", tiny=True))


def test_identifies_latent_spaces():
    assert [s.name for s in vae_latent_spaces(pipeline("sd").vae, "StableDiffusionPipeline")] == ["sd1"]
    assert [s.name for s in vae_latent_spaces(pipeline("sdxl").vae, "StableDiffusionXLImg2ImgPipeline")] == ["sdxl"]
    assert [s.name for s in vae_latent_spaces(pipeline("sdxl").vae)] == ["sdxl"]  # by its scaling factor
    assert [s.name for s in vae_latent_spaces(pipeline("flux").vae, "FluxKontextPipeline")] == ["flux1"]
    assert [s.name for s in vae_latent_spaces(pipeline("svd").vae)] == ["svd"]
    assert [s.name for s in vae_latent_spaces(pipeline("wan").vae)] == ["wan2.1"]
    assert [s.name for s in vae_latent_spaces(pipeline("ltx").vae)] == ["ltx-video"]


def test_unknown_vae_class_trusts_a_decoder_of_the_right_shape():
    """A VAE class no family uses (here diffusers' AutoencoderTiny, scaling 1): warned about, decoded as is."""
    tiny_vae = diffusers.AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4)
    decoder = fastdecoders.build_decoder("taesdxl", tiny=True)
    with pytest.warns(UserWarning, match="cannot tell which latent space"):
        adapter = DiffusersVAEAdapter(tiny_vae, decoder, pipeline_name="StableDiffusionXLPipeline")
    z = torch.randn(1, 4, 4, 4)
    torch.testing.assert_close(adapter.decode(z).sample, decoder(z))
    with pytest.raises(FastDecodersError, match="reads flux1 latents"):
        DiffusersVAEAdapter(tiny_vae, fastdecoders.build_decoder("taef1", tiny=True))


def test_restore_nesting_and_delegation():
    pipe = pipeline("sdxl")
    original = pipe.vae
    first = fastdecoders.use(pipe, fastdecoders.build_decoder("taesdxl", tiny=True))
    adapter = pipe.vae
    # the pipeline still sees its VAE's config and attributes, and encodes with it
    assert adapter.config.scaling_factor == original.config.scaling_factor
    assert adapter.post_quant_conv is original.post_quant_conv
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(adapter.encode(image).latent_dist.mode(), original.encode(image).latent_dist.mode())
    # a second swap wraps the real VAE and restores the first adapter
    with fastdecoders.use(pipe, fastdecoders.build_decoder("effvit-sdxl", tiny=True)) as second:
        assert second.adapter.original_vae is original and pipe.vae is second.adapter
    assert pipe.vae is adapter
    first.restore()
    first.restore()  # idempotent
    assert pipe.vae is original and not first.active
    assert "restored" in repr(first)


def test_decode_return_dict_and_positional_args():
    """decode follows the original VAE's positional order (LTX: temb before return_dict) and return_dict."""
    pipe = pipeline("ltx")
    with fastdecoders.use(pipe, fastdecoders.build_decoder("taehv-ltx-video", tiny=True)):
        raw = torch.randn(1, 128, 2, 2, 2)
        (video,) = pipe.vae.decode(raw, None, False)
        assert video.shape == (1, 3, 9, 64, 64)
        assert pipe.vae.decode(raw).sample.shape == video.shape
        assert pipe.vae.config.timestep_conditioning is False  # so the pipeline adds no decode noise
        with pytest.raises(FastDecodersError, match="ltx-video latents"):
            pipe.vae.decode(torch.randn(1, 16, 2, 2, 2))
    assert pipe.vae.config.timestep_conditioning is True
