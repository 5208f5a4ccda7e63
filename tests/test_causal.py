"""tae-causal: frame arithmetic, causality, and streaming == parallel decoding however a clip is chunked."""

from __future__ import annotations

import pytest
import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.models.causal import CausalTAEDecoder
from fastdecoders.registry import build_decoder, get_spec

NAMES = ["tae-causal-wan2.1", "tae-causal-wan2.2", "tae-causal-hunyuan-video", "tae-causal-ltx-video"]
SPLITS = [(1, 1, 1, 1, 1), (2, 3), (3, 1, 1), (2, 0, 3), (5,)]  # 5 latent frames, an empty chunk included
ATOL = 1e-5  # fp32; streaming and parallel differ only by batching inside the convs


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=NAMES)
def case(request):
    torch.manual_seed(0)
    spec = get_spec(request.param)
    decoder = build_decoder(spec, tiny=True).eval()
    size = 2 if spec.latent_space.spatial_factor == 32 else 4  # small latents, >= 64 px for f16/f32
    latents = torch.randn(2, spec.latent_space.channels, 5, size, size)
    with torch.no_grad():
        full = decoder(latents)
    return spec, decoder, latents, full


def test_full_configs_match_their_latent_space():
    for name in NAMES:
        spec = get_spec(name)
        space = spec.latent_space
        for config in (spec.config, spec.tiny):
            assert (config.temporal_factor, config.spatial_factor) == (space.temporal_factor, space.spatial_factor)
            assert config.latent_channels == space.channels


def test_frame_count_and_size_follow_the_latent_space(case):
    spec, decoder, latents, full = case
    space = spec.latent_space
    h, w = latents.shape[-2:]
    assert full.shape == (2, 3, space.pixel_frames(5), *space.pixel_size(h, w))
    with torch.no_grad():
        one = decoder(latents[:, :, :1])
    assert one.shape[2] == 1  # the first latent frame is exactly one pixel frame
    assert torch.isfinite(full).all()


@pytest.mark.parametrize("split", SPLITS, ids=lambda s: "+".join(map(str, s)))
def test_streaming_equals_parallel_for_any_chunking(case, split):
    spec, decoder, latents, full = case
    k = spec.latent_space.temporal_factor
    stream = decoder.stream()
    outputs, start = [], 0
    for size in split:
        pixels = stream.push(latents[:, :, start : start + size])
        expected = (1 + k * (size - 1) if start == 0 else k * size) if size else 0
        assert pixels.shape[2] == expected
        outputs.append(pixels)
        start += size
    tail = stream.flush()
    assert tail.shape == (2, 3, 0, *full.shape[3:])
    torch.testing.assert_close(torch.cat([*outputs, tail], dim=2), full, rtol=0, atol=ATOL)


def test_each_output_frame_depends_only_on_current_and_past_latent_frames(case):
    spec, decoder, latents, full = case
    k = spec.latent_space.temporal_factor
    for changed in (1, 3):
        perturbed = latents.clone()
        perturbed[:, :, changed] += 1.0
        with torch.no_grad():
            out = decoder(perturbed)
        first = 1 + k * (changed - 1)  # first pixel frame of latent frame `changed`
        torch.testing.assert_close(out[:, :, :first], full[:, :, :first], rtol=0, atol=1e-6)
        assert (out[:, :, first] - full[:, :, first]).abs().max() > 1e-4  # and it does reach its own frames


def test_streaming_memory_does_not_grow_and_flush_starts_a_new_clip(case):
    _, decoder, latents, full = case

    def state_numel(stream):
        return sum(s.numel() for s in stream.states if isinstance(s, torch.Tensor))

    stream = decoder.stream()
    stream.push(latents[:, :, :2])
    after_two = state_numel(stream)
    for i in range(2, 5):
        stream.push(latents[:, :, i : i + 1])
    assert state_numel(stream) == after_two > 0
    stream.flush()
    again = torch.cat([stream.push(latents[:, :, :3]), stream.push(latents[:, :, 3:])], dim=2)
    torch.testing.assert_close(again, full, rtol=0, atol=ATOL)


def test_bad_input_raises_one_clear_error():
    decoder = build_decoder("tae-causal-wan2.1", tiny=True)
    assert isinstance(decoder, CausalTAEDecoder) and decoder.latent_ndim == 5
    with pytest.raises(FastDecodersError, match="NCTHW"):
        decoder(torch.randn(1, 16, 4, 4))  # an image latent
    with pytest.raises(FastDecodersError, match="16"):
        decoder(torch.randn(1, 4, 2, 4, 4))  # wrong channels
    with pytest.raises(FastDecodersError, match="at least 1 latent frame"):
        decoder(torch.randn(1, 16, 0, 4, 4))
    stream = decoder.stream()
    stream.push(torch.randn(1, 16, 1, 4, 4))
    with pytest.raises(FastDecodersError, match="cannot continue"):
        stream.push(torch.randn(1, 16, 1, 8, 8))
