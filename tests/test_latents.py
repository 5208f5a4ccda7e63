"""The latent-space registry agrees with diffusers' VAE classes, and its conversions invert each other."""

from __future__ import annotations

import pytest
import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.latents import (
    LATENT_SPACES,
    frames_to_video,
    get_latent_space,
    ncthw_to_ntchw,
    ntchw_to_ncthw,
    to_01,
    to_pm1,
    video_to_frames,
)

diffusers = pytest.importorskip("diffusers")

_KL4 = dict(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2)
_CONV_STAGES = ("DownEncoderBlock2D",) * 4

# published configs (the fields that differ from the class defaults), and a narrow copy with the same stage layout
# that runs on CPU in milliseconds: factors depend on the stages, not on the widths.
PUBLISHED = {
    "sd1": ("AutoencoderKL", dict(_KL4, block_out_channels=(128, 256, 512, 512), latent_channels=4,
                                  scaling_factor=0.18215)),
    "sdxl": ("AutoencoderKL", dict(_KL4, block_out_channels=(128, 256, 512, 512), latent_channels=4,
                                   scaling_factor=0.13025)),
    "sd3": ("AutoencoderKL", dict(_KL4, block_out_channels=(128, 256, 512, 512), latent_channels=16,
                                  scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                                  use_post_quant_conv=False)),
    "flux1": ("AutoencoderKL", dict(_KL4, block_out_channels=(128, 256, 512, 512), latent_channels=16,
                                    scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                                    use_post_quant_conv=False)),
    "flux2": ("AutoencoderKLFlux2", {}),
    "svd": ("AutoencoderKLTemporalDecoder", dict(down_block_types=_CONV_STAGES, layers_per_block=2,
                                                 block_out_channels=(128, 256, 512, 512), latent_channels=4)),
    "wan2.1": ("AutoencoderKLWan", {}),
    "wan2.2": ("AutoencoderKLWan", dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, patch_size=2,
                                        in_channels=12, out_channels=12, scale_factor_spatial=16)),
    "ltx-video": ("AutoencoderKLLTXVideo", {}),
    "hunyuan-video": ("AutoencoderKLHunyuanVideo", {}),
    "cogvideox": ("AutoencoderKLCogVideoX", {}),
    "sana": ("AutoencoderDC", {}),
    "hunyuan-video-1.5": ("AutoencoderKLHunyuanVideo15", {}),
    "opensora-1.3": ("OpenSoraVAE_V1_3", {}),  # hpcaitech/Open-Sora's own class, not in diffusers
    "ltx-2": ("AutoencoderKLLTX2Video", {}),
    "qwen-image": ("AutoencoderKLQwenImage", {}),
    "minimax-h3": ("AutoencoderKLMiniMaxH3", {}),
}  # fmt: skip

NARROW = {  # overrides that shrink widths but keep every stage
    "AutoencoderKL": dict(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, layers_per_block=1),
    "AutoencoderKLFlux2": dict(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, layers_per_block=1),
    "AutoencoderKLTemporalDecoder": dict(block_out_channels=(32,) * 4, layers_per_block=1),  # groups fixed at 32,
    "AutoencoderKLWan": dict(base_dim=8, num_res_blocks=1),
    "AutoencoderKLLTXVideo": dict(block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                                  layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1)),
    "AutoencoderKLHunyuanVideo": dict(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, layers_per_block=1),
    "AutoencoderKLCogVideoX": dict(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, layers_per_block=1),
    "AutoencoderDC": dict(encoder_block_out_channels=(32,) * 6, decoder_block_out_channels=(32,) * 6,
                          encoder_layers_per_block=(1,) * 6, decoder_layers_per_block=(1,) * 6, attention_head_dim=8),
}  # fmt: skip


