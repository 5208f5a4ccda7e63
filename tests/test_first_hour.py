"""Issue 14, "First hour": what a new user meets in the first hour, one test (or a few) per item.

The docs themselves (every ```bash block of README.md and docs/, the quick-start and `prune taef2` included) are run
by tests/test_readme.py; this file checks the behaviour behind them. Real weights and photos come from ../shared.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from PIL import Image
from safetensors.torch import save_file

from fastdecoders.cli import VERBS, build_parser
from fastdecoders.commands import format_table
from fastdecoders.progress import progress

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def small_photos(kodak_dir, tmp_path) -> Path:
    """A landscape (192×128) and a portrait (128×192) Kodak photo, downscaled so a round trip takes a second."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, size in (("kodim01.png", (192, 128)), ("kodim04.png", (128, 192))):
        image = Image.open(kodak_dir / name).convert("RGB")
        assert (image.width > image.height) == (size[0] > size[1])  # kodim01 is landscape, kodim04 portrait
        image.resize(size, Image.LANCZOS).save(folder / name)
    return folder


@pytest.fixture
def tiny_tae_file(tmp_path) -> Path:
    """A TAE decoder at its tiny test width (8 channels), saved: prunes in a second."""
    import fastdecoders

    decoder = fastdecoders.build_decoder("taesdxl", tiny=True)
    decoder.latent_space_name = "sdxl"
    return Path(fastdecoders.save_decoder(decoder, tmp_path / "tiny_tae.safetensors"))


def latents_file(path: Path, batch: int = 1, side: int = 8) -> Path:
    save_file({"latents": torch.randn(batch, 4, side, side)}, str(path))
    return path


# -- quick-start: weights are found the way the README says ---------------------------------------------------------


def test_weights_found_through_the_environment_after_the_quick_start(taesd_weights_dir, tmp_path, capsys,
                                                                    monkeypatch):  # fmt: skip
    """The quick-start exports FASTDECODERS_WEIGHTS; a later decode with no --weights-dir finds taesdxl there."""
    monkeypatch.setenv("FASTDECODERS_WEIGHTS", str(taesd_weights_dir))
    code, out, err = run_cli(capsys, "decode", "taesdxl", latents_file(tmp_path / "z.safetensors"), "-o",
                             tmp_path / "one.png")  # fmt: skip
    assert code == 0, err
    assert Image.open(tmp_path / "one.png").size == (64, 64)


