"""fastdecoders.config, the one typed-config module: the checks every verb's config gets (train's are in
tests/test_train_config.py), here on a small config, on EvalConfig and on prune recipes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from fastdecoders.config import apply_overrides, from_dict, read_yaml, to_dict
from fastdecoders.errors import FastDecodersError
from fastdecoders.eval.evaluate import EvalConfig
from fastdecoders.prune.distill import parse_recipe


@dataclass
class Inner:
    size: int = 8
    ratios: tuple[float, ...] = (0.5,)


@dataclass
class Flat:
    name: str
    inner: Inner = field(default_factory=Inner)
    scale: float | None = None


def one_line(call) -> str:
    with pytest.raises(FastDecodersError) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_nested_dataclasses_typed_and_round_trip():
    cfg = from_dict(Flat, {"name": "a", "inner": {"size": 4, "ratios": [1, 0.25]}, "scale": 2}, "")
    assert cfg == Flat("a", Inner(4, (1.0, 0.25)), 2.0)
    assert from_dict(Flat, to_dict(cfg), "") == cfg
    assert one_line(lambda: from_dict(Flat, {"name": "a", "inner": {"size": "4"}}, "")) == (
        "inner.size: expected int, got str '4'"
    )
    assert "unknown config key 'inner.sise' (did you mean size?)" in one_line(
        lambda: from_dict(Flat, {"name": "a", "inner": {"sise": 4}}, "")
    )
    assert one_line(lambda: from_dict(Flat, {}, "flat")).startswith("flat: ")  # a required key left out


def test_overrides_of_a_flat_config_and_yaml_errors(tmp_path):
    values = apply_overrides({"name": "a"}, ["scale=1e-3", "name=b"], Flat)
    assert from_dict(Flat, values, "") == Flat("b", scale=1e-3)
    assert "--set key must be FIELD" in one_line(lambda: apply_overrides({}, ["inner.size=3"], Flat))
    (tmp_path / "list.yaml").write_text("- 1\n")
    assert "expected a mapping with keys to values, got a list" in one_line(lambda: read_yaml(tmp_path / "list.yaml"))


def test_eval_config_takes_modules_and_checks_types():
    teacher = torch.nn.Identity()
    cfg = from_dict(EvalConfig, {"kind": "images", "source": "x", "out": "o", "teacher": teacher,
                                 "metrics": ["psnr", "ssim"]}, "eval")  # fmt: skip
    assert cfg.teacher is teacher and cfg.metrics == ("psnr", "ssim")
    assert one_line(lambda: from_dict(EvalConfig, {"kind": "images", "source": "x", "out": "o", "limit": 2.5},
                                      "eval")) == "eval.limit: expected int | None, got float 2.5"  # fmt: skip


def test_prune_recipe_sections_are_typed():
    recipe = {"prune": {"keep": 0.5}, "phases": [{"steps": 2, "loss": {"pixel": 1.0}}],
              "teacher": {"encoder": "taesdxl_encoder", "decoder": "taesdxl"}, "data": {"images": ["."]}}  # fmt: skip
    assert parse_recipe(recipe).phases[0].name == "phase1"
    bad_keep = {**recipe, "prune": {"keep": "half"}}
    assert one_line(lambda: parse_recipe(bad_keep, "r.yaml")) == (
        "r.yaml: prune.keep: expected float | list[float], got str 'half'"
    )
    bad_steps = {**recipe, "phases": [{"steps": "2", "loss": {"pixel": 1.0}}]}
    assert one_line(lambda: parse_recipe(bad_steps, "r.yaml")) == "r.yaml: phase 0.steps: expected int, got str '2'"