def test_every_family_has_a_published_config():
    assert set(PUBLISHED) == set(LATENT_SPACES)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_registry_agrees_with_diffusers(name):
    space = get_latent_space(name)
    class_name, published = PUBLISHED[name]
    assert space.vae_class == class_name
    cls = getattr(diffusers, class_name, None)
    if cls is None:
        pytest.skip(f"{class_name} is not a diffusers class")
    with torch.device("meta"):  # the published size, without allocating it
        vae = cls(**published)
    assert _latent_channels(vae) == space.channels
    for key in ("scaling_factor", "shift_factor"):
        if key in published:
            assert getattr(space, key) == pytest.approx(published[key])
    if name == "wan2.1":  # the class defaults are Wan 2.1's published statistics
        assert tuple(vae.config.latents_mean) == space.latents_mean
        assert tuple(vae.config.latents_std) == space.latents_std
    if space.latents_mean is not None:
        assert len(space.latents_mean) == len(space.latents_std) == space.channels

    if class_name not in NARROW:
        return  # no narrow build to decode with (the VAE classes the TAEHV family added)
    narrow = cls(**{**published, **NARROW[class_name]}).eval()
    t = 3 if space.is_video and space.layout == "NCTHW" else None
    z = torch.randn(1, space.channels, *([t] if t else []), 2, 2)
    with torch.no_grad():
        kwargs = {"num_frames": 1} if class_name == "AutoencoderKLTemporalDecoder" else {}
        out = vae_decode(narrow, z, **kwargs)
    assert out.shape[-2:] == (2 * space.spatial_factor, 2 * space.spatial_factor)
    if t:
        assert out.shape[2] == space.pixel_frames(t)


def vae_decode(vae, z, **kwargs):
    return vae.decode(z, **kwargs).sample


def _latent_channels(vae) -> int:
    if getattr(vae, "post_quant_conv", None) is not None and hasattr(vae.post_quant_conv, "weight"):
        return vae.post_quant_conv.weight.shape[1]
    conv_in = vae.decoder.conv_in
    conv = getattr(conv_in, "conv", conv_in)
    return conv.weight.shape[1]


def test_frame_arithmetic():
    wan, ltx, svd = (get_latent_space(n) for n in ("wan2.1", "ltx-video", "svd"))
    assert wan.pixel_frames(21) == 81 and wan.latent_frames(81) == 21
    assert ltx.pixel_frames(16) == 121 and ltx.latent_frames(121) == 16
    assert svd.pixel_frames(14) == 14
    with pytest.raises(FastDecodersError, match="1 \\+ 4"):
        wan.latent_frames(80)


@pytest.mark.parametrize("name", ["sd3", "wan2.1", "sdxl"])
def test_raw_diffusion_round_trip(name):
    space = get_latent_space(name)
    shape = (2, space.channels, 3, 4, 4) if space.layout == "NCTHW" else (2, space.channels, 4, 4)
    raw = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(space.to_raw(space.to_diffusion(raw)), raw)


def test_scale_shift_formulas_match_diffusers_pipelines():
    raw = torch.randn(1, 16, 4, 4)
    sd3 = get_latent_space("sd3")
    # StableDiffusion3Pipeline decodes `latents / scaling_factor + shift_factor`
    torch.testing.assert_close(sd3.to_raw(raw), raw / 1.5305 + 0.0609)
    wan = get_latent_space("wan2.1")
    z = torch.randn(1, 16, 2, 4, 4)
    mean = torch.tensor(wan.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(wan.latents_std).view(1, 16, 1, 1, 1)
    # WanPipeline decodes `latents / (1 / std) + mean`
    torch.testing.assert_close(wan.to_raw(z), z / (1.0 / std) + mean)


def test_range_and_layout_conversions():
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(to_01(to_pm1(x)), x)
    video = torch.randn(2, 3, 5, 4, 4)
    torch.testing.assert_close(ntchw_to_ncthw(ncthw_to_ntchw(video)), video)
    torch.testing.assert_close(frames_to_video(video_to_frames(video), 5), video)


def test_check_latents_errors():
    sdxl = get_latent_space("sdxl")
    with pytest.raises(FastDecodersError, match="4 channels"):
        sdxl.check_latents(torch.zeros(1, 16, 4, 4))
    with pytest.raises(FastDecodersError, match="4-d"):
        sdxl.check_latents(torch.zeros(4, 4, 4))
    with pytest.raises(FastDecodersError, match="NaN"):
        sdxl.check_latents(torch.full((1, 4, 2, 2), float("nan")))
    with pytest.raises(FastDecodersError, match="floating"):
        sdxl.check_latents(torch.zeros(1, 4, 2, 2, dtype=torch.int64))
    with pytest.raises(FastDecodersError, match="did you mean sdxl"):
        get_latent_space("sdx")