def test_missing_weights_say_where_to_put_them(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FASTDECODERS_WEIGHTS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/fastdecoders either
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(capsys, "decode", "taef2", latents_file(tmp_path / "z.safetensors"), "-o",
                           tmp_path / "x.png")  # fmt: skip
    assert code == 2 and "--weights-dir" in err and "FASTDECODERS_WEIGHTS" in err
    assert not (tmp_path / "x.png").exists()


def test_readme_quick_start_exports_the_weights_path():
    quick = (ROOT / "README.md").read_text().split("## What is here")[0]
    assert "export FASTDECODERS_WEIGHTS=" in quick and "fastdecoders decode taesdxl" in quick


# -- progress: a bar on a terminal, a periodic line elsewhere -------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal():
    stream = _Terminal()
    for _ in progress(range(3), desc="work", unit="img", file=stream):
        pass
    assert "\r" in stream.getvalue() and "3/3" in stream.getvalue()  # tqdm redraws in place


def test_progress_is_periodic_lines_elsewhere(monkeypatch):
    monkeypatch.setenv("FASTDECODERS_PROGRESS_EVERY", "0")  # a line at every update
    stream = io.StringIO()
    for _ in progress(range(3), desc="work", unit="img", file=stream):
        pass
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[-1].startswith("work: 3/3 img done") and len(lines) >= 3


def test_progress_stays_quiet_for_short_steps(monkeypatch):
    monkeypatch.delenv("FASTDECODERS_PROGRESS_EVERY", raising=False)  # 10 s: a quick loop prints nothing
    stream = io.StringIO()
    for _ in progress(range(3), desc="work", file=stream):
        pass
    assert stream.getvalue() == ""


def test_roundtrip_prune_and_bench_report_progress(small_photos, taesd_weights_dir, tiny_tae_file, tmp_path, capsys,
                                                   monkeypatch):  # fmt: skip
    """The long verbs go through the progress helper: with a 0 s period each prints its lines on stderr."""
    monkeypatch.setenv("FASTDECODERS_PROGRESS_EVERY", "0")
    code, _, err = run_cli(capsys, "roundtrip", "taesdxl", "--weights-dir", taesd_weights_dir, "--images",
                           small_photos, "-o", tmp_path / "grid.png")  # fmt: skip
    assert code == 0 and "roundtrip taesdxl: 2/2 img done" in err
    code, _, err = run_cli(capsys, "prune", tiny_tae_file, "--keep", "0.5", "--multiple", "2", "--calib-count", "2",
                           "--calib-size", "64", "-o", tmp_path / "p.safetensors")  # fmt: skip
    assert code == 0 and "calibrate: 1/1 batch done" in err and "select (independent):" in err
    code, _, err = run_cli(capsys, "bench", "taesdxl", "--tiny", "--no-teacher", "--no-peak", "--sizes", "64",
                           "--runs", "1", "--warmup", "0", "--device", "cpu", "--plot", tmp_path / "b.png")  # fmt: skip
    assert code == 0 and "bench: 1/1 cell done" in err


def test_training_latent_cache_reports_progress(shared_dir, taesd_weights_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FASTDECODERS_PROGRESS_EVERY", "0")
    monkeypatch.chdir(ROOT)
    overrides = [f"teacher.weights_dir={taesd_weights_dir}", f"data.images=[{shared_dir / 'data/images/kodak24'}]",
                 f"data.cache_dir={tmp_path / 'cache'}", "data.val_count=1", "data.max_items=3", "data.resize=64",
                 "data.crop=32", "data.val_size=64", "train.batch_size=2", "log.tensorboard=false",
                 "log.samples=0"]  # fmt: skip
    code, _, err = run_cli(capsys, "train", "configs/tiny.yaml", "-o", tmp_path / "run", "--steps", "1", "--json",
                           *[a for o in overrides for a in ("--set", o)])  # fmt: skip
    assert code == 0, err
    assert "caching latents: 4/4 file done" in err  # 3 training photos + 1 held out


# -- roundtrip grid: aspect ratio kept, labelled ---------------------------------------------------------------------


def test_roundtrip_grid_keeps_aspect_ratio_and_labels_cells(small_photos, taesd_weights_dir, tmp_path, capsys):
    code, out, err = run_cli(capsys, "roundtrip", "taesdxl", "--weights-dir", taesd_weights_dir, "--images",
                             small_photos, "-o", tmp_path / "grid.png", "--json")  # fmt: skip
    assert code == 0, err
    grid = np.asarray(Image.open(tmp_path / "grid.png").convert("L")).astype(int)
    label, height, pad = 14, 256, 4
    # landscape row: two 384×256 cells side by side (nothing cropped); portrait row: two 171×256 cells, then white
    assert grid.shape == (2 * (label + height) + pad, 2 * 384 + pad)
    portrait_row = grid[label + height + pad + label :]
    assert (portrait_row[:, 2 * 171 + pad + 2 :] == 255).all()
    assert portrait_row[:, :171].std() > 10  # the photo is there
    # each cell has a label in dark text above it; the decoded one carries the PSNR (white band otherwise)
    for row_top, cell_w in ((0, 384), (label + height + pad, 171)):
        band = grid[row_top : row_top + label]
        assert (band[:, :100] < 128).sum() > 20 and (band[:, cell_w + pad : cell_w + pad + 150] < 128).sum() > 40
    psnrs = [r["psnr"] for r in json.loads(out)["images"]]
    assert all(15 < p < 45 for p in psnrs)


# -- --help and --dtype ----------------------------------------------------------------------------------------------


def _verb_parser(verb: str) -> argparse.ArgumentParser:
    parser = build_parser(verb)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[verb]


@pytest.mark.parametrize("verb", list(VERBS))
def test_help_has_no_doubled_or_empty_defaults_and_every_option_is_explained(verb):
    parser = _verb_parser(verb)
    text = parser.format_help()
    assert "(default: None)" not in text and "(default: False)" not in text
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        assert action.help, f"{verb} {action.option_strings or action.dest} has no help text"
        assert formatter._expand_help(action).count("(default:") <= 1, f"{verb} {action.option_strings}"


@pytest.mark.parametrize("verb", ["decode", "roundtrip", "prune", "eval"])
def test_dtype_takes_both_spellings_and_shows_one(verb):
    parser = _verb_parser(verb)
    dtype = next(a for a in parser._actions if "--dtype" in a.option_strings)
    assert dtype.metavar == "{fp32,fp16,bf16}" and "(default: fp32)" in parser.format_help().replace("\n", " ")
    spellings = (("fp16", "float16"), ("float16", "float16"), ("BF16", "bfloat16"), ("fp32", "float32"))
    for spelling, torch_name in spellings:
        assert dtype.type(spelling) == torch_name and isinstance(getattr(torch, dtype.type(spelling)), torch.dtype)
    with pytest.raises(argparse.ArgumentTypeError):
        dtype.type("fp64")


def test_bench_dtype_takes_both_spellings():
    from fastdecoders.bench.speed import parse_dtype

    assert parse_dtype("float16") == parse_dtype("fp16") == "fp16"
    assert "float32" in _verb_parser("bench").format_help()


# -- decode: a short summary unless --json ---------------------------------------------------------------------------


def test_decode_prints_a_summary_and_json_only_on_request(taesd_weights_dir, tmp_path, capsys):
    z = latents_file(tmp_path / "z.safetensors", batch=2)
    code, out, err = run_cli(capsys, "decode", "taesdxl", z, "-o", tmp_path / "out", "--weights-dir",
                             taesd_weights_dir, "--tile", "4")  # fmt: skip
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2 and "{" not in out
    assert lines[0].startswith("decoded 2 images of 64×64 with taesdxl (sdxl latents)")
    assert "tiled in" in lines[1] and "exact" in lines[1]
    code, out, _ = run_cli(capsys, "decode", "taesdxl", z, "-o", tmp_path / "out2", "--weights-dir",
                           taesd_weights_dir, "--json")  # fmt: skip
    assert code == 0 and "mode" in json.loads(out)["tiling"]


def test_decode_names_a_path_decoder_by_its_file(taesd_weights_dir, tmp_path, capsys):
    weights = taesd_weights_dir / "taesdxl_decoder.safetensors"
    z = latents_file(tmp_path / "z.safetensors")
    args = ("--latents-space", "sdxl", "--backend", "eager")
    code, out, _ = run_cli(capsys, "decode", weights, z, "-o", tmp_path / "a.png", *args, "--json")
    assert code == 0 and json.loads(out)["decoder"] == str(weights)
    code, out, _ = run_cli(capsys, "decode", weights, z, "-o", tmp_path / "b.png", *args)
    assert f"with {weights} (sdxl latents)" in out and "file" not in out.split("with")[1].split("(")[0].strip()[-5:]


# -- convert --to diffusers: reloads on its own, no diffusers warning -----------------------------------------------


def test_converted_diffusers_folder_reloads_without_its_latent_space_and_without_warnings(
    taesd_weights_dir, tmp_path, capfd
):
    diffusers = pytest.importorskip("diffusers")
    folder = tmp_path / "tiny"
    code, _, err = run_cli(capfd, "convert", "taesdxl", "--to", "diffusers", "-o", folder, "--weights-dir",
                           taesd_weights_dir)  # fmt: skip
    assert code == 0, err
    config = json.loads((folder / "config.json").read_text())
    assert config["_fastdecoders_latents"] == "sdxl" and "block_out_channels" not in config
    z = latents_file(tmp_path / "z.safetensors")
    code, out, err = run_cli(capfd, "decode", folder, z, "-o", tmp_path / "d.png")  # no --latents-space
    assert code == 0, err
    assert "(sdxl latents)" in out
    capfd.readouterr()
    vae = diffusers.AutoencoderTiny.from_pretrained(folder)
    logged = capfd.readouterr().err
    assert "ignored" not in logged and "block_out_channels" not in logged
    assert list(vae.config.block_out_channels) == [64, 64, 64, 64]  # pipelines read it (vae_scale_factor)


# -- examples, prune's table, output range ---------------------------------------------------------------------------


def test_tiny_sdxl_example_is_visible_with_real_weights_and_explains_black_otherwise(taesd_weights_dir, tmp_path,
                                                                                   monkeypatch, capsys):  # fmt: skip
    pytest.importorskip("transformers")
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    import sdxl_tae192

    try:
        result = sdxl_tae192.main(["--tiny", "--decoder", "taesdxl", "--weights-dir", str(taesd_weights_dir),
                                   "-o", str(tmp_path / "real.png")])  # fmt: skip
        assert "note" not in result
        assert np.asarray(Image.open(tmp_path / "real.png")).std() > 5  # a visible picture, not a flat one
        result = sdxl_tae192.main(["--tiny", "-o", str(tmp_path / "random.png")])
        assert np.asarray(Image.open(tmp_path / "random.png")).max() == 0  # the random tiny decoder: black ...
        assert "black" in result["note"] and "--decoder taesdxl" in result["note"]  # ... and it says why
        assert "black image" in capsys.readouterr().err
    finally:
        sys.modules.pop("sdxl_tae192", None)


def test_example_with_an_unreachable_model_is_one_line(tmp_path):
    pytest.importorskip("transformers")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "sdxl_tae192.py"), "--model",
                             "stabilityai/stable-diffusion-xl-base-1.0", "-o", str(tmp_path / "x.png")],
                            capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("sdxl_tae192.py: error: could not load StableDiffusionXLPipeline")
    assert not (tmp_path / "x.png").exists()


