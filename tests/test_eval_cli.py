"""``fastdecoders eval`` through the CLI: the JSON document, the human table, and exit 2 with one line on bad input."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import one_error_line, run_cli

from fastdecoders import build_decoder, save_decoder
from fastdecoders.io import write_image, write_latents


@pytest.fixture
def tiny_files(tmp_path):
    torch.manual_seed(0)
    teacher = save_decoder(build_decoder("taesdxl", tiny=True), tmp_path / "teacher.safetensors")
    student = save_decoder(build_decoder("taesdxl", tiny=True), tmp_path / "student.safetensors")
    return teacher, student


def test_latents_json_document(capsys, tmp_path, tiny_files):
    teacher, student = tiny_files
    write_latents(torch.randn(3, 4, 4, 4), tmp_path / "z" / "batch.safetensors")
    code, out, err = run_cli(capsys, "eval", student, "--latents", tmp_path / "z", "--teacher", teacher, "-o",
                             tmp_path / "out", "--metrics", "psnr,ssim", "--json")  # fmt: skip
    assert code == 0, err
    assert "eval: 100%" in err and "3/3" in err  # the progress bar goes to stderr; stdout is only the JSON
    result = json.loads(out)
    assert set(result) >= {"decoders", "report", "skipped", "notes", "inputs", "metrics"}
    s = result["decoders"]["student"]
    assert set(s) >= {"psnr", "ssim", "fid", "vs_teacher", "ms_per_image", "params"}
    assert s["psnr"] is None and s["fid"] is None  # no originals to compare against
    assert set(s["vs_teacher"]["psnr"]) == {"mean", "ci95", "n"} and s["vs_teacher"]["psnr"]["n"] == 3
    assert isinstance(s["ms_per_image"], float) and isinstance(s["params"], int)
    assert result["skipped"] == [] and (tmp_path / "out" / "report.html").is_file()


def test_human_table(capsys, tmp_path, tiny_files):
    teacher, student = tiny_files
    write_latents(torch.randn(2, 4, 4, 4), tmp_path / "z" / "a.safetensors")
    code, out, _ = run_cli(capsys, "eval", student, "--latents", tmp_path / "z", "--teacher", teacher, "-o",
                           tmp_path / "out", "--metrics", "psnr", "--no-progress")  # fmt: skip
    assert code == 0
    assert "against the teacher (teacher):" in out and "PSNR dB" in out and "report:" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--metrics", "psnr,sharpness"], "unknown metrics ['sharpness']"),
        (["--metrics", "lpips_vgg"], "vgg16-397923af.pth"),
        (["--metrics", "flicker"], "flicker and fvd are video metrics"),
        (["--size", "30"], "--size must be a positive multiple of 8"),
    ],
)
def test_bad_options_exit_2_with_one_line(capsys, tmp_path, monkeypatch, tiny_files, extra, message):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("FASTDECODERS_LPIPS", raising=False)
    write_image(torch.rand(3, 32, 32), tmp_path / "in" / "a.png")
    code, out, err = run_cli(capsys, "eval", tiny_files[1], "--images", tmp_path / "in", "-o", tmp_path / "out",
                             "--no-progress", *extra)  # fmt: skip
    assert code == 2 and out == ""
    assert message in one_error_line(err)


def test_empty_folder_and_missing_teacher_exit_2(capsys, tmp_path, tiny_files):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "eval", tiny_files[1], "--images", tmp_path / "empty", "-o", tmp_path / "out")
    assert code == 2 and "holds no images" in one_error_line(err)
    code, _, err = run_cli(capsys, "eval", tiny_files[1], "--latents", tmp_path / "empty", "-o", tmp_path / "out")
    assert code == 2 and "name a --teacher" in one_error_line(err)
    assert not (tmp_path / "out" / "report.md").exists()


@pytest.mark.shared
def test_images_with_the_real_encoder(capsys, tmp_path, kodak_dir, taesd_weights_dir, tiny_files):
    code, out, err = run_cli(capsys, "eval", tiny_files[1], "--images", kodak_dir, "--limit", 2, "--size", 64,
                             "--metrics", "psnr,ssim,ms_ssim", "--weights-dir", taesd_weights_dir, "-o",
                             tmp_path / "out", "--no-progress", "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    d = result["decoders"]["student"]
    assert d["psnr"]["n"] == 2 and d["ms_ssim"]["n"] == 0  # 64² is too small for MS-SSIM: left out, with a note
    assert any("ms_ssim needs both sides >= 176" in n for n in result["notes"])
    assert (tmp_path / "out" / "cache" / "latents").is_dir()
