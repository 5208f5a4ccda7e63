"""Every registered decoder, at its tiny test config: output shape, dtype, finiteness, and gradients flow."""

from __future__ import annotations

import inspect

import pytest
import torch

from fastdecoders import build_decoder, get_spec, list_decoders
from fastdecoders.errors import FastDecodersError


def _latents_for(decoder, space) -> tuple[torch.Tensor, dict, tuple[int, ...]]:
    """Small latents for ``decoder`` and the output shape they must give."""
    h = w = 2 if space.spatial_factor >= 32 else 4
    H, W = h * space.spatial_factor, w * space.spatial_factor
    if decoder.latent_ndim == 5:
        t = space.next_latent_frames(3)
        return torch.randn(2, space.channels, t, h, w), {}, (2, 3, space.pixel_frames(t), H, W)
    if "num_frames" in inspect.signature(decoder.forward).parameters:  # SVD-style (B·T, C, h, w) + num_frames
        return torch.randn(2 * 3, space.channels, h, w), {"num_frames": 3}, (6, 3, H, W)
    return torch.randn(2, space.channels, h, w), {}, (2, 3, H, W)


@pytest.mark.parametrize("name", list_decoders())
def test_every_registered_decoder(name):
    spec = get_spec(name)
    decoder = build_decoder(name, tiny=True)
    assert type(decoder).config_class is type(spec.config), "tiny and full configs must be of one architecture"
    space = spec.latent_space
    latents, kwargs, expected = _latents_for(decoder, space)
    latents.requires_grad_(True)
    out = decoder.decode(latents, **kwargs).sample
    assert out.shape == expected
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    grads = [p.grad for p in decoder.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads), "every parameter must receive a gradient"
    assert latents.grad is not None and latents.grad.abs().sum() > 0


def test_unknown_name_suggests_close_names():
    with pytest.raises(FastDecodersError, match="did you mean taesdxl"):
        get_spec("taesdlx")
