"""Training checkpoints: everything a run needs to continue exactly where it stopped, written atomically.

A checkpoint (``OUT/checkpoints/step_0000100.pt``) holds the step, the student, its EMA, the optimizer and the
learning-rate schedule, the discriminator and its optimizer, every RNG state (python, numpy, torch CPU and CUDA),
the data position, the time and images so far, and the resolved config. It is written to a temp file and renamed,
so a run killed at any moment leaves only whole checkpoints; ``latest`` skips anything unreadable anyway.
Files hold tensors and plain Python values only and are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.io import atomic_path, load_pickle
from fastdecoders.models.fileformat import as_tuples

_NAME = re.compile(r"step_(\d+)\.pt")


def checkpoint_path(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:07d}.pt"


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    folder = out / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name))]
    return sorted(found)


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain values (so ``weights_only`` loading accepts them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(as_tuples(state["python"]))  # torch.save may hand back lists
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as step ``step``'s checkpoint (atomically), then delete all but the newest ``keep``."""
    path = checkpoint_path(out, step)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for _, old in list_checkpoints(out)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def drop_after(out: Path, step: int) -> list[Path]:
    """Delete checkpoints past ``step`` (an abandoned timeline: unreadable leftovers, or a resume from an older
    checkpoint); returns them."""
    dropped = [p for s, p in list_checkpoints(out) if s > step]
    for path in dropped:
        path.unlink(missing_ok=True)
    return dropped


#: what every checkpoint holds (resuming reads all of them)
REQUIRED_KEYS = ("step", "student", "optimizer", "scheduler", "rng", "data", "seconds", "train_seconds", "images",
                 "config")  # fmt: skip


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents; a file that is unreadable, needs code to unpickle, or lacks a key is one error."""
    state = load_pickle(Path(path), "training checkpoint")
    missing = [k for k in REQUIRED_KEYS if k not in state] if isinstance(state, dict) else list(REQUIRED_KEYS)
    if missing:
        got = f"a {type(state).__name__}" if not isinstance(state, dict) else f"no {', '.join(map(repr, missing))}"
        raise FastDecodersError(f"{path} is not a fastdecoders training checkpoint (expected a dict with "
                                f"{', '.join(REQUIRED_KEYS)}; got {got})")  # fmt: skip
    return state


def latest_checkpoint(out: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint in ``out`` and its contents, or None."""
    for _, path in reversed(list_checkpoints(out)):
        try:
            return path, load_checkpoint(path)
        except FastDecodersError:
            continue
    return None


#: config fields that may change when a run is resumed (budgets and logging); anything else is an error.
RESUMABLE_CHANGES = ("train.steps", "train.max_minutes", "train.compile", "train.device", "data.cache_dir",
                     "data.on_device", "log.")  # fmt: skip


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def find_resume(config: dict[str, Any], out: Path, resume: bool | str | None) -> tuple[Path, dict] | None:
    """The checkpoint to continue from (path, contents), or None for a fresh run; one clear error for a clash.
    ``config``: the run's resolved config as plain data; ``resume``: True, a checkpoint path, "auto" or None."""
    existing = list_checkpoints(out)
    if not resume:
        if existing:
            raise FastDecodersError(
                f"{out} already holds a run ({existing[-1][1].name}); pass --resume to continue it, or another --out"
            )
        return None
    if isinstance(resume, str) and resume != "auto":
        path = Path(resume)
        if not path.is_file():
            raise FastDecodersError(f"--resume {resume}: no such checkpoint file")
        found = (path, load_checkpoint(path))
    else:
        found = latest_checkpoint(out)
        if found is None:
            if resume == "auto":
                return None
            raise FastDecodersError(f"--resume: {out}/checkpoints holds no readable checkpoint")
    changed = [k for k in _diff_keys(found[1]["config"], config) if not k.startswith(RESUMABLE_CHANGES)]
    if changed:
        raise FastDecodersError(
            f"--resume: the config differs from the checkpoint's in {', '.join(changed)}; "
            f"only {', '.join(RESUMABLE_CHANGES)} may change"
        )
    return found
