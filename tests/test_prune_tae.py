"""Pruning TAE decoders: coupled channel sets, per-stage widths, TAEF2's pool branch, save/load, real weights."""

from __future__ import annotations

import pytest
import torch

from fastdecoders import build_decoder, load_decoder, save_decoder
from fastdecoders.errors import FastDecodersError
from fastdecoders.models import TAEConfig, TAEDecoder
from fastdecoders.prune import prune
from fastdecoders.prune.widths import parse_keep, pruned_width

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_taef2():
    decoder = TAEDecoder(TAEConfig(latent_channels=8, widths=(16, 16, 16), blocks=(2, 1, 1), pool=True))
    decoder.latent_space_name = "flux2"
    return decoder.eval()


def test_keep_one_is_the_teacher(tiny_taef2):
    z = torch.randn(2, 8, 6, 6)
    student = prune(tiny_taef2, 1.0, z).student
    assert student.config == tiny_taef2.config
    with torch.no_grad():
        assert torch.equal(student(z), tiny_taef2(z))


@pytest.mark.parametrize("method", ["independent", "pivoted", "magnitude"])
def test_half_width_is_a_narrow_tae(tiny_taef2, method, tmp_path):
    z = torch.randn(4, 8, 6, 6)
    result = prune(tiny_taef2, "1,0.5,0.25", z, method=method, multiple=4)
    student = result.student
    assert student.config.widths == (16, 8, 4) and student.config.blocks == tiny_taef2.config.blocks
    assert student.config.pool and student.num_parameters() < tiny_taef2.num_parameters()
    # the pool branch keeps 4 x width hidden channels under the same 4 GroupNorm groups
    pool = student.get_submodule("3").pool
    assert pool[0].out_channels == 4 * 16 and pool[1].num_groups == 4
    with torch.no_grad():
        assert student(z).shape == tiny_taef2(z).shape
    path = save_decoder(student, tmp_path / "s.safetensors")
    loaded = load_decoder(path)
    assert loaded.config == student.config and loaded.latent_space_name == "flux2"
    with torch.no_grad():
        assert torch.equal(loaded(z), student(z))


def test_stream_channels_are_one_set_per_stage(tiny_taef2):
    result = prune(tiny_taef2, 0.5, torch.randn(4, 8, 6, 6), multiple=4)
    # every block of a stage reads and writes its stream: one selection, and the pool groups keep equal quotas
    assert [s for s in result.plan.spaces if s.startswith("stream")] == ["stream0", "stream1", "stream2"]
    hidden = result.selection["3.pool"]
    assert torch.bincount(hidden // 16, minlength=4).tolist() == [8, 8, 8, 8]


def test_keep_parsing_and_widths():
    assert parse_keep("1,0.5,0.125") == (1.0, 0.5, 0.125)
    assert pruned_width(384, 0.125) == 48 and pruned_width(64, 0.5) == 32 and pruned_width(8, 0.5) == 4
    for bad in ("0", "1.5", "a,b", ""):
        with pytest.raises(FastDecodersError):
            parse_keep(bad)
    with pytest.raises(FastDecodersError, match="stages"):
        prune(build_decoder("taesdxl", tiny=True), "0.5,0.5", torch.randn(1, 4, 4, 4))
    with pytest.raises(FastDecodersError, match="calibration"):
        prune(build_decoder("taesdxl", tiny=True), 0.5)


@pytest.mark.shared
def test_independence_aware_beats_magnitude_on_held_out_photos(taesd_weights_dir, shared_dir):
    """Before any fine-tuning, on real TAESDXL weights: calibrate on 8 BSDS photos, score on 4 Kodak photos (64²).

    Measured here: teacher 23.36 dB, independence-aware + fold 18.07 dB, magnitude 12.73 dB; the full-size sweep
    is in docs/flash_vaed.md."""
    from fastdecoders.eval.metrics import psnr
    from fastdecoders.latents import to_01
    from fastdecoders.prune.calib import encode_photos, load_photos

    teacher = load_decoder("taesdxl", weights_dir=taesd_weights_dir)
    calib = encode_photos(load_photos(shared_dir / "data/images/bsds500/train", 8, 64), "sdxl", taesd_weights_dir)
    photos = load_photos(shared_dir / "data/images/kodak24", 4, 64)
    held_out = encode_photos(photos, "sdxl", taesd_weights_dir)

    def score(decoder):
        with torch.no_grad():
            return float(psnr(to_01(decoder(held_out)), photos).mean())

    independent = prune(teacher, 0.5, calib, method="independent").student
    magnitude = prune(teacher, 0.5, calib, method="magnitude", fold=False).student
    assert score(independent) > score(magnitude) + 3.0
    assert score(teacher) > score(independent)
