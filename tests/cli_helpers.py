"""Calling the CLI in-process from tests: exit code, stdout and stderr, and the one-line error contract."""

from __future__ import annotations

from fastdecoders.cli import main


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``fastdecoders ARGV...`` in this process -> (exit code, stdout, stderr); arguments may be paths."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The single non-empty line a failing verb must print on stderr."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    return lines[0]
