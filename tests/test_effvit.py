"""effvit: DC-AE's stage/upsampling mapping gives f8, the linear attention is what it claims, BatchNorm modes."""

from __future__ import annotations

import pytest
import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.models import build_decoder
from fastdecoders.models.effvit import EfficientViTBlock, EffViTConfig, EffViTDecoder, MultiScaleLinearAttention
from fastdecoders.registry import get_spec

NAMES = ["effvit-sdxl", "effvit-attn-sdxl"]


@pytest.mark.parametrize("name", NAMES)
def test_decodes_x8_with_the_registered_configs(name):
    spec = get_spec(name)
    assert spec.config.spatial_factor == spec.tiny.spatial_factor == spec.latent_space.spatial_factor == 8
    decoder = build_decoder(name, tiny=True).eval()
    with torch.no_grad():
        out = decoder(torch.randn(2, 4, 4, 4))
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()


def test_seed_config_maps_stages_like_dc_ae():
    # widths (128,128,128,256,256,256), depths (0,5,10,0,0,0): empty stages are skipped; stages 2 and 1 and the
    # output head each upsample x2
    seed = EffViTDecoder(EffViTConfig())
    assert list(seed.stages) == ["2", "1"]
    assert [len(seed.stages[k]) for k in seed.stages] == [1 + 10, 1 + 5]  # up block + ResBlocks
    attn = build_decoder("effvit-attn-sdxl")
    assert list(attn.stages) == ["5", "2", "1"]
    assert sum(isinstance(m, EfficientViTBlock) for m in attn.modules()) == 2
    assert EffViTConfig(depths=(3, 5, 10, 0, 0, 0)).spatial_factor == 8  # stage 0 upsamples on entry instead
    assert EffViTConfig(depths=(0, 5, 10, 2, 0, 0)).spatial_factor == 16


def test_linear_attention_equals_explicit_relu_kernel_attention():
    attn = MultiScaleLinearAttention(8, head_dim=4, scales=(), norm="ln").eval()
    x = torch.randn(1, 8, 3, 3)
    q, k, v = attn.qkv(x).reshape(1, 2, 12, 9).chunk(3, dim=2)  # 2 heads of [q, k, v] (4 ch each), 9 pixels
    weights = k.relu().transpose(-1, -2) @ q.relu()  # (heads, key pixel, query pixel): relu(k)·relu(q)
    # each query's weights normalised over the keys; a query with relu(q) = 0 gets 0 (the module's eps)
    expected = v @ (weights / (weights.sum(dim=-2, keepdim=True) + 1e-15))
    reference = x + attn.norm(attn.proj(expected.reshape(1, 8, 3, 3)))
    torch.testing.assert_close(attn(x), reference, rtol=1e-5, atol=1e-5)


def test_batchnorm_train_uses_batch_stats_and_eval_is_per_sample():
    decoder = build_decoder("effvit-attn-sdxl", tiny=True)
    latents = torch.randn(3, 4, 4, 4)
    bn = next(m for m in decoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    decoder.train()
    train_batch = decoder(latents)
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))  # stats were updated
    assert (decoder(latents[:1]) - train_batch[:1]).abs().max() > 1e-4  # a sample's output depends on its batch
    decoder.eval()
    with torch.no_grad():
        eval_batch = decoder(latents)
        torch.testing.assert_close(decoder(latents[:1]), eval_batch[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "options", [{"norm": "rms", "act": "silu"}, {"norm": "ln", "upsample": "interpolate", "shortcut": False}]
)
def test_norm_act_and_upsample_options_build_and_decode_x8(options):
    config = EffViTConfig(**{**get_spec("effvit-attn-sdxl").tiny.__dict__, **options})
    out = EffViTDecoder(config)(torch.randn(1, 4, 4, 4))
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def test_bad_input_and_bad_configs_raise():
    decoder = build_decoder("effvit-sdxl", tiny=True)
    with pytest.raises(FastDecodersError, match="expected latents"):
        decoder(torch.randn(1, 16, 4, 4))
    with pytest.raises(ValueError, match="same number of stages"):
        EffViTConfig(depths=(0, 5, 10))
    with pytest.raises(ValueError, match="not one of"):
        EffViTConfig(norm="group")
