"""Issue 14, bad input: each case is exit 2 with one line saying what was expected and what came, and leaves no
output behind; wrong pixels (16-bit grey, float TIFF) are read correctly or refused; sizes are checked first."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import torch
from cli_helpers import one_error_line, run_cli
from PIL import Image
from safetensors.torch import save_file

from fastdecoders import build_decoder, save_decoder
from fastdecoders.errors import FastDecodersError
from fastdecoders.io import read_image
from fastdecoders.models.tae import TAEEncoder, TAEEncoderConfig
from fastdecoders.quality import roundtrip
from fastdecoders.tiling import auto_tile

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_sdxl(tmp_path):
    return save_decoder(build_decoder("taesdxl", tiny=True), tmp_path / "tiny_sdxl.safetensors")


def latents_file(folder, tensor, name="z.safetensors"):
    path = folder / name
    save_file({"latents": tensor.contiguous()}, str(path))
    return path


def decode_fails(capsys, tmp_path, decoder, latents, *extra, out_name="out.png") -> str:
    """Run decode, which must fail: exit 2, one line (returned), and no output file or folder left."""
    out = tmp_path / out_name
    code, _, err = run_cli(capsys, "decode", decoder, latents, "-o", out, *extra)
    assert code == 2, err
    line = one_error_line(err)
    assert "Traceback" not in err and not out.exists()
    return line


# -- latents files ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0, 4, 8, 8), (1, 4, 0, 8), (1, 4, 0, 8, 8)])
def test_zero_size_latents(capsys, tmp_path, tiny_sdxl, shape):
    line = decode_fails(capsys, tmp_path, tiny_sdxl, latents_file(tmp_path, torch.zeros(shape)))
    assert f"latents of shape {shape} are empty (an axis of size 0)" in line


def test_pt_file_holding_no_tensor(capsys, tmp_path, tiny_sdxl):
    torch.save({"latents": [1, 2, 3]}, tmp_path / "list.pt")
    line = decode_fails(capsys, tmp_path, tiny_sdxl, tmp_path / "list.pt")
    assert "expected tensors, got list under key 'latents'" in line
    # eval --latents: the file is skipped with that reason; nothing else to evaluate is one line too
    folder = tmp_path / "latents"
    folder.mkdir()
    torch.save({"a": 3}, folder / "x.pt")
    code, _, err = run_cli(capsys, "eval", tiny_sdxl, "--teacher", tiny_sdxl, "--latents", folder, "-o",
                           tmp_path / "ev", "--metrics", "psnr", "--no-progress")  # fmt: skip
    assert code == 2 and "expected tensors, got int under key 'a'" in one_error_line(err)


def test_weights_channels_disagree_with_latents_space(capsys, tmp_path, tiny_sdxl):
    z16 = latents_file(tmp_path, torch.randn(1, 16, 8, 8))
    line = decode_fails(capsys, tmp_path, tiny_sdxl, z16, "--latents-space", "flux1")
    assert "decodes 4-channel latents; flux1 latents have 16 channels" in line


def test_missing_latents_file_is_called_a_latents_file(capsys, tmp_path, tiny_sdxl):
    line = decode_fails(capsys, tmp_path, tiny_sdxl, tmp_path / "nope.safetensors")
    assert f"latents file {tmp_path / 'nope.safetensors'} does not exist" in line and "weights file" not in line


class _RunsCode:
    def __reduce__(self):  # unpickling would call print: a pickle that needs code
        return (print, ("this must never run",))


def test_pickle_needing_code_is_one_line_without_bad_advice(capsys, tmp_path, tiny_sdxl):
    torch.save({"latents": _RunsCode()}, tmp_path / "evil.pt")
    line = decode_fails(capsys, tmp_path, tiny_sdxl, tmp_path / "evil.pt")
    assert "is not a readable latents file: its pickle needs code beyond tensors" in line
    assert "weights_only=False" not in line and "this must never run" not in capsys.readouterr().out
    torch.save({"w": torch.zeros(2), "x": _RunsCode()}, tmp_path / "evil_weights.pt")
    line = decode_fails(capsys, tmp_path, tmp_path / "evil_weights.pt", latents_file(tmp_path, torch.randn(1, 4, 8, 8)))
    assert "is not a readable weights file" in line and "weights_only=False" not in line


def test_permission_error_reads_as_one(capsys, tmp_path, tiny_sdxl, monkeypatch):
    z = latents_file(tmp_path, torch.randn(1, 4, 8, 8))

    def denied(path, *args, **kwargs):  # root (as these tests may run) reads anything: the OS's answer, simulated
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("fastdecoders.io.open", denied, raising=False)
    line = decode_fails(capsys, tmp_path, tiny_sdxl, z)
    assert f"cannot read latents file {z}: Permission denied" in line and "No such file" not in line


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_error_for_real(capsys, tmp_path, tiny_sdxl):
    z = latents_file(tmp_path, torch.randn(1, 4, 8, 8))
    z.chmod(0)
    assert "Permission denied" in decode_fails(capsys, tmp_path, tiny_sdxl, z)


def test_cli_never_suggests_python_arguments(capsys, tmp_path):
    line = decode_fails(capsys, tmp_path, "tae192-sdxl", latents_file(tmp_path, torch.randn(1, 4, 8, 8)))
    assert "has no released weights" in line and "pretrained" not in line


# -- numbers on the command line ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", ["0", "-5", "nan", "inf"])
def test_bad_fps(capsys, tmp_path, tiny_sdxl, fps):
    z = latents_file(tmp_path, torch.randn(1, 4, 2, 8, 8))
    line = decode_fails(capsys, tmp_path, tiny_sdxl, z, "--fps", fps, out_name="v.mp4")
    assert "--fps: expected a frame rate > 0" in line


def test_fractional_fps_is_kept(capsys, tmp_path, tiny_sdxl):
    av = pytest.importorskip("av")
    z = latents_file(tmp_path, torch.randn(1, 4, 2, 8, 8))
    code, _, err = run_cli(capsys, "decode", tiny_sdxl, z, "-o", tmp_path / "v.mp4", "--fps", "0.4")
    assert code == 0, err
    with av.open(str(tmp_path / "v.mp4")) as container:
        assert float(container.streams.video[0].average_rate) == pytest.approx(0.4)  # not silently 24


def test_nan_memory_budget(capsys, tmp_path, tiny_sdxl):
    line = decode_fails(capsys, tmp_path, tiny_sdxl, latents_file(tmp_path, torch.randn(1, 4, 8, 8)),
                        "--max-memory-mb", "nan")  # fmt: skip
    assert "--max-memory-mb: expected a positive number, got nan" in line


# -- sizes checked before loading ----------------------------------------------------------------------------------


def test_latents_header_declaring_too_much_is_refused_before_reading(capsys, tmp_path, tiny_sdxl):
    # a header declaring 1x4x2^20x2^20 float32 (16 TiB); the file itself is tiny: nothing big is allocated
    shape = [1, 4, 2**20, 2**20]
    header = json.dumps({"latents": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4 * 4 * 2**40]}}).encode()
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    line = decode_fails(capsys, tmp_path, tiny_sdxl, path)
    assert "declares 1x4x1048576x1048576 f32 (17.6 TB); only" in line and "not read" in line


def test_output_larger_than_the_budget_is_refused(capsys, tmp_path, tiny_sdxl):
    # 1x4x64x64 latents decode to 3 MB of float32 pixels: a 1 MB budget cannot hold the output, tiles or not
    z = latents_file(tmp_path, torch.randn(1, 4, 64, 64))
    # eager: a runtime backend (onnxruntime/openvino) hides its activations from the memory probe (output only)
    line = decode_fails(capsys, tmp_path, tiny_sdxl, z, "--max-memory-mb", "1", "--backend", "eager")
    assert "latents of shape (1, 4, 64, 64) decode to 3.1 MB of pixels, more than the 1.0 MB memory budget" in line
    # the same latents within a budget that holds the output but not an untiled decode: tiled, exit 0
    code, out, err = run_cli(capsys, "decode", tiny_sdxl, z, "-o", tmp_path / "ok.png", "--max-memory-mb", "8",
                             "--backend", "eager", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["tiling"]["mode"] == "exact" and (tmp_path / "ok.png").is_file()


def test_roundtrip_decodes_with_automatic_tiling(monkeypatch):
    torch.manual_seed(0)
    decoder = build_decoder("taesdxl", tiny=True).eval()
    encoder = TAEEncoder(TAEEncoderConfig(widths=(2, 2, 2, 2), blocks=(1, 1, 1, 1))).eval()
    image = torch.rand(3, 128, 128)
    with torch.no_grad():
        untiled = auto_tile(decoder, encoder(image[None] * 2 - 1), max_memory_bytes=1).estimated_untiled_bytes
    reports = []
    import fastdecoders.tiling as tiling

    real = tiling.decode_tiled

    def spy(*args, **kwargs):
        images, report = real(*args, **kwargs)
        reports.append(report)
        return images, report

    monkeypatch.setattr(tiling, "decode_tiled", spy)
    whole = roundtrip(decoder, encoder, image)
    tiled = roundtrip(decoder, encoder, image, max_memory_bytes=untiled // 2)
    assert [r.mode for r in reports] == ["whole", "exact"] and reports[1].tiles_per_image > 1
    torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=0)  # exact tiles: equal to float rounding


def test_roundtrip_refuses_a_photo_too_large_to_encode(capsys, tmp_path, taesd_weights_dir, kodak_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "kodim03.png").write_bytes((kodak_dir / "kodim03.png").read_bytes())
    code, _, err = run_cli(capsys, "roundtrip", "taesdxl", "--images", photos, "-o", tmp_path / "grid.png",
                           "--weights-dir", taesd_weights_dir, "--max-memory-mb", "1")  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and "encoding a 768x512 photo needs about" in line and "roundtrip --size N" in line
    assert not (tmp_path / "grid.png").exists()


# -- images that would give wrong pixels -----------------------------------------------------------------------


def test_16_bit_grey_png_is_read_at_its_scale(tmp_path):
    values = np.linspace(0, 65535, 32 * 48).reshape(32, 48).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    image = read_image(tmp_path / "grey16.png")
    assert image.shape == (3, 32, 48)
    expected = torch.from_numpy(values.astype(np.float32) / 65535)
    torch.testing.assert_close(image[1], expected, atol=1e-6, rtol=0)  # it used to clip to white (all 1.0)
    assert float(image.mean()) == pytest.approx(0.5, abs=1e-3)


def test_float_tiff_is_read_in_0_1_or_refused(tmp_path):
    values = np.random.default_rng(0).random((16, 16), dtype=np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "unit.tif")
    torch.testing.assert_close(read_image(tmp_path / "unit.tif")[0], torch.from_numpy(values))  # it used to be black
    Image.fromarray(values * 4, mode="F").save(tmp_path / "hdr.tif")
    with pytest.raises(FastDecodersError, match=r"hdr.tif: a float image with values in \[0.\d+, 3.\d+\]; expected"):
        read_image(tmp_path / "hdr.tif")
    Image.fromarray(np.full((8, 8), 70000, dtype=np.int32), mode="I").save(tmp_path / "int32.tif")
    with pytest.raises(FastDecodersError, match="a 32-bit integer image; expected 8- or 16-bit pixels"):
        read_image(tmp_path / "int32.tif")


def test_decompression_bomb_is_refused_by_roundtrip_and_skipped_by_eval(capsys, tmp_path, taesd_weights_dir,
                                                                        monkeypatch):  # fmt: skip
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(photos / "bomb.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(photos / "ok.png")
    # PIL refuses images over twice MAX_IMAGE_PIXELS: a 96² file stands in for a 15000² one under a lower limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    code, _, err = run_cli(capsys, "roundtrip", "taesdxl", "--images", photos, "-o", tmp_path / "grid.png",
                           "--weights-dir", taesd_weights_dir)  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and "bomb.png is too large to read safely" in line and "decompression-bomb guard" in line
    assert not (tmp_path / "grid.png").exists()
    code, out, err = run_cli(capsys, "eval", "taesdxl", "--images", photos, "-o", tmp_path / "ev", "--metrics",
                             "psnr", "--no-progress", "--weights-dir", taesd_weights_dir, "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["inputs"]["evaluated"] == 1
    assert [s["path"] for s in result["skipped"]] == [str(photos / "bomb.png")]
    assert "too large to read safely" in result["skipped"][0]["why"]
