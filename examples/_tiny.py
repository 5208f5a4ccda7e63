"""Tiny random pipelines for the examples' ``--tiny`` mode: offline, seconds on a CPU, images of noise.

They have the real models' latent channels and spatial factors (so the same decoders fit), prompt embeddings instead
of a text encoder, and a few thousand weights instead of billions. Shared by the example scripts; not an example.
"""

from __future__ import annotations

import numpy as np
import torch


def sdxl() -> tuple[object, dict]:
    """(StableDiffusionXLPipeline, call kwargs) with SDXL's VAE geometry (4 ch, f8, scaling 0.13025)."""
    import diffusers

    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=8, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), cross_attention_dim=32, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 16,
    )  # fmt: skip
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, scaling_factor=0.13025,
    )  # fmt: skip
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(),
    )  # fmt: skip
    # what the two text encoders would have produced for a prompt: token embeddings and a pooled embedding
    kwargs = {"prompt_embeds": torch.randn(1, 6, 32), "pooled_prompt_embeds": torch.randn(1, 16), "guidance_scale": 1.0}
    return pipe, kwargs


def svd() -> tuple[object, dict]:
    """(StableVideoDiffusionPipeline, call kwargs): SVD's VAE geometry (4 ch, f8, scaling 0.18215), a tiny CLIP."""
    import diffusers
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = diffusers.UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=16,
        num_attention_heads=(2, 4), addition_time_embed_dim=8, projection_class_embeddings_input_dim=3 * 8,
    )  # fmt: skip
    vae = diffusers.AutoencoderKLTemporalDecoder(
        block_out_channels=(32,) * 4, down_block_types=("DownEncoderBlock2D",) * 4, latent_channels=4
    )
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, projection_dim=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        image_size=224, patch_size=32,
    ))  # fmt: skip
    pipe = diffusers.StableVideoDiffusionPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet, scheduler=diffusers.EulerDiscreteScheduler(),
        feature_extractor=CLIPImageProcessor(),
    )  # fmt: skip
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    kwargs = {"image": image, "max_guidance_scale": 1.0, "min_guidance_scale": 1.0}
    return pipe, kwargs
