"""Issue 14, data loss and outputs: nothing the user did not ask to delete is deleted, outputs get the umask's mode,
bad output paths and unwritable folders are exit 2 with one line, and two evals never share an output folder."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from cli_helpers import one_error_line, run_cli
from safetensors.torch import save_file

from fastdecoders import build_decoder, save_decoder
from fastdecoders.errors import FastDecodersError
from fastdecoders.io import LOCK_NAME, atomic_dir, locked_folder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_sdxl(tmp_path):
    return save_decoder(build_decoder("taesdxl", tiny=True), tmp_path / "tiny_sdxl.safetensors")


@pytest.fixture
def latents(tmp_path):
    path = tmp_path / "z.safetensors"
    save_file({"latents": torch.randn(1, 4, 8, 8)}, str(path))
    return path


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- convert --to diffusers never deletes ----------------------------------------------------------------------------


def test_convert_refuses_a_non_empty_folder_and_keeps_its_files(capsys, tmp_path, tiny_sdxl):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    code, _, err = run_cli(capsys, "convert", tiny_sdxl, "--to", "diffusers", "-o", target)
    assert code == 2 and "exists and is not empty; pass --overwrite" in one_error_line(err)
    assert listing(target) == ["precious.txt"] and (target / "precious.txt").read_text() == "keep me"
    assert listing(tmp_path) == ["mine", "tiny_sdxl.safetensors"]  # no temp folder left beside it


def test_convert_never_replaces_the_current_folder(capsys, tmp_path, tiny_sdxl, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("x")
    monkeypatch.chdir(work)
    for extra in ([], ["--overwrite"]):  # not even when asked to overwrite: "-o ." would empty the working folder
        code, _, err = run_cli(capsys, "convert", tiny_sdxl, "--to", "diffusers", "-o", ".", *extra)
        assert code == 2, err
    assert "current folder" in one_error_line(err)
    assert listing(work) == ["notes.txt"]


def test_convert_overwrite_swaps_in_a_complete_folder(capsys, tmp_path, tiny_sdxl):
    target = tmp_path / "d"
    target.mkdir()
    (target / "old.txt").write_text("old")
    code, _, err = run_cli(capsys, "convert", tiny_sdxl, "--to", "diffusers", "-o", target, "--overwrite")
    assert code == 0, err
    assert "old.txt" not in listing(target) and (target / "config.json").is_file()
    assert listing(tmp_path) == ["d", "tiny_sdxl.safetensors"]
    # an empty existing folder needs no --overwrite
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(capsys, "convert", tiny_sdxl, "--to", "diffusers", "-o", empty)[0] == 0
    assert (empty / "config.json").is_file()


def test_atomic_dir_failure_keeps_the_old_folder(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a.txt").write_text("a")
    with pytest.raises(RuntimeError), atomic_dir(target, overwrite=True) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("writer crashed")
    assert listing(target) == ["a.txt"] and listing(tmp_path) == ["out"]


# -- permissions of outputs ---------------------------------------------------------------------------------------


def test_outputs_get_the_umask_mode(capsys, tmp_path, tiny_sdxl, latents, umask_022):
    png = tmp_path / "x.png"
    assert run_cli(capsys, "decode", tiny_sdxl, latents, "-o", png)[0] == 0
    assert stat.S_IMODE(png.stat().st_mode) == 0o644  # 0666 & ~022, not mkstemp's 0600
    folder = tmp_path / "diffusers"
    assert run_cli(capsys, "convert", tiny_sdxl, "--to", "diffusers", "-o", folder)[0] == 0
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755  # 0777 & ~022, not mkdtemp's 0700
    assert stat.S_IMODE((folder / "config.json").stat().st_mode) == 0o644
    os.umask(0o077)
    private = tmp_path / "private.png"
    assert run_cli(capsys, "decode", tiny_sdxl, latents, "-o", private)[0] == 0
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    png.chmod(0o664)  # a file that is replaced keeps the mode it had
    assert run_cli(capsys, "decode", tiny_sdxl, latents, "-o", png)[0] == 0
    assert stat.S_IMODE(png.stat().st_mode) == 0o664


# -- bad output paths -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("folder", "got an existing folder"),
        ("grid", "got no suffix"),
        ("grid.xyz", "got suffix '.xyz'"),
        ("grid.mp4", "got suffix '.mp4'"),
    ],
)
def test_roundtrip_bad_output_names_fail_before_any_work(capsys, tmp_path, name, message):
    (tmp_path / "folder").mkdir()
    # the name is checked first: no weights are even needed to get the error
    code, _, err = run_cli(capsys, "roundtrip", "taesdxl", "-o", tmp_path / name, "--weights-dir", tmp_path)
    line = one_error_line(err)
    assert code == 2 and message in line and "expected a file name" in line and "for the grid image" in line
    assert listing(tmp_path) == ["folder"]


def test_decode_bad_output_names(capsys, tmp_path, tiny_sdxl, latents):
    for name, message in [("x.xyz", "suffix '.xyz'"), ("x.mp4", "suffix '.mp4'")]:
        code, _, err = run_cli(capsys, "decode", tiny_sdxl, latents, "-o", tmp_path / name)
        assert code == 2 and message in one_error_line(err) and "for decoded image latents" in err
    video = tmp_path / "v.safetensors"
    save_file({"latents": torch.randn(1, 4, 2, 8, 8)}, str(video))
    code, _, err = run_cli(capsys, "decode", tiny_sdxl, video, "-o", tmp_path / "v.png")
    assert code == 2 and "ending in .mp4 for video latents" in one_error_line(err)
    assert not list(tmp_path.glob("x.*")) and not (tmp_path / "v.png").exists()


def test_unwritable_output_is_one_line(capsys, tmp_path, tiny_sdxl, latents, monkeypatch):
    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    code, _, err = run_cli(capsys, "decode", tiny_sdxl, latents, "-o", blocked / "x.png")  # parent is a file
    assert code == 2 and one_error_line(err).startswith(f"fastdecoders decode: error: cannot write {blocked}")

    # a read-only folder: chmod does not stop root (these tests may run as root), so the OS's answer is simulated
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr("tempfile.mkstemp", denied)
    code, _, err = run_cli(capsys, "decode", tiny_sdxl, latents, "-o", tmp_path / "ro" / "x.png")
    line = one_error_line(err)
    assert code == 2 and "cannot write" in line and "Permission denied" in line and "No such file" not in line


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder_for_real(capsys, tmp_path, tiny_sdxl, latents):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = run_cli(capsys, "decode", tiny_sdxl, latents, "-o", ro / "x.png")
        assert code == 2 and "Permission denied" in one_error_line(err)
        assert listing(ro) == []
    finally:
        ro.chmod(0o755)


# -- two evals on one output folder ------------------------------------------------------------------------------


def test_second_eval_on_the_same_output_is_refused(capsys, tmp_path, tiny_sdxl):
    latents_dir = tmp_path / "latents"
    latents_dir.mkdir()
    save_file({"latents": torch.randn(1, 4, 8, 8)}, str(latents_dir / "a.safetensors"))
    out = tmp_path / "eval"
    argv = ["eval", tiny_sdxl, "--teacher", tiny_sdxl, "--latents", latents_dir, "-o", out, "--metrics", "psnr",
            "--no-progress", "--grids", "0"]  # fmt: skip
    with locked_folder(out, "eval"):  # another eval is writing there (flock: a second open conflicts, same process)
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and f"{out} is being written by another eval (pid {os.getpid()})" in one_error_line(err)
        assert listing(out) == [LOCK_NAME]
    code, _, err = run_cli(capsys, *argv)  # once it is done, the folder is free again
    assert code == 0, err
    assert (out / "results.json").is_file()


def test_lock_leaves_nothing_when_nothing_was_written(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(FastDecodersError, match="boom"), locked_folder(out, "eval"):
        raise FastDecodersError("boom")
    assert not out.exists()


def test_any_file_system_refusal_is_one_line(capsys, tmp_path, latents, monkeypatch):
    # e.g. a weights folder this user may not enter: pathlib raises PermissionError from deep inside a check
    def denied(stem, weights_dir=None):
        raise PermissionError(13, "Permission denied", f"/locked/{stem}.safetensors")

    monkeypatch.setattr("fastdecoders.weights.find_weights", denied)
    code, _, err = run_cli(capsys, "decode", "taesdxl", latents, "-o", tmp_path / "x.png")
    line = one_error_line(err)
    assert code == 2 and line == "fastdecoders decode: error: Permission denied: /locked/taesdxl_decoder.safetensors"
