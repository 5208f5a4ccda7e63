"""Shared fixtures. Tests that need ../shared (real weights and photos) use ``shared_dir``: they skip when it is
missing, unless FASTDECODERS_REQUIRE_SHARED=1 (as in CI), where they fail instead."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(os.environ.get("FASTDECODERS_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "weights").is_dir() or not (SHARED / "data").is_dir():
        message = f"needs the shared weights and data folder at {SHARED} (set FASTDECODERS_SHARED)"
        if os.environ.get("FASTDECODERS_REQUIRE_SHARED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED


@pytest.fixture(scope="session")
def taesd_weights_dir(shared_dir: Path) -> Path:
    return shared_dir / "weights" / "taesd"


@pytest.fixture(scope="session")
def kodak_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "images" / "kodak24"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of small-tensor tests (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on toy sizes thread hand-offs cost more than the maths, 10-30x on a shared 2-core machine. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _backend_cache(tmp_path_factory):
    """``auto`` backend choices and ONNX exports (fastdecoders.backends) go to a session temp folder, not the user's
    ~/.cache/fastdecoders: a test never reuses a choice measured outside the run (docs commands inherit it too)."""
    previous = os.environ.get("FASTDECODERS_CACHE")
    os.environ["FASTDECODERS_CACHE"] = str(tmp_path_factory.mktemp("fastdecoders-cache"))
    yield
    if previous is None:
        os.environ.pop("FASTDECODERS_CACHE", None)
    else:
        os.environ["FASTDECODERS_CACHE"] = previous
