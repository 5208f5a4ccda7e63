"""tae-temporal: starts as the frame-wise TAE, mixes frames within a clip only, and checks num_frames."""

from __future__ import annotations

import pytest
import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.models import build_decoder
from fastdecoders.models.tae import TAEDecoder
from fastdecoders.models.temporal import TemporalTAEConfig, TemporalTAEDecoder
from fastdecoders.registry import get_spec

TINY = get_spec("tae-temporal-svd").tiny


def _tiny_tae() -> TAEDecoder:
    return TAEDecoder(TINY.tae_config)


def test_at_init_it_is_exactly_the_frame_wise_tae():
    tae = _tiny_tae()
    decoder = TemporalTAEDecoder.from_tae(tae, attention_head_dim=TINY.attention_head_dim)
    latents = torch.randn(6, 4, 4, 4)  # 2 clips of 3 frames
    out = decoder(latents, num_frames=3)
    assert out.shape == (6, 3, 32, 32)
    # zero-initialised projection: the mid-block adds exactly 0
    torch.testing.assert_close(out, tae(latents), rtol=0, atol=1e-6)


def test_attention_mixes_frames_of_a_clip_but_not_across_clips():
    decoder = build_decoder("tae-temporal-svd", tiny=True)
    torch.nn.init.normal_(decoder.temporal.proj_out.weight, std=0.5)  # as if trained: the branch is on
    latents = torch.randn(6, 4, 4, 4)
    perturbed = latents.clone()
    perturbed[0] += 1.0  # frame 0 of clip 0
    with torch.no_grad():
        out, out_perturbed = decoder(latents, num_frames=3), decoder(perturbed, num_frames=3)
    assert (out_perturbed[1:3] - out[1:3]).abs().max() > 1e-4  # the other frames of clip 0 see it
    torch.testing.assert_close(out_perturbed[3:], out[3:], rtol=0, atol=1e-6)  # clip 1 does not


def test_num_frames_none_is_one_clip_and_decode_takes_num_frames():
    decoder = build_decoder("tae-temporal-svd", tiny=True)
    torch.nn.init.normal_(decoder.temporal.proj_out.weight, std=0.5)
    latents = torch.randn(4, 4, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(decoder(latents), decoder(latents, num_frames=4), rtol=0, atol=0)
        sample = decoder.decode(latents, num_frames=2).sample
    assert sample.shape == (4, 3, 32, 32) and torch.isfinite(sample).all()


@pytest.mark.parametrize("num_frames", [4, 0, 7])
def test_num_frames_that_do_not_split_the_batch_raise(num_frames):
    decoder = build_decoder("tae-temporal-svd", tiny=True)
    with pytest.raises(FastDecodersError, match="do not split into clips"):
        decoder(torch.randn(6, 4, 4, 4), num_frames=num_frames)


def test_bad_latents_and_mismatched_tae_weights_raise():
    decoder = build_decoder("tae-temporal-svd", tiny=True)
    with pytest.raises(FastDecodersError, match="expected latents"):
        decoder(torch.randn(6, 16, 4, 4), num_frames=3)
    other = TAEDecoder(TemporalTAEConfig(widths=(8,) * 4, blocks=(1, 1, 1, 1), attention_head_dim=4).tae_config)
    with pytest.raises(FastDecodersError, match="do not fit"):
        decoder.load_tae_weights(other.state_dict())  # same keys, other widths
    with pytest.raises(FastDecodersError, match="missing"):
        decoder.load_tae_weights({})


@pytest.mark.shared
def test_real_taesd_weights_load_and_reproduce_taesd(taesd_weights_dir):
    from fastdecoders import load_decoder

    tae = load_decoder("taesd", weights_dir=taesd_weights_dir)
    decoder = TemporalTAEDecoder.from_tae(tae)
    latents = torch.randn(4, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(decoder(latents, num_frames=2), tae(latents), rtol=0, atol=1e-6)
