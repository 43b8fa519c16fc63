"""Shared CLI helpers: one clear error line instead of a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import NoReturn, ParamSpec, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from consortium.core.errors import ConfigError, ConsortiumError

console = Console()
err_console = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one red error line on stderr and exit with `code`. The message is text, never
    markup: a "[rule …]" or a stop reason with brackets is printed as written."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _interactive() -> bool:
    return sys.stdin.isatty()


def secret(env: str, prompt: str, *, confirm: bool = False) -> str:
    """A secret from environment variable `env`, else a hidden prompt on a terminal (typed twice
    with `confirm`). Never from argv, where `ps` and shell history would see it."""
    value = os.environ.get(env)
    if value is not None:
        return value
    if not _interactive():
        raise ConfigError(f"no terminal to ask for the {prompt}: set {env}")
    answer: str = typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm)
    return answer


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn ConsortiumError (and a few OS errors a user can cause) into one line + exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except ConsortiumError as exc:
            fail(str(exc), exc.exit_code)
        except ValidationError as exc:  # an option pydantic refused: say which and why
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            fail(f"invalid {where}: {err['msg']}", 2)
        except FileNotFoundError as exc:
            fail(f"file not found: {exc.filename}", 2)
        except PermissionError as exc:
            fail(f"permission denied: {exc.filename}", 2)
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper
