"""Bounded-memory decoding: exact TAE tiles, blended tiles elsewhere, video chunks, the automatic choice, OOM retry."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fastdecoders import FastDecodersError, build_decoder, get_spec, save_decoder
from fastdecoders.cli import main
from fastdecoders.models.effvit import EffViTDecoder
from fastdecoders.models.tae import TAEDecoder
from fastdecoders.tiling import LiveBytes, auto_tile, compare_tiled, decode_tiled, parse_tile, stream_decode

EXACT = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_tae() -> TAEDecoder:
    torch.manual_seed(0)
    return build_decoder("taesdxl", tiny=True).eval()


def test_receptive_field_from_the_layers():
    # TAESD layout (3, 3, 3, 1): 1 + 9 at latent size, then ceil-halving back through 3 upsamplings -> 19
    assert build_decoder("taesdxl").receptive_field == 19
    assert build_decoder("tae192-sdxl").receptive_field == 19
    assert build_decoder("taef2").receptive_field is None  # pooled GroupNorm: global statistics
    assert build_decoder("effvit-attn-sdxl").eval().receptive_field is None  # attention over all pixels
    assert build_decoder("effvit-sdxl").eval().receptive_field is not None
    assert build_decoder("effvit-sdxl").train().receptive_field is None  # batch statistics
    temporal = build_decoder("tae-temporal-svd")
    assert temporal.receptive_field == 22 and temporal.render_receptive_field == 9  # + the mid-block's ResBlock


def test_receptive_field_bounds_the_measured_extent(tiny_tae):
    """An impulse in one latent pixel changes the output only within the computed receptive field."""
    radius, f = tiny_tae.receptive_field, 8
    z = torch.randn(1, 4, 2 * radius + 9, 2 * radius + 9)
    bumped = z.clone()
    c = z.shape[-1] // 2
    bumped[..., c, c] += 3.0
    with torch.no_grad():
        changed = (tiny_tae(bumped) - tiny_tae(z)).abs().amax(dim=(0, 1)) > 0
    rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
    assert len(rows) > 0
    lo, hi = f * (c - radius), f * (c + radius + 1)  # pixels of latents c - R .. c + R
    assert lo <= int(rows.min()) and int(rows.max()) < hi and lo <= int(cols.min()) and int(cols.max()) < hi


@pytest.mark.parametrize(("tile", "overlap", "shape"), [
    (8, None, (2, 4, 19, 27)),  # default overlap = receptive field; odd sizes; batch 2
    (5, 8, (1, 4, 17, 23)),
    (11, 13, (3, 4, 31, 19)),
    (16, None, (1, 4, 16, 40)),  # one row of tiles
])  # fmt: skip
def test_tae_tiles_are_exact(tiny_tae, tile, overlap, shape):
    z = torch.randn(shape)
    result = compare_tiled(tiny_tae, z, tile=tile, overlap=overlap)
    report = result["report"]
    assert report["mode"] == "exact" and report["exact"] and report["tiles_per_image"] > 1
    assert report["pieces"] == report["tiles_per_image"]  # the whole batch goes through each tile at once
    assert result["max_abs_diff"] <= EXACT


def test_overlap_below_receptive_field_blends_and_says_so(tiny_tae):
    z = torch.randn(1, 4, 24, 24)
    result = compare_tiled(tiny_tae, z, tile=8, overlap=2)
    assert result["report"]["mode"] == "blend" and not result["report"]["exact"]
    assert "receptive field" in result["report"]["note"]
    assert result["max_abs_diff"] > EXACT


UNBOUNDED = {  # decoders with attention over all pixels
    "effvit-attn-sdxl": {},
    "effvit-attn-rms-interpolate": {"norm": "rms", "upsample": "interpolate"},
}


@pytest.mark.parametrize("name", list(UNBOUNDED))
def test_blended_tiles_for_unbounded_decoders(name):
    tiny = get_spec("effvit-attn-sdxl").tiny
    decoder = EffViTDecoder(dataclasses.replace(tiny, **UNBOUNDED[name])).eval()
    z = torch.randn(1, decoder.latent_channels, 24, 20)
    blended = compare_tiled(decoder, z, tile=8, overlap=4)
    seams = compare_tiled(decoder, z, tile=8, overlap=0)  # hard cuts, no context
    report = blended["report"]
    assert report["mode"] == "blend" and not report["exact"] and report["receptive_field"] is None
    print(f"{name}: blended tile 8 / overlap 4: max |diff| {blended['max_abs_diff']:.4f}, "
          f"mean {blended['mean_abs_diff']:.5f}; hard seams: mean {seams['mean_abs_diff']:.5f}")  # fmt: skip
    assert 0 < blended["max_abs_diff"] < 1.0  # output range is about [-1, 1]
    assert blended["mean_abs_diff"] < seams["mean_abs_diff"]  # context and cross-fading beat plain cuts


def test_taef2_global_norm_runs_whole_then_tiles_exactly():
    """TAEF2's pooled GroupNorm sees the whole map, but only at latent size: run once whole, tile the rest."""
    decoder = build_decoder("taef2", tiny=True).eval()
    assert decoder.receptive_field is None
    z = torch.randn(2, 32, 19, 13)
    result = compare_tiled(decoder, z, tile=5)
    assert result["report"]["mode"] == "exact" and result["report"]["tiles_per_image"] == 4 * 3
    assert result["max_abs_diff"] <= EXACT


