"""Tiny random diffusers pipelines: offline, seconds on a CPU, images of noise.

They keep the real models' latent channels and spatial/temporal factors (so the same decoders fit, and
``fastdecoders.use`` sees the geometry it checks), take prompt embeddings instead of a text encoder, and hold a few
thousand weights instead of billions. The examples' ``--tiny`` mode, the integration tests and the end-to-end
benchmark's smoke mode all build them here.

``tiny_pipeline(kind, **vae_config)`` -> ``(pipeline, call_kwargs)``; ``vae_config`` overrides the VAE's constructor
arguments (a test can give a checkpoint scaling or latent statistics that differ from the published ones).
diffusers (and transformers, for SVD) are imported inside the builders: ``fastdecoders bench`` imports this module,
and only its ``--pipeline --tiny`` mode needs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.latents import get_latent_space

#: the kinds ``tiny_pipeline`` builds, each with the latent family its VAE encodes
KINDS = {"sd": "sd1", "sdxl": "sdxl", "sd3": "sd3", "flux": "flux1", "svd": "svd", "wan": "wan2.1", "ltx": "ltx-video"}


def _embeds(*shape: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _kl_vae(channels: int, **config: Any):
    import diffusers

    kwargs = dict(
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=channels, norm_num_groups=8,
    )  # fmt: skip
    return diffusers.AutoencoderKL(**{**kwargs, **config})


def _unet(**config: Any):
    import diffusers

    return diffusers.UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=8, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), cross_attention_dim=32, **config,
    )  # fmt: skip


def _sd(**vae_config: Any) -> tuple[Any, dict]:
    import diffusers

    pipe = diffusers.StableDiffusionPipeline(
        vae=_kl_vae(4, **{"scaling_factor": 0.18215, **vae_config}), text_encoder=None, tokenizer=None, unet=_unet(),
        scheduler=diffusers.EulerDiscreteScheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    return pipe, {"prompt_embeds": _embeds(1, 6, 32), "guidance_scale": 1.0}


def _sdxl(**vae_config: Any) -> tuple[Any, dict]:
    import diffusers

    unet = _unet(addition_embed_type="text_time", addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=6 * 8 + 16)  # fmt: skip
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=_kl_vae(4, **{"scaling_factor": 0.13025, "force_upcast": True, **vae_config}), text_encoder=None,
        text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet, scheduler=diffusers.EulerDiscreteScheduler(),
    )  # fmt: skip
    # what the two text encoders would have produced for a prompt: token embeddings and a pooled embedding
    return pipe, {"prompt_embeds": _embeds(1, 6, 32), "pooled_prompt_embeds": _embeds(1, 16), "guidance_scale": 1.0}


def _sd3(**vae_config: Any) -> tuple[Any, dict]:
    import diffusers

    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=16,
        pos_embed_max_size=16,
    )  # fmt: skip
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=_kl_vae(16, **{"scaling_factor": 1.5305, "shift_factor": 0.0609, **vae_config}), text_encoder=None,
        tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
    )  # fmt: skip
    return pipe, {"prompt_embeds": _embeds(1, 6, 32), "pooled_prompt_embeds": _embeds(1, 16), "guidance_scale": 1.0}


def _flux(**vae_config: Any) -> tuple[Any, dict]:
    import diffusers

    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=(4, 4, 8),
    )  # fmt: skip
    pipe = diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=_kl_vae(16, **{"scaling_factor": 0.3611, "shift_factor": 0.1159, **vae_config}), text_encoder=None,
        tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer,
    )  # fmt: skip
    return pipe, {"prompt_embeds": _embeds(1, 6, 32), "pooled_prompt_embeds": _embeds(1, 16)}


def conditioning_image(size: int = 64):
    """A fixed random RGB ``PIL.Image`` (size × size): SVD's conditioning frame."""
    from PIL import Image

    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8))


def _svd(**vae_config: Any) -> tuple[Any, dict]:
    import diffusers
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = diffusers.UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=16,
        num_attention_heads=(2, 4), addition_time_embed_dim=8, projection_class_embeddings_input_dim=3 * 8,
    )  # fmt: skip
    # the temporal VAE's norms use 32 groups, hence 32 channels; its encoder encodes the conditioning image
    vae = diffusers.AutoencoderKLTemporalDecoder(
        **{"block_out_channels": (32,) * 4, "down_block_types": ("DownEncoderBlock2D",) * 4, "latent_channels": 4,
           **vae_config}
    )  # fmt: skip
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, projection_dim=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        image_size=224, patch_size=32,
    ))  # fmt: skip
    pipe = diffusers.StableVideoDiffusionPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet, scheduler=diffusers.EulerDiscreteScheduler(),
        feature_extractor=CLIPImageProcessor(),
    )  # fmt: skip
    return pipe, {"image": conditioning_image(), "max_guidance_scale": 1.0, "min_guidance_scale": 1.0}


def _wan(**vae_config: Any) -> tuple[Any, dict]:
    import diffusers

    space = get_latent_space("wan2.1")
    vae = diffusers.AutoencoderKLWan(
        **{"base_dim": 8, "z_dim": 16, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1,
           "temperal_downsample": [False, True, True], "latents_mean": list(space.latents_mean),
           "latents_std": list(space.latents_std), **vae_config}
    )  # fmt: skip
    transformer = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=1, rope_max_seq_len=32,
    )  # fmt: skip
    pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                                 scheduler=diffusers.FlowMatchEulerDiscreteScheduler())  # fmt: skip
    return pipe, {"prompt_embeds": _embeds(1, 6, 32), "guidance_scale": 1.0}


def _ltx(**vae_config: Any) -> tuple[Any, dict]:
    import diffusers

    # timestep-conditioned, as LTX 0.9.1+ checkpoints are
    vae = diffusers.AutoencoderKLLTXVideo(
        **{"latent_channels": 128, "block_out_channels": (8,) * 4, "decoder_block_out_channels": (8,) * 4,
           "layers_per_block": (1,) * 5, "decoder_layers_per_block": (1,) * 5, "timestep_conditioning": True,
           **vae_config}
    )  # fmt: skip
    transformer = diffusers.LTXVideoTransformer3DModel(
        in_channels=128, out_channels=128, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
        num_layers=1, caption_channels=32,
    )  # fmt: skip
    pipe = diffusers.LTXPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                                 tokenizer=None, transformer=transformer)  # fmt: skip
    return pipe, {"prompt_embeds": _embeds(1, 6, 32), "prompt_attention_mask": torch.ones(1, 6), "guidance_scale": 1.0}


_BUILDERS: dict[str, Callable[..., tuple[Any, dict]]] = {
    "sd": _sd, "sdxl": _sdxl, "sd3": _sd3, "flux": _flux, "svd": _svd, "wan": _wan, "ltx": _ltx,
}  # fmt: skip


def tiny_pipeline(kind: str, seed: int = 0, **vae_config: Any) -> tuple[Any, dict]:
    """``(pipeline, call_kwargs)`` of a tiny random ``kind`` pipeline (one of ``KINDS``), weights seeded by ``seed``.

    ``call_kwargs`` stand in for the text/image encoders (prompt embeddings, SVD's conditioning image); add
    ``height``/``width`` (multiples of 16 for the images, 32 for LTX), ``num_frames`` and ``num_inference_steps``.
    """
    if kind not in _BUILDERS:
        raise FastDecodersError(f"expected a tiny pipeline kind in {', '.join(KINDS)}, got {kind!r}")
    torch.manual_seed(seed)
    pipe, kwargs = _BUILDERS[kind](**vae_config)
    pipe.set_progress_bar_config(disable=True)
    return pipe, kwargs
