"""Issue 14, NaN/Inf and training input: non-finite hyper-parameters and bad train configs are refused in one line
(no run folder left), a diverging run stops at the first non-finite loss keeping its last good checkpoint, non-finite
weights are never saved, and a decoder with non-finite output never yields a black PNG with exit 0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import one_error_line, run_cli
from PIL import Image
from safetensors.torch import save_file

from fastdecoders import build_decoder, save_decoder
from fastdecoders.errors import FastDecodersError
from fastdecoders.models.fileformat import METADATA_KEY
from fastdecoders.train.losses import Objective

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


def nan_weights_file(path: Path) -> Path:
    """A tiny TAESDXL-layout decoder file whose last layer is NaN, written around ``save_decoder`` (which refuses)."""
    decoder = build_decoder("taesdxl", tiny=True)
    state = {k: v.contiguous() for k, v in decoder.state_dict().items()}
    last = sorted(k for k in state if k.endswith(".weight"))[-1]
    state[last] = torch.full_like(state[last], float("nan"))
    header = {"format": 1, "arch": "tae", "config": decoder.config_dict(), "latents": "sdxl", "name": None}
    save_file(state, str(path), metadata={METADATA_KEY: json.dumps(header)})
    return path


def small_photos(folder: Path, count: int = 1) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(folder / f"p{i}.png")
    return folder


# -- non-finite weights and outputs ----------------------------------------------------------------------------------


def test_non_finite_weights_are_never_saved(tmp_path):
    decoder = build_decoder("taesdxl", tiny=True)
    with torch.no_grad():
        next(decoder.parameters())[0] = float("inf")
    with pytest.raises(FastDecodersError, match=r"refusing to save .*bad.safetensors: weight '1.weight' holds \d+ "
                                                r"non-finite values \(NaN/Inf\)"):  # fmt: skip
        save_decoder(decoder, tmp_path / "bad.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_decode_with_nan_output_writes_no_black_png(capsys, tmp_path):
    weights = nan_weights_file(tmp_path / "nan.safetensors")
    save_file({"latents": torch.randn(1, 4, 8, 8)}, str(tmp_path / "z.safetensors"))
    code, _, err = run_cli(capsys, "decode", weights, tmp_path / "z.safetensors", "-o", tmp_path / "x.png")
    line = one_error_line(err)
    assert code == 2 and "holds 12288 non-finite values (NaN/Inf)" in line and "decoder output" in line
    assert not (tmp_path / "x.png").exists()


def test_roundtrip_and_eval_flag_nan_output(capsys, tmp_path, taesd_weights_dir):
    weights = nan_weights_file(tmp_path / "nan.safetensors")
    photos = small_photos(tmp_path / "photos")
    code, _, err = run_cli(capsys, "roundtrip", weights, "--images", photos, "-o", tmp_path / "grid.png",
                           "--weights-dir", taesd_weights_dir, "--backend", "eager")  # fmt: skip
    assert code == 2 and "the decoder's output holds 12288 non-finite values" in one_error_line(err)
    assert not (tmp_path / "grid.png").exists()
    # the default --backend auto may export the decoder first: the export refuses the NaN weights, in one line
    code, _, err = run_cli(capsys, "roundtrip", weights, "--images", photos, "-o", tmp_path / "grid.png",
                           "--weights-dir", taesd_weights_dir, "--backend", "onnxruntime")  # fmt: skip
    assert code == 2 and "refusing to export tae: weight" in one_error_line(err) and "non-finite" in err
    assert not (tmp_path / "grid.png").exists()
    out = tmp_path / "ev"
    code, _, err = run_cli(capsys, "eval", weights, "--images", photos, "-o", out, "--metrics", "psnr",
                           "--no-progress", "--weights-dir", taesd_weights_dir)  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and "none of the 1 inputs could be evaluated" in line and "nan's output holds" in line
    assert not (out / "results.json").exists()  # no report of null metrics with n=0


# -- train: configs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=.nan", "train.lr: expected a finite number, got nan"),
        ("train.lr=.inf", "train.lr: expected a finite number, got inf"),
        ("loss.pixel=-.inf", "loss.pixel: expected a finite number, got -inf"),
        ("train.device=tpu9", "train.device: expected auto, cpu, cuda or cuda:N, got 'tpu9'"),
    ],
)
def test_train_refuses_bad_values_and_leaves_no_run_folder(capsys, tmp_path, monkeypatch, override, message):
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "configs/tiny.yaml", "-o", out, "--set", override, "--steps", "1")
    assert code == 2 and message in one_error_line(err)
    assert not out.exists()


def test_train_refuses_a_list_config_and_a_file_as_run_folder(capsys, tmp_path, monkeypatch):
    listed = tmp_path / "list.yaml"
    listed.write_text("- teacher\n- data\n")
    code, _, err = run_cli(capsys, "train", listed, "-o", tmp_path / "run")
    assert code == 2 and "list.yaml: expected a mapping with sections teacher, student" in one_error_line(err)
    monkeypatch.chdir(REPO)
    taken = tmp_path / "a-file"
    taken.write_text("mine")
    code, _, err = run_cli(capsys, "train", "configs/tiny.yaml", "-o", taken, "--steps", "1")
    assert code == 2 and f"-o {taken}: expected a run folder, got an existing file" in one_error_line(err)
    assert taken.read_text() == "mine" and not (tmp_path / "run").exists()


def test_resume_from_something_that_is_not_a_checkpoint(capsys, tmp_path, monkeypatch, shared_dir):
    monkeypatch.chdir(REPO)
    torch.save({"step": 3, "student": {}}, tmp_path / "partial.pt")
    code, _, err = run_cli(capsys, "train", "configs/tiny.yaml", "-o", tmp_path / "run", "--resume",
                           tmp_path / "partial.pt")  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and "partial.pt is not a fastdecoders training checkpoint" in line and "'config'" in line


# -- train: divergence -------------------------------------------------------------------------------------------


def test_non_finite_loss_stops_the_run_keeping_the_last_good_checkpoint(capsys, tmp_path, shared_dir, monkeypatch):
    config = {
        "teacher": {"encoder": "taesdxl_encoder", "weights_dir": str(shared_dir / "weights/taesd")},
        "student": {"name": "taesdxl", "tiny": True},
        "data": {"images": [str(small_photos(tmp_path / "photos", 3))], "val_count": 1, "resize": 64, "crop": 32,
                 "val_size": 32, "flips": False},
        "loss": {"pixel": 1.0},
        "train": {"steps": 6, "batch_size": 2, "lr": 1e-3, "warmup_steps": 1, "precision": "fp32", "device": "cpu"},
        "log": {"every": 2, "val_every": 3, "sample_every": 100, "checkpoint_every": 3, "tensorboard": False},
    }  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    forward = Objective.forward

    def nan_from_step_3(self, out, batch, step, *args, **kwargs):
        loss, parts = forward(self, out, batch, step, *args, **kwargs)
        return (loss * float("nan"), parts) if step >= 3 else (loss, parts)

    monkeypatch.setattr(Objective, "forward", nan_from_step_3)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", tmp_path / "c.yaml", "-o", run)
    assert code == 2, err
    # training logs to stderr as it goes; the error is the one last line, with no traceback
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and err.count("error:") == 1
    good = run / "checkpoints" / "step_0000003.pt"
    assert line.startswith("fastdecoders train: error: training diverged at step 4: the loss went non-finite")
    assert f"the last good checkpoint is {good}" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [good.name]
    assert not (run / "model.safetensors").exists()
    state = torch.load(good, weights_only=True)
    assert all(t.isfinite().all() for t in state["student"].values())