def test_auto_keeps_one_call_when_it_fits(tiny_tae):
    z = torch.randn(2, 4, 12, 12)
    plan = auto_tile(tiny_tae, z, max_memory_bytes=2**40)
    assert plan.mode == "whole" and plan.tile is None and plan.batch_chunk == 2
    # the quick estimate (8x the largest layer output) is an upper bound of the measured one
    measured = auto_tile(tiny_tae, z, max_memory_bytes=1).estimated_untiled_bytes
    assert measured < plan.estimated_untiled_bytes
    images, report = decode_tiled(tiny_tae, z, max_memory_bytes=2**40)
    assert report.pieces == 1 and torch.equal(images, tiny_tae(z).detach())


def test_auto_tile_under_a_small_fake_budget(tiny_tae):
    z = torch.randn(2, 4, 40, 36)
    whole = auto_tile(tiny_tae, z, max_memory_bytes=1)  # nothing fits: the plan carries the measured estimate
    assert not whole.fits and whole.tile == 1
    budget = whole.estimated_untiled_bytes // 3  # a third of what one call needs
    images, report = decode_tiled(tiny_tae, z, max_memory_bytes=budget)
    assert report.fits and report.estimated_peak_bytes <= budget < report.estimated_untiled_bytes
    assert report.batch_chunk == 1 and report.tile is not None and report.tile < 40
    assert report.mode == "exact" and report.estimated_saved_bytes > 0
    with torch.no_grad():
        assert (images - tiny_tae(z)).abs().max() <= EXACT
    # a budget just under one call's: batch chunks only, no tiles
    plan = auto_tile(tiny_tae, z, max_memory_bytes=whole.estimated_untiled_bytes - 1)
    assert plan.batch_chunk == 1 and plan.tile is None and plan.mode == "exact"


def test_live_bytes_counts_what_is_alive():
    def work():
        a = torch.ones(1000)  # 4000 B
        b = a * 2  # + 4000 B
        del a
        return b + 1  # a freed before: still 8000 B at most

    tracker = LiveBytes()
    with tracker:
        work()
    assert tracker.peak == 8000


class OOMAbove(TAEDecoder):
    """A TAE that raises CUDA's out-of-memory error for inputs with more than ``limit`` latent pixels."""

    limit = 500

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.shape[-1] * latents.shape[-2] * latents.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(latents)


def test_out_of_memory_halves_the_piece_and_retries(tiny_tae):
    decoder = OOMAbove(tiny_tae.config).eval()
    decoder.load_state_dict(tiny_tae.state_dict())
    z = torch.randn(2, 4, 20, 30)  # 600 > 500 latent pixels per sample; tiles of 15 (20x23 with context) fit
    images, report = decode_tiled(decoder, z, max_memory_bytes=2**40)  # the estimate says one call fits
    assert report.retries == 2 and report.batch_chunk == 1 and report.tile == 15 and len(report.events) == 2
    with torch.no_grad():
        assert (images - tiny_tae(z)).abs().max() <= EXACT
    decoder.limit = 0  # nothing fits: the error comes out in the end
    with pytest.raises(torch.OutOfMemoryError):
        decode_tiled(decoder, z, max_memory_bytes=2**40)


def test_other_errors_are_not_retried(tiny_tae):
    class Broken(TAEDecoder):
        calls = 0

        def forward(self, latents):
            Broken.calls += 1
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        decode_tiled(Broken(tiny_tae.config).eval(), torch.randn(1, 4, 8, 8), tile="off")
    assert Broken.calls == 1


