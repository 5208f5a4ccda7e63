"""``fastdecoders prune``: the JSON contract, one-line errors, students that other verbs load, the Pareto report."""

from __future__ import annotations

import json

import pytest
import torch

from fastdecoders import load_decoder, save_decoder
from fastdecoders.cli import main
from fastdecoders.io import write_latents
from fastdecoders.models import TAEConfig, TAEDecoder
from fastdecoders.prune.report import pareto, parse_methods, render_pareto, write_report

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def teacher_file(tmp_path):
    torch.manual_seed(0)
    decoder = TAEDecoder(TAEConfig(latent_channels=4, widths=(16, 16, 16, 16), blocks=(1, 1, 1, 1)))
    decoder.latent_space_name = "sdxl"
    return save_decoder(decoder, tmp_path / "teacher.safetensors")


def test_prune_json_contract_and_other_verbs_load_the_student(teacher_file, tmp_path, capsys):
    out = tmp_path / "student.safetensors"
    argv = ["prune", teacher_file, "--keep", "0.5", "-o", str(out), "--calib-count", "4", "--calib-size", "64",
            "--multiple", "4", "--json"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert {k: type(result[k]) for k in ("teacher", "student", "keep", "params", "checkpoint")} == {
        "teacher": str, "student": str, "keep": float, "params": list, "checkpoint": str,
    }  # fmt: skip
    assert result["keep"] == 0.5 and result["checkpoint"] == str(out)
    assert result["params"][1] < result["params"][0] and all(isinstance(p, int) for p in result["params"])
    student = load_decoder(out)
    assert student.config.widths == (8, 8, 8, 8) and student.latent_space_name == "sdxl"
    # the decode verb takes the student's path like any weights file
    latents = tmp_path / "z.safetensors"
    write_latents(torch.randn(1, 4, 8, 8), latents)
    png = tmp_path / "decoded.png"
    assert main(["decode", str(out), str(latents), "-o", str(png), "--json"]) == 0
    capsys.readouterr()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # and bench times it from the same path
    argv = ["bench", str(out), "--sizes", "32", "--runs", "1", "--warmup", "0", "--no-teacher", "--no-peak",
            "--plot", str(tmp_path / "bench.png"), "--json"]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[0]["decoder"] == str(out) and rows[0]["ms_median"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--keep", "1.5"], "keep ratios must lie in (0, 1]"),
        (["--keep", "0.5,0.5"], "4 stages"),
        (["--keep", "a"], "--keep takes a ratio"),
        (["--sep3d-stages", "0"], "video teacher"),
        (["--method", "independent", "--calib-latents", "missing.safetensors"], "missing.safetensors"),
    ],
)
def test_bad_input_is_exit_2_and_one_line(teacher_file, tmp_path, capsys, args, message):
    code = main(["prune", teacher_file, "-o", str(tmp_path / "s.safetensors"), "--calib-count", "2",
                 "--calib-size", "32", *args])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and message in err and "Traceback" not in err


def test_pareto_sweep_table_plot_and_json(tmp_path):
    torch.manual_seed(0)
    teacher = TAEDecoder(TAEConfig(latent_channels=4, widths=(16, 16, 16, 16), blocks=(1, 1, 1, 1))).eval()
    teacher.latent_space_name = "sdxl"
    calib, held_out = torch.randn(4, 4, 8, 8), torch.randn(2, 4, 8, 8)
    variants = parse_methods("independent,magnitude,magnitude+fold")
    assert [(v.method, v.fold) for v in variants] == [("independent", True), ("magnitude", False), ("magnitude", True)]
    result = pareto(teacher, (0.5,), variants, calib, held_out, torch.randn(1, 4, 8, 8), out_dir=tmp_path,
                    multiple=4, runs=1)  # fmt: skip
    points = result["points"]
    assert [(p["keep"], p["label"]) for p in points] == [(0.5, v.label) for v in variants]
    for p in points:
        assert p["speedup"] > 0 and p["flops_ratio"] > 1 and p["retention"] is None
        assert p["params"] < result["teacher"]["params"]
        assert load_decoder(p["checkpoint"]).config.widths == tuple(p["widths"])
    # folding can only help: least squares from the same kept channels is at least as good as dropping them
    by = {(p["keep"], p["label"]): p["psnr_vs_teacher"] for p in points}
    assert by[(0.5, "magnitude+fold")] >= by[(0.5, "magnitude")]
    table = render_pareto(result)
    assert table.count("\n") == 2 + len(points) and "independent" in table
    files = write_report(result, tmp_path / "report")
    assert json.loads(open(files["json"]).read())["points"][0]["label"] == "independent"
    assert open(files["plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
