"""Loading a diffusers pipeline for the examples: a model that cannot be found or fetched is one line, not a
traceback (the CLI's contract, for scripts)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from fastdecoders.errors import FastDecodersError


def from_pretrained(cls: Any, model: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(model, **kwargs)``; a missing, unreachable or unreadable model raises one
    ``FastDecodersError`` line naming it (diffusers raises OSError/ValueError with multi-line texts)."""
    try:
        return cls.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as e:
        cause = " ".join(str(e).split())
        cause = cause if len(cause) <= 160 else cause[:157] + "..."
        raise FastDecodersError(
            f"could not load {cls.__name__} {model!r}: not a local folder and not fetched from the Hugging Face hub "
            f"(offline?); download it first and pass its folder. {type(e).__name__}: {cause}"
        ) from None


def run_example(main: Callable[[], Any], name: str) -> int:
    """Run an example's ``main()``: a ``FastDecodersError`` is one line on stderr and exit code 2, like the CLI."""
    try:
        main()
    except FastDecodersError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    return 0