def test_temporal_decoder_renders_frames_in_chunks_exactly():
    decoder = build_decoder("tae-temporal-svd", tiny=True).eval()
    torch.nn.init.normal_(decoder.temporal.proj_out.weight, std=0.5)  # a mid-block that really mixes frames
    z = torch.randn(6, 4, 14, 12)  # 2 clips of 3 frames
    with torch.no_grad():
        whole = decoder(z, num_frames=3)
    tiled, report = decode_tiled(decoder, z, tile=5, num_frames=3)
    assert report.mode == "exact" and (tiled - whole).abs().max() <= EXACT
    budget = auto_tile(decoder, z, num_frames=3, max_memory_bytes=1).estimated_untiled_bytes // 2
    chunked, report = decode_tiled(decoder, z, num_frames=3, max_memory_bytes=budget)
    assert report.batch_chunk < 6 and report.estimated_peak_bytes <= budget
    assert (chunked - whole).abs().max() <= EXACT
    # the mid-block does mix frames: decoding frames one by one as their own clips would differ
    with torch.no_grad():
        alone = torch.cat([decoder(z[i : i + 1], num_frames=1) for i in range(6)])
    assert (alone - whole).abs().max() > 1e-3


def test_causal_decoder_streams_in_chunks_exactly():
    decoder = build_decoder("taew2_1", tiny=True).eval()
    z = torch.randn(1, 16, 4, 6, 5)
    with torch.no_grad():
        whole = decoder(z)
    for k in (1, 3):
        streamed = torch.cat(list(stream_decode(decoder, z, frames_per_chunk=k)), dim=2)
        assert streamed.shape == whole.shape and (streamed - whole).abs().max() <= EXACT
    tiled, report = decode_tiled(decoder, z, tile=3, frames_per_chunk=2)
    assert report.mode == "exact" and report.pieces == 2 * 2 * 2  # 2x2 tiles, 2 chunks each
    assert (tiled - whole).abs().max() <= EXACT
    measured = auto_tile(decoder, z, max_memory_bytes=1).estimated_untiled_bytes
    plan = auto_tile(decoder, z, max_memory_bytes=measured // 2)
    assert plan.frames_per_chunk is not None and plan.frames_per_chunk < 4


@pytest.mark.parametrize("tile", [0, -3, "big"])
def test_bad_tile_values(tiny_tae, tile):
    with pytest.raises(FastDecodersError, match="tile"):
        decode_tiled(tiny_tae, torch.randn(1, 4, 8, 8), tile=tile)
    with pytest.raises(FastDecodersError, match="expected"):
        parse_tile(str(tile))


def test_cli_decode_tile(capsys, tmp_path, tiny_tae):
    weights = save_decoder(tiny_tae, tmp_path / "tiny.safetensors")
    z = tmp_path / "z.safetensors"
    save_file({"latents": torch.randn(1, 4, 21, 13)}, str(z))
    results = {}
    for tile in ("off", "6", "auto"):
        code = main(["decode", str(weights), str(z), "-o", str(tmp_path / f"{tile}.png"), "--tile", tile, "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        results[tile] = json.loads(out)
    assert results["6"]["tiling"]["mode"] == "exact" and results["6"]["tiling"]["tiles_per_image"] == 4 * 3
    assert results["off"]["tiling"]["mode"] == "whole"
    from PIL import Image

    pixels = {t: torch.from_numpy(np.array(Image.open(tmp_path / f"{t}.png"))) for t in results}
    assert torch.equal(pixels["6"], pixels["off"]) and torch.equal(pixels["auto"], pixels["off"])


@pytest.mark.parametrize("argv", [["--tile", "0"], ["--tile", "huge"], ["--max-memory-mb", "-1"]])
def test_cli_decode_bad_tile_exits_2(capsys, tmp_path, tiny_tae, argv):
    weights = save_decoder(tiny_tae, tmp_path / "tiny.safetensors")
    z = tmp_path / "z.safetensors"
    save_file({"latents": torch.randn(1, 4, 8, 8)}, str(z))
    code = main(["decode", str(weights), str(z), "-o", str(tmp_path / "x.png"), *argv])
    _, err = capsys.readouterr()
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "expected" in lines[0]
    assert not (tmp_path / "x.png").exists()
