"""The example scripts run offline in ``--tiny`` mode (tiny random pipelines, prompt embeddings, no downloads)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def examples(monkeypatch):
    """Import example scripts by name, as ``python examples/x.py`` would (their folder first on sys.path)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module


def test_examples_folder_holds_the_four_scripts():
    scripts = sorted(p.stem for p in EXAMPLES.glob("*.py"))
    assert scripts == ["sdxl_tae192", "svd_framewise", "svd_temporal", "video_effvit"]


def test_sdxl_tae192(examples, tmp_path):
    out = tmp_path / "sdxl.png"
    result = examples("sdxl_tae192").main(["--tiny", "-o", str(out)])
    assert "tae192-sdxl" in result["decoder"] and Image.open(out).size == (64, 64)


@pytest.mark.parametrize(
    ("script", "decoder"),
    [("svd_framewise", "taesd"), ("svd_temporal", "tae-temporal-svd"), ("video_effvit", "effvit-sdxl")],
)
def test_svd_examples(examples, tmp_path, script, decoder):
    result = examples(script).main(["--tiny", "-o", str(tmp_path / "frames")])
    assert decoder in result["decoder"] and result["frames"] == 3
    frames = sorted((tmp_path / "frames").glob("frame_*.png"))
    assert len(frames) == 3 and all(Image.open(f).size == (64, 64) for f in frames)


def test_real_mode_needs_a_conditioning_image(examples, capsys):
    with pytest.raises(SystemExit):
        examples("svd_framewise").main(["--model", "some/model"])
    assert "--image" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _forget_example_modules():
    """Each test imports the scripts afresh (they are scripts, not a package)."""
    yield
    for name in ("sdxl_tae192", "svd_framewise", "svd_temporal", "video_effvit"):
        sys.modules.pop(name, None)
