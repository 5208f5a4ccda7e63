"""Training configs: YAML -> typed dataclasses, one clear error before any work, --set overrides, the presets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fastdecoders.cli import VERBS, main
from fastdecoders.errors import FastDecodersError
from fastdecoders.train.config import config_from_dict, load_config, resolve_paths
from fastdecoders.train.student import check_setup

REPO = Path(__file__).resolve().parents[1]
#: configs/ holds training presets; flash-vaed* are ``fastdecoders prune`` recipes with their own schema.
PRESETS = sorted(p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("flash-vaed"))


def base(images: str = ".") -> dict:
    return {
        "teacher": {"encoder": "taesdxl_encoder", "decoder": "taesdxl"},
        "student": {"name": "taesdxl", "tiny": True},
        "data": {"images": [images], "crop": 64, "resize": 128, "val_size": 64},
        "loss": {"pixel": 1.0, "distill": 1.0},
        "train": {"steps": 10},
    }


def error(values: dict) -> str:
    with pytest.raises(FastDecodersError) as info:
        cfg = config_from_dict(values)
        check_setup(resolve_paths(cfg))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_valid_config_maps_onto_typed_sections():
    cfg = config_from_dict(base())
    assert cfg.train.steps == 10 and cfg.train.lr == 1e-3 and cfg.train.betas == (0.9, 0.99)
    assert cfg.student.tiny is True and cfg.loss.distill == 1.0
    assert config_from_dict(cfg.to_dict()) == cfg  # round trip through plain data (what config.yaml holds)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda v: v["train"].update(stepz=3), r"unknown config key 'train.stepz' \(did you mean steps\?\)"),
        (lambda v: v.update(trian={}), r"unknown config key 'trian' \(did you mean train\?\)"),
        (lambda v: v["train"].update(steps="many"), r"train.steps: expected int, got str 'many'"),
        (lambda v: v["train"].update(steps=2.5), r"train.steps: expected int, got float"),
        (lambda v: v["loss"].update(pixel=[1]), r"loss.pixel: expected float, got list"),
        (lambda v: v["data"].update(images="photos"), r"data.images: expected list\[str\], got str"),
        (lambda v: v["train"].update(lr=-1.0), r"train.lr must be > 0, got -1.0"),
        (lambda v: v["loss"].update(pixel_kind="l3"), r"loss.pixel_kind must be one of l1, mse, got 'l3'"),
        (lambda v: v["teacher"].update(decoder=None), r"loss.distill > 0: expected a teacher decoder"),
        (lambda v: v.pop("teacher"), r"the teacher section is required"),
        (lambda v: v["data"].update(images=["no/such/folder"]), r"data.images: folder no/such/folder not found"),
        (lambda v: v["teacher"].update(encoder="taef2_encoder", decoder="taef2"), r"teacher/student latent mismatch"),
        (lambda v: v["student"].update(name="tae192-flux2"), r"teacher/student latent mismatch.*flux2"),
        (lambda v: v["teacher"].update(encoder="nope_encoder"), r"teacher.encoder: expected a TAE encoder"),
        (lambda v: v["data"].update(crop=60), r"multiples of 8"),
        (lambda v: v["loss"].update(feature=1.0), r"expected loss.features"),
        (lambda v: v["loss"].update(features=[{"student": "3"}]), r"loss.features\[0\]: expected \{student"),
        (lambda v: v["loss"].update(temporal=1.0), r"loss.temporal is for video students"),
    ],
)
def test_config_errors_are_one_clear_line(edit, expected):
    values = base()
    edit(values)
    assert re.search(expected, error(values)), error(values)


@pytest.mark.parametrize(
    ("phases", "expected"),
    [
        ([{"until_step": 5, "pixel": 0.0, "distill": 0.0}], r"phases\[0\]: expected a weight > 0 for at least one"),
        ([{"until_step": 5, "pixl": 1.0}], r"unknown config key 'loss.phases\[0\].pixl' \(did you mean pixel\?\)"),
        ([{"until_step": 5}, {"until_step": 3}], r"phases\[1\]: expected until_step > start step 5, got 3"),
        ([{"until_step": 5}, {"start_step": 2}], r"phases\[1\]: expected to start at or after step 5, got start 2"),
        ([{"name": "a"}, {"name": "b"}], r"phases\[0\]: expected until_step \(or start_step in phases\[1\]\)"),
        ([{"until_step": -1}], r"phases\[0\].until_step: expected an int >= 0, got -1"),
        ([{"until_step": 5, "pixel": "x"}], r"phases\[0\].pixel: expected a weight >= 0, got 'x'"),
        ([{"until_step": 5, "feature": 1.0}], r"expected loss.features"),
    ],
)
def test_phase_errors(phases, expected):
    values = base()
    values["loss"]["phases"] = phases
    assert re.search(expected, error(values)), error(values)


def test_phases_turn_terms_on_for_setup_even_when_the_top_level_weight_is_zero():
    values = base()
    values["loss"] = {"pixel": 1.0, "features": [{"student": "3", "teacher": "5"}],
                      "phases": [{"until_step": 4, "pixel": 0.0, "feature": 1.0}, {"distill": 1.0}]}  # fmt: skip
    cfg = config_from_dict(values)
    assert cfg.loss.uses("feature") and cfg.loss.uses("distill") and not cfg.loss.uses("perceptual")
    assert cfg.loss.weights_at(3)["feature"] == 1.0 and cfg.loss.weights_at(4) == {**cfg.loss.base_weights(),
                                                                                   "distill": 1.0}  # fmt: skip
    assert cfg.loss.spans()[1][1] == float("inf")
    values["teacher"]["decoder"] = None  # distill/feature in a phase need the teacher decoder as well
    values["loss"]["phases"] = [{"until_step": 4, "pixel": 0.0, "feature": 1.0}]
    with pytest.raises(FastDecodersError, match=r"loss.feature > 0: expected a teacher decoder"):
        config_from_dict(values)


def test_set_overrides_are_typed_and_checked(tmp_path):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()))
    cfg = load_config(path, ["train.steps=7", "train.lr=1e-4", "data.flips=false", "train.betas=[0.8, 0.9]",
                             "loss.phases=[{until_step: 3, distill: 0}]"])  # fmt: skip
    assert (cfg.train.steps, cfg.train.lr, cfg.data.flips, cfg.train.betas) == (7, 1e-4, False, (0.8, 0.9))
    assert cfg.loss.weights_at(0)["distill"] == 0 and cfg.loss.weights_at(3)["distill"] == 1
    for override, message in [("train.steps", "KEY=VALUE"), ("steps=3", "SECTION.FIELD"),
                              ("train.stepz=3", "did you mean steps"), ("train.steps=x", "expected int")]:  # fmt: skip
        with pytest.raises(FastDecodersError, match=message):
            load_config(path, [override])
    with pytest.raises(FastDecodersError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed")
    with pytest.raises(FastDecodersError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_cli_reports_a_config_error_as_one_line_and_exit_2(tmp_path, capsys):
    assert VERBS["train"][0] == "fastdecoders.commands.train_cmd"
    values = base(str(tmp_path / "missing"))
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(values))
    code = main(["train", str(tmp_path / "c.yaml"), "-o", str(tmp_path / "out"), "--json"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "data.images: folder" in err
    assert not (tmp_path / "out").exists()  # nothing was started


def test_student_null_needs_init_and_offline_hub_vae_is_one_line(monkeypatch, tmp_path):
    values = base()
    values["student"] = {"name": None}
    with pytest.raises(FastDecodersError, match="student: expected a registered name or an init file"):
        config_from_dict(values)
    import torch

    from fastdecoders.train.config import TeacherConfig
    from fastdecoders.train.teachers import load_teacher

    with pytest.raises(FastDecodersError, match=r"teacher.vae: expected a diffusers VAE folder or a hub id, got .*"
                       r"missing-folder' \(no such folder\)"):  # fmt: skip
        load_teacher(TeacherConfig(vae=str(tmp_path / "missing-folder"), latents="sdxl"), torch.device("cpu"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here: the hub answers at once instead of retrying
    huggingface_hub = pytest.importorskip("huggingface_hub")
    pytest.importorskip("diffusers")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FastDecodersError) as info:
        load_teacher(TeacherConfig(vae="someone/no-such-vae", latents="sdxl"), torch.device("cpu"))
    assert "\n" not in str(info.value)
    assert "teacher.vae: expected a loadable AutoencoderKL (local folder or reachable hub id)" in str(info.value)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_validates(preset, shared_dir, monkeypatch):
    """Validation only (no weights loaded, no training): every preset keeps matching the code and the data."""
    monkeypatch.chdir(REPO)
    cfg = resolve_paths(load_config(preset))
    space, kind = check_setup(cfg)
    assert space.name in ("sdxl", "flux2", "svd") and kind in ("image", "frames")
    assert cfg.teacher.decoder is not None  # every preset distils from a real teacher decoder


def test_video_vae_wrapper_students_are_clip_students():
    """A diffusers video-VAE wrapper (e.g. a pruned Wan decoder) sets its NCTHW layout per instance, not per class:
    the setup check builds the student (on the meta device) to see it."""
    pytest.importorskip("diffusers")
    values = base()
    values["teacher"] = {"vae": "someone/wan-vae", "latents": "wan2.1", "decoder": None}
    values["student"] = {"name": "wan2.1-vae", "tiny": True}
    values["loss"] = {"pixel": 1.0}
    assert "decodes video; data.videos is empty" in error(values)
