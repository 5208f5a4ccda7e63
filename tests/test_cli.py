"""The core CLI verbs, end to end, and their answers to bad input: exit 2, one line, no partial output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from cli_helpers import one_error_line, run_cli
from safetensors.torch import save_file

from fastdecoders import build_decoder, save_decoder


@pytest.fixture
def tiny_sdxl(tmp_path):
    return save_decoder(build_decoder("taesdxl", tiny=True), tmp_path / "tiny_sdxl.safetensors")


def latents_file(tmp_path, tensor: torch.Tensor, name: str = "z.safetensors"):
    path = tmp_path / name
    save_file({"latents": tensor.contiguous()}, str(path))
    return path


def test_list_json(capsys):
    code, out, _ = run_cli(capsys, "list", "--json")
    result = json.loads(out)
    assert code == 0
    names = {d["name"] for d in result["decoders"]}
    assert {"taesd", "taesdxl", "taesd3", "taef1", "taef2", "tae192-sdxl"} <= names
    assert {s["name"] for s in result["latent_spaces"]} >= {"sdxl", "wan2.1", "ltx-video", "sana"}


def test_decode_images(capsys, tmp_path, tiny_sdxl):
    z = latents_file(tmp_path, torch.randn(2, 4, 4, 6))
    code, out, _ = run_cli(capsys, "decode", tiny_sdxl, z, "-o", tmp_path / "out", "--json")
    assert code == 0
    result = json.loads(out)
    assert len(result["outputs"]) == 2 and result["shape"] == [3, 32, 48]
    from PIL import Image

    assert Image.open(result["outputs"][0]).size == (48, 32)


def test_decode_video_frame_wise(capsys, tmp_path):
    pytest.importorskip("av")
    decoder = save_decoder(build_decoder("taesd", tiny=True), tmp_path / "tiny_sd1.safetensors")
    z = latents_file(tmp_path, torch.randn(1, 5, 4, 4, 4))  # SVD latents: (B, T, C, h, w)
    code, out, err = run_cli(capsys, "decode", decoder, z, "-o", tmp_path / "clip.mp4", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["frames"] == 5 and (tmp_path / "clip.mp4").stat().st_size > 0
    from fastdecoders.io import read_video

    frames, _ = read_video(tmp_path / "clip.mp4")
    assert frames.shape == (5, 3, 32, 32)


def test_decode_video_with_causal_decoder(capsys, tmp_path):
    pytest.importorskip("av")
    decoder = save_decoder(build_decoder("taew2_1", tiny=True), tmp_path / "tiny_wan.safetensors")
    z = latents_file(tmp_path, torch.randn(1, 16, 3, 4, 4))  # Wan latents: (B, C, t, h, w)
    code, out, err = run_cli(capsys, "decode", decoder, z, "-o", tmp_path / "wan.mp4", "--json")
    assert code == 0, err
    assert json.loads(out)["frames"] == 1 + 4 * (3 - 1)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (torch.randn(1, 16, 4, 4), "sdxl latents have 4 channels"),
        (torch.randn(4, 4, 4), "4-d"),
        (torch.zeros(1, 4, 4, 4, dtype=torch.int32), "floating-point"),
        (torch.full((1, 4, 4, 4), float("nan")), "NaN or Inf"),
        (torch.full((1, 4, 4, 4), float("inf")), "NaN or Inf"),
    ],
)
def test_decode_bad_latents(capsys, tmp_path, tiny_sdxl, tensor, message):
    z = latents_file(tmp_path, tensor)
    out_file = tmp_path / "x.png"
    code, out, err = run_cli(capsys, "decode", tiny_sdxl, z, "-o", out_file)
    assert code == 2 and message in one_error_line(err)
    assert not out_file.exists() and not list(tmp_path.glob(".x.png*"))


def test_decode_unknown_decoder_and_missing_weights(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTDECODERS_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    z = latents_file(tmp_path, torch.randn(1, 4, 4, 4))
    code, _, err = run_cli(capsys, "decode", "tae-sdxl", z, "-o", tmp_path / "x.png")
    assert code == 2 and "did you mean" in one_error_line(err)
    code, _, err = run_cli(capsys, "decode", "taesdxl", z, "-o", tmp_path / "x.png", "--weights-dir", tmp_path / "w")
    line = one_error_line(err)
    assert code == 2 and "taesdxl_decoder" in line and str(tmp_path / "w") in line
    code, _, err = run_cli(capsys, "decode", "taesdxl", tmp_path / "missing.safetensors", "-o", tmp_path / "x.png")
    assert code == 2 and "does not exist" in one_error_line(err)


def test_roundtrip_real_weights(capsys, tmp_path, taesd_weights_dir, kodak_dir):
    images = tmp_path / "photos"
    images.mkdir()
    for name in ("kodim03.png", "kodim15.png"):
        (images / name).write_bytes((kodak_dir / name).read_bytes())
    grid = tmp_path / "grid.png"
    code, out, err = run_cli(capsys, "roundtrip", "taesdxl", "--images", images, "-o", grid, "--size", "256",
                             "--weights-dir", taesd_weights_dir, "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["grid"] == str(grid) and grid.is_file()
    assert len(result["images"]) == 2
    assert 24 < result["mean"]["psnr"] < 40 and 0.6 < result["mean"]["ssim"] <= 1


def test_roundtrip_sample_photos_need_no_folder(capsys, tmp_path, taesd_weights_dir):
    pytest.importorskip("skimage")
    code, out, err = run_cli(capsys, "roundtrip", "taef2", "-o", tmp_path / "g.png", "--size", "128", "--limit",
                             "1", "--weights-dir", taesd_weights_dir, "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["mean"]["psnr"] > 20


def test_roundtrip_bad_input(capsys, tmp_path, taesd_weights_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    grid = tmp_path / "g.png"
    code, _, err = run_cli(capsys, "roundtrip", "taesd", "--images", empty, "-o", grid, "--weights-dir",
                           taesd_weights_dir)  # fmt: skip
    assert code == 2 and "holds no images" in one_error_line(err)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    code, _, err = run_cli(capsys, "roundtrip", "taesd", "--images", corrupt, "-o", grid, "--weights-dir",
                           taesd_weights_dir)  # fmt: skip
    assert code == 2 and "broken.png is not a readable image" in one_error_line(err)
    code, _, err = run_cli(capsys, "roundtrip", "taesd", "--images", corrupt, "-o", grid, "--size", "100",
                           "--weights-dir", taesd_weights_dir)  # fmt: skip
    assert code == 2 and "multiple of 8, got 100" in one_error_line(err)
    assert not grid.exists()


def test_convert_to_diffusers_and_back(capsys, tmp_path, tiny_sdxl):
    code, out, _ = run_cli(capsys, "convert", tiny_sdxl, "--to", "diffusers", "-o", tmp_path / "d", "--json")
    assert code == 0 and (tmp_path / "d" / "config.json").is_file()
    code, out, _ = run_cli(
        capsys, "convert", tmp_path / "d", "--latents-space", "sdxl", "-o", tmp_path / "m.safetensors"
    )
    assert code == 0 and (tmp_path / "m.safetensors").is_file()


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "fastdecoders", "list", "--json"], capture_output=True, text=True)
    assert result.returncode == 0 and json.loads(result.stdout)["decoders"]
    result = subprocess.run([sys.executable, "-m", "fastdecoders", "decode"], capture_output=True, text=True)
    assert result.returncode == 2 and "required" in result.stderr
