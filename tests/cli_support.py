"""Shared by tests: `consortium` commands run through typer's runner, and their output."""

from __future__ import annotations

from typer.testing import CliRunner

from consortium.cli.app import app

runner = CliRunner()


def cli(*args: str) -> tuple[int, str, str]:
    """`consortium ARGS`: (exit code, stdout, stderr). A traceback in either fails the test: a
    user's mistake must give one clear line."""
    res = runner.invoke(app, list(args))
    assert "Traceback" not in res.stdout + res.stderr
    return res.exit_code, res.stdout, res.stderr


def words(text: str) -> str:
    """`text` with rich's line wrapping undone (whitespace runs as one space)."""
    return " ".join(text.split())


def cli_line(*args: str) -> tuple[int, str]:
    """`cli`, with stdout and stderr as one line of `words`."""
    code, out, err = cli(*args)
    return code, words(out + err)
