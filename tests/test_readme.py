"""The README's Python snippets run as written (those that need a real diffusers pipeline are exercised by
tests/test_integrations.py and examples/ instead)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_snippets() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [s for s in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "pipe" not in s]


@pytest.mark.parametrize("snippet", python_snippets())
def test_readme_snippet_runs(snippet, shared_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    snippet = snippet.replace('"my_taesdxl.safetensors"', repr(str(tmp_path / "my.safetensors")))
    snippet = snippet.replace("../shared", os.path.relpath(shared_dir, ROOT))
    exec(compile(snippet, "README.md", "exec"), {})
