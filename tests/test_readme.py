"""Every command in README.md and docs/*.md runs as written.

The convention (also in docs/internals.md, "Docs that run"):

- ```bash blocks are run: each block is one ``bash -e`` script (so ``export`` carries to the next line), in a fresh
  temp folder where outputs land, holding links to the checkout's top-level folders (configs/, examples/,
  benchmarks/, src/ ...) and with ``../shared`` beside it (a link to the shared fixture), so commands and configs
  read exactly as in a checkout; the installed package's ``bin`` first on PATH, no ``$FASTDECODERS_WEIGHTS`` (a
  block must say where its weights are), the hub offline, one CPU thread, and a time limit of
  ``SECONDS_PER_COMMAND`` per command.
- Setup is not repeated: in a block, ``python3 -m venv …``, ``. .venv/bin/activate`` and ``pip install …`` (alone on
  a line or as parts of an ``&&`` chain) are dropped, the rest of the chain runs (the package under test is already
  installed with its extras). The README's one-line set-up + first run is handled that way.
- ```python blocks are run too (README: in this process from the checkout, as before; docs: in a subprocess from a
  temp folder like bash blocks). Blocks driving a real diffusers pipeline (they use ``pipe``) are exercised by
  tests/test_integrations.py and examples/ instead.
- ```text blocks are shown, never run: commands that need a GPU, weights not in ../shared, minutes of training or
  the test suite itself. Say why next to the block. Data (```json, ```yaml, ```csv …) is not run either.
- Every fenced block has a language tag (``test_every_block_is_tagged``), so nothing is skipped silently.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SECONDS_PER_COMMAND = 120
#: what a bash block's temp folder links to: the checkout's own files that commands may name
LINKED = ("benchmarks", "configs", "docs", "examples", "src", "tests", "weights", "pyproject.toml", "README.md")
# a fenced block: its info string (first word = language) and its body
FENCE = re.compile(r"^[ \t]*```([^\n`]*)\n(.*?)^[ \t]*```[ \t]*$", flags=re.S | re.M)  # also indented (in lists)
SETUP = re.compile(r"^\s*(python3? -m venv\b|pip3? install\b|python3? -m pip install\b"
                   r"|(\.|source) \S*\.venv/bin/activate)")


def blocks(*languages: str) -> list[tuple[str, str]]:
    """(``file:line`` id, body) of every fenced block of README.md and docs/*.md in ``languages``."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            language = (m.group(1).split() or [""])[0]
            if language in languages:
                line = text.count("\n", 0, m.start()) + 1
                found.append((f"{path.relative_to(ROOT)}:{line}", m.group(2)))
    return found


def drop_setup(script: str) -> str:
    """The script without its set-up steps (venv, activate, pip install), whether alone or inside ``&&`` chains."""
    kept = []
    for line in script.splitlines():
        parts = [p for p in line.split("&&") if not SETUP.match(p)]
        if parts:
            kept.append("&&".join(parts).strip() if len(parts) < len(line.split("&&")) else line)
    return "\n".join(kept)


def commands(script: str) -> int:
    """Commands in a script (non-empty, non-comment logical lines), for its time limit."""
    logical = script.replace("\\\n", " ").splitlines()
    return max(1, sum(1 for line in logical if line.strip() and not line.strip().startswith("#")))


def run_env(shared: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FASTDECODERS_WEIGHTS"}
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "FASTDECODERS_SHARED": str(shared),
    })  # fmt: skip
    return env


def workdir(tmp_path: Path, shared: Path) -> Path:
    """A fresh folder with links to the checkout's files and ``../shared`` beside it: outputs of a docs command land
    here, not in the tree."""
    (tmp_path / "shared").symlink_to(shared)
    work = tmp_path / "work"
    work.mkdir()
    for name in LINKED:
        if (ROOT / name).exists():
            (work / name).symlink_to(ROOT / name)
    return work


def run_script(argv: list[str], script: str, cwd: Path, shared: Path, limit: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=script, text=True, capture_output=True, cwd=cwd, env=run_env(shared),
                              timeout=limit)  # fmt: skip
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"took over {limit:.0f} s (the limit for {commands(script)} commands); keep docs commands fast or "
                    f"show them in a ```text block with the reason. Output so far:\n{e.stderr}")  # fmt: skip


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _check(result: subprocess.CompletedProcess, where: str, script: str, seconds: float, cpu: float) -> None:
    print(f"{where}: {seconds:.1f} s wall, {cpu:.1f} s CPU")  # pytest -s shows each block's cost
    assert result.returncode == 0, (
        f"{where} failed (exit {result.returncode}) after {seconds:.1f} s\n--- script\n{script}\n"
        f"--- stdout (tail)\n{result.stdout[-3000:]}\n--- stderr (tail)\n{result.stderr[-3000:]}"
    )


@pytest.mark.parametrize("where,body", blocks("bash"), ids=[w for w, _ in blocks("bash")])
def test_bash_block_runs(where, body, shared_dir, tmp_path):
    script = drop_setup(body)
    start, cpu = time.perf_counter(), _cpu_seconds()
    limit = SECONDS_PER_COMMAND * commands(script)
    result = run_script(["bash", "-e"], script, workdir(tmp_path, shared_dir), shared_dir, limit)
    _check(result, where, script, time.perf_counter() - start, _cpu_seconds() - cpu)


DOC_PYTHON = [(w, b) for w, b in blocks("python") if not w.startswith("README") and "pipe" not in b]


@pytest.mark.parametrize("where,body", DOC_PYTHON, ids=[w for w, _ in DOC_PYTHON])
def test_docs_python_block_runs(where, body, shared_dir, tmp_path):
    start, cpu = time.perf_counter(), _cpu_seconds()
    result = run_script([sys.executable, "-"], body, workdir(tmp_path, shared_dir), shared_dir, SECONDS_PER_COMMAND)
    _check(result, where, body, time.perf_counter() - start, _cpu_seconds() - cpu)


def test_every_block_is_tagged():
    """An untagged fence would be neither run nor visibly exempt: each block says bash, python, text or its data
    format."""
    untagged = [f"{p.relative_to(ROOT)}:{p.read_text().count(chr(10), 0, m.start()) + 1}"
                for p in DOCS for m in FENCE.finditer(p.read_text()) if not m.group(1).strip()]  # fmt: skip
    assert not untagged, f"fenced blocks without a language (use bash to run, text to only show): {untagged}"


def test_setup_lines_are_dropped_and_the_rest_runs():
    quick = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && fastdecoders list\n'
    assert drop_setup(quick) == "fastdecoders list"
    assert drop_setup("pip install 'fastdecoders[train]'   # extras\nfastdecoders list") == "fastdecoders list"
    assert commands("a \\\n  --b\n# comment\n\nc\n") == 2


def python_snippets() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [s for s in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "pipe" not in s]


@pytest.mark.parametrize("snippet", python_snippets())
def test_readme_snippet_runs(snippet, shared_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    snippet = snippet.replace('"my_taesdxl.safetensors"', repr(str(tmp_path / "my.safetensors")))
    snippet = snippet.replace("../shared", os.path.relpath(shared_dir, ROOT))
    exec(compile(snippet, "README.md", "exec"), {})
