"""The decode protocol (``fastdecoders.models.protocol``): ``decode_latents`` takes frames (N, C, h, w) + num_frames or
NCTHW clips from any caller and equals what each decoder's own ``forward`` computes in its own layout; the tiler asks
the decoder (``tile_job``) and returns the caller's layout. Tiny random decoders, CPU, fp32 (tolerance 1e-5: float
rounding of a different batch grouping)."""

from __future__ import annotations

import pytest
import torch

from fastdecoders import build_decoder
from fastdecoders.latents import frames_to_video, video_to_frames
from fastdecoders.models.protocol import call_kind
from fastdecoders.tiling import decode_tiled

TOL = {"atol": 1e-5, "rtol": 0}


def _tiny(name: str):
    torch.manual_seed(0)
    return build_decoder(name, tiny=True).eval()


@pytest.mark.parametrize("name", ["taesdxl", "effvit-sdxl"])
def test_image_decoder_decodes_clips_frame_by_frame(name):
    decoder = _tiny(name)
    clips = torch.randn(2, decoder.latent_channels, 3, 8, 8)
    with torch.no_grad():
        expected = frames_to_video(decoder(video_to_frames(clips)), 3)
        assert call_kind(decoder) == "image" and not decoder.decodes_clips
        torch.testing.assert_close(decoder.decode_latents(clips), expected, **TOL)
        frames = video_to_frames(clips)
        torch.testing.assert_close(decoder.decode_latents(frames, num_frames=3), decoder(frames), **TOL)


def test_temporal_decoder_gets_its_frame_count_from_clips():
    decoder = _tiny("tae-temporal-svd")
    clips = torch.randn(2, decoder.latent_channels, 3, 8, 8)
    with torch.no_grad():
        expected = frames_to_video(decoder(video_to_frames(clips), num_frames=3), 3)
        assert call_kind(decoder) == "temporal" and decoder.decodes_clips
        torch.testing.assert_close(decoder.decode_latents(clips), expected, **TOL)
        torch.testing.assert_close(decoder.decode_latents(video_to_frames(clips), 3), video_to_frames(expected), **TOL)


def test_causal_video_decoder_regroups_frames_into_clips():
    decoder = _tiny("taew2_1")
    clips = torch.randn(2, decoder.latent_channels, 3, 8, 8)
    with torch.no_grad():
        expected = decoder(clips)
        assert call_kind(decoder) == "video" and decoder.decodes_clips
        torch.testing.assert_close(decoder.decode_latents(clips), expected, **TOL)
        torch.testing.assert_close(decoder.decode_latents(video_to_frames(clips), 3), video_to_frames(expected), **TOL)


@pytest.mark.parametrize("name", ["taesdxl", "tae-temporal-svd", "taew2_1"])
def test_tiled_decode_of_clips_returns_the_callers_layout(name):
    decoder = _tiny(name)
    clips = torch.randn(1, decoder.latent_channels, 3, 12, 12)
    with torch.no_grad():
        whole = decoder.decode_latents(clips)
        tiled, report = decode_tiled(decoder, clips, tile=5)
    assert tiled.shape == whole.shape and report.exact and report.tiles_per_image > 1
    torch.testing.assert_close(tiled, whole, **TOL)
