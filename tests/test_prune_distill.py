"""Three-phase distillation of pruned decoders: recipes parse and validate, the feature-alignment phase lowers its
loss, the pruned student is registered for the trainer, and the tiny recipe runs end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastdecoders import load_decoder
from fastdecoders.errors import FastDecodersError
from fastdecoders.models import TAEConfig, TAEDecoder
from fastdecoders.prune import prune
from fastdecoders.prune.distill import (
    align_features,
    load_recipe,
    parse_recipe,
    phase_steps,
    run_recipe,
)
from fastdecoders.prune.ops import feature_points

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("flash-vaed*.yaml")), ids=lambda p: p.stem)
def test_presets_parse_into_three_phases(path):
    recipe = load_recipe(path)
    phases = recipe.phases or recipe.train_sections["loss"]["phases"]
    assert len(phases) == 3
    weights = [p.loss if hasattr(p, "loss") else p for p in phases]
    assert weights[0].get("feature", 0) > 0 and weights[2].get("adversarial", 0) > 0
    assert weights[1].get("feature", 0) == 0 and weights[1].get("adversarial", 0) == 0


def test_bad_recipes_are_one_clear_error():
    base = {"teacher": {"encoder": "taesdxl_encoder", "decoder": "taesdxl"}, "data": {"images": ["x"]}}
    with pytest.raises(FastDecodersError, match="prune section"):
        parse_recipe({**base, "phases": [{"steps": 1, "loss": {"pixel": 1.0}}]})
    with pytest.raises(FastDecodersError, match="schedule"):
        parse_recipe({**base, "prune": {"keep": 0.5}})
    with pytest.raises(FastDecodersError, match="prune keys"):
        parse_recipe({**base, "prune": {"keep": 0.5, "kep": 1}, "phases": [{"steps": 1, "loss": {"pixel": 1.0}}]})
    with pytest.raises(FastDecodersError, match="loss.pixle"):  # every trainer phase is validated up front
        parse_recipe({**base, "prune": {"keep": 0.5}, "phases": [{"steps": 1, "loss": {"pixle": 1.0}}]})
    recipe = parse_recipe({**base, "prune": {"keep": 0.5}, "phases": [{"steps": 3, "loss": {"pixel": 1.0}}] * 2})
    with pytest.raises(FastDecodersError, match="2 positive"):
        phase_steps("1,2,3", recipe)
    phase_steps("4", recipe)
    assert [p.steps for p in recipe.phases] == [4, 4]


def test_feature_alignment_lowers_its_loss():
    torch.manual_seed(0)
    teacher = TAEDecoder(TAEConfig(latent_channels=4, widths=(16, 16, 16), blocks=(1, 1, 1))).eval()
    teacher.latent_space_name = "sdxl"
    latents = torch.randn(8, 4, 6, 6)
    student = prune(teacher, 0.5, latents, method="magnitude", fold=False, multiple=4).student
    assert feature_points(teacher) == ["3", "6"]  # the last ResBlock of stages 0 and 1 (not the upsamplers)
    info = align_features(teacher, student, latents, steps=30, feature=1.0, distill=0.5, lr=3e-3, batch_size=8)
    assert info["loss_last"] < 0.9 * info["loss_first"]  # measured: 0.355 -> 0.286 (seeded)
    assert not student.training and all(p.requires_grad for p in student.parameters())


@pytest.mark.shared
def test_tiny_recipe_runs_three_phases(taesd_weights_dir, shared_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)  # the recipe's paths are relative to the repository root
    recipe = load_recipe(CONFIGS / "flash-vaed-tiny.yaml")
    recipe.prune.update(calib_count=2, calib_size=32)
    recipe.train_sections["data"].update(max_items=3, val_count=1, flips=False)
    recipe.train_sections["train"]["batch_size"] = 2
    phase_steps("1,1,1", recipe)
    result = run_recipe(recipe, tmp_path / "run", weights_dir=str(taesd_weights_dir))
    assert [p["name"] for p in result["phases"]] == ["align", "output", "adversarial"]
    assert result["train"]["steps"] == 3
    final = load_decoder(result["checkpoint"])
    pruned = load_decoder(result["pruned"])
    assert final.config == pruned.config and final.config.widths == (16, 16, 16, 16)
    changed = [
        not torch.equal(a, b) for a, b in zip(final.state_dict().values(), pruned.state_dict().values(), strict=True)
    ]
    assert any(changed)  # the phases trained the pruned weights


@pytest.mark.shared
def test_phase_list_runs_local_alignment_then_the_trainer(taesd_weights_dir, shared_dir, tmp_path, monkeypatch):
    """The Wan/LTX-style schedule: a top-level ``phases`` list; phase 1 (feature, no ``features``) is run by the
    driver on the calibration latents, the next phase by the trainer from phase 1's model."""
    monkeypatch.chdir(CONFIGS.parent)
    values = load_recipe(CONFIGS / "flash-vaed-tiny.yaml").train_sections
    values["loss"] = {"pixel": 1.0, "distill": 1.0}
    values["data"].update(max_items=3, val_count=1, flips=False)
    values["train"]["batch_size"] = 2
    recipe = parse_recipe({
        **values, "prune": {"keep": 0.25, "calib": "../shared/data/images/bsds500/train", "calib_count": 2,
                            "calib_size": 32},
        "phases": [{"name": "align", "steps": 2, "loss": {"feature": 1.0, "distill": 0.5}},
                   {"name": "output", "steps": 1, "loss": {"pixel": 1.0, "distill": 1.0}}],
    })  # fmt: skip
    result = run_recipe(recipe, tmp_path / "run", weights_dir=str(taesd_weights_dir))
    kinds = [(p["name"], p["kind"]) for p in result["phases"]]
    assert kinds == [("align", "align"), ("output", "train")]
    assert result["phases"][0]["steps"] == 2 and result["phases"][1]["steps"] == 1
    assert load_decoder(result["checkpoint"]).config.widths == (16, 16, 16, 16)