def test_prune_summary_has_no_empty_header_row(tiny_tae_file, tmp_path, capsys):
    code, out, err = run_cli(capsys, "prune", tiny_tae_file, "--keep", "0.5", "--multiple", "2", "--calib-count",
                             "2", "--calib-size", "64", "-o", tmp_path / "p.safetensors")  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("teacher") and lines[0].split()[-1] == str(tiny_tae_file)
    assert not any(set(line.strip()) <= {"-", " "} for line in lines)
    assert format_table(["a", "b"], [[1, 2]]).splitlines()[1].startswith("-")  # titled tables keep their rule


def test_outputs_are_approximately_pm1_and_unclamped_as_documented(taesd_weights_dir, kodak_dir):
    """README: 'approximately [-1, 1], unclamped, like diffusers'. Real TAESDXL on Kodak latents overshoots a little;
    to_01 (every file writer) clamps."""
    import fastdecoders
    from fastdecoders.io import center_crop_resize, read_image
    from fastdecoders.latents import to_01, to_pm1
    from fastdecoders.weights import load_encoder

    decoder = fastdecoders.load_decoder("taesdxl", weights_dir=taesd_weights_dir)
    encoder = load_encoder("taesdxl_encoder", taesd_weights_dir)
    photos = torch.stack([center_crop_resize(read_image(kodak_dir / f"kodim{i:02d}.png"), 128) for i in (1, 3, 13)])
    with torch.no_grad():
        images = decoder.decode(encoder(to_pm1(photos))).sample
    outside = (images.abs() > 1).float().mean().item()
    assert images.abs().max() > 1.0  # not clamped ...
    assert images.abs().max() < 1.5 and outside < 0.01  # ... but approximately [-1, 1] (measured: 1.15, 0.3%)
    assert to_01(images).min() >= 0 and to_01(images).max() <= 1
    readme = (ROOT / "README.md").read_text()
    assert "approximately [-1, 1], unclamped" in readme
