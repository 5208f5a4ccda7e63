"""Fast paths equal eager: channels_last, BatchNorm folding, torch.compile; the fp16 policy and activation ranges."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fastdecoders import FastDecodersError, build_decoder
from fastdecoders.fast import FP16_MAX, activation_ranges, fold_batchnorm, fp16_report, optimize
from fastdecoders.tiling import decode_tiled

#: fp32, same math in another memory layout / fused: differences are float reordering only.
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize_norms(decoder: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so folding them is really tested."""
    for module in decoder.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(module.weight, 1.0, 0.2)
            nn.init.normal_(module.bias, 0.0, 0.2)


CASES = {  # name: (latent shape, call kwargs)
    "taesdxl": ((2, 4, 9, 11), {}),
    "effvit-attn-sdxl": ((1, 4, 8, 6), {}),
    "tae-temporal-svd": ((4, 4, 6, 5), {"num_frames": 2}),
    "taew2_1": ((1, 16, 3, 4, 5), {}),
}


@pytest.mark.parametrize("backend", ["eager", "channels_last"])
@pytest.mark.parametrize("name", list(CASES))
def test_backends_equal_eager(name, backend):
    reference = build_decoder(name, tiny=True).eval()
    _randomize_norms(reference)
    fast = optimize(copy.deepcopy(reference), backend=backend)
    shape, kwargs = CASES[name]
    z = torch.randn(shape)
    with torch.no_grad():
        want, got = reference(z, **kwargs), fast(z, **kwargs)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert (got - want).abs().max() <= TOL
    assert fast.fastdecoders_backend == backend and not any(p.requires_grad for p in fast.parameters())
    if backend == "channels_last" and z.ndim == 4:
        assert got.is_contiguous(memory_format=torch.channels_last)  # no copy back to NCHW


def test_batchnorm_folds_into_convs():
    decoder = build_decoder("effvit-attn-sdxl", tiny=True).eval()
    _randomize_norms(decoder)
    folded = copy.deepcopy(decoder)
    n = fold_batchnorm(folded)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in decoder.modules())
    left = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert n > 0 and left == bns - n and left == 1  # only norm_out remains: a residual sum comes before it
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert (folded(z) - decoder(z)).abs().max() <= TOL


def test_tiling_an_optimized_decoder_stays_exact():
    reference = build_decoder("taesdxl", tiny=True).eval()
    fast = optimize(copy.deepcopy(reference), backend="channels_last")
    z = torch.randn(1, 4, 13, 11)
    tiled, report = decode_tiled(fast, z, tile=5)
    with torch.no_grad():
        assert report.exact and (tiled - reference(z)).abs().max() <= TOL


@pytest.mark.slow  # inductor's first compile takes minutes on a busy 2-core CPU
def test_compile_equals_eager():
    """One small inductor compile (CPU): the fused conv/ReLU/add graph gives eager's numbers."""
    reference = build_decoder("taesdxl", tiny=True).eval()
    fast = optimize(copy.deepcopy(reference), backend="compile")
    z = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        assert (fast(z) - reference(z)).abs().max() <= TOL


def test_fp16_policy():
    tae = optimize(build_decoder("taesdxl", tiny=True), dtype="float16")
    assert next(tae.parameters()).dtype == torch.float16
    with pytest.warns(UserWarning, match="bfloat16"):
        causal = optimize(build_decoder("taew2_1", tiny=True), dtype=torch.float16)
    assert next(causal.parameters()).dtype == torch.bfloat16
    forced = optimize(build_decoder("taew2_1", tiny=True), dtype="float16", allow_fp16_overflow=True)
    assert next(forced.parameters()).dtype == torch.float16


@pytest.mark.parametrize(("kwargs", "word"), [({"backend": "tensorrt"}, "backend"), ({"dtype": "float8"}, "dtype")])
def test_bad_arguments(kwargs, word):
    with pytest.raises(FastDecodersError, match=word):
        optimize(build_decoder("taesdxl", tiny=True), **kwargs)


def test_activation_ranges_see_every_layer():
    decoder = build_decoder("taesdxl", tiny=True).eval()
    z = torch.randn(2, 4, 6, 6)
    ranges = activation_ranges(decoder, z)
    convs = [name for name, m in decoder.named_modules() if isinstance(m, nn.Conv2d)]
    assert set(convs) <= set(ranges)
    with torch.no_grad():  # the last conv emits [0, 1]-ish values that forward maps to 2x - 1
        assert ranges["13"] == pytest.approx(float(((decoder(z) + 1) / 2).abs().max()), rel=1e-5)
    report = fp16_report(decoder, z)
    assert report["max_abs"] == max(ranges.values()) and report["headroom"] == FP16_MAX / report["max_abs"]


@pytest.mark.shared
def test_fp16_real_weights_stay_finite(taesd_weights_dir, kodak_dir):
    """taesdxl in fp16 on a real photo's latents: finite, close to fp32, with the documented headroom."""
    from fastdecoders import load_decoder, load_encoder
    from fastdecoders.io import center_crop_resize, list_images, read_image

    image = center_crop_resize(read_image(list_images(kodak_dir)[0]), 64) * 2 - 1
    with torch.no_grad():
        z = load_encoder("taesdxl_encoder", weights_dir=taesd_weights_dir)(image[None])
    decoder = load_decoder("taesdxl", weights_dir=taesd_weights_dir)
    assert fp16_report(decoder, z)["headroom"] > 10
    z = z[..., :3, :3]  # CPU fp16 convolutions are slow: a 24x24-pixel corner is enough to see the range
    with torch.no_grad():
        want = decoder(z)
        got = optimize(decoder, dtype="float16")(z.half()).float()
    assert torch.isfinite(got).all() and (got - want).abs().max() < 0.05
