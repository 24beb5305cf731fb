"""The ``lmaas-tune`` command: a thin shell over the library (:mod:`lmaas_tune.tuning.workflows`).

This module holds the typer app, the error handling every command shares, and ``main``; each
command lives in a module of its own (:mod:`.fit`, :mod:`.use`, :mod:`.serve`, :mod:`.report`,
:mod:`.tasks`), which registers itself on :data:`app` when imported (see ``__init__``).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.logging import RichHandler
from rich.markup import escape

from lmaas_tune.errors import LmaasTuneError, RunInterrupted

from .display import make_console

app = typer.Typer(
    help="Black-Box Tuning of soft prompts for language models you can only query.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = make_console()
err = make_console(stderr=True)
_state = {"debug": False}

P = ParamSpec("P")
R = TypeVar("R")


def _one_line(exc: BaseException) -> str:
    return escape(re.sub(r"\s*\n\s*", " ", str(exc)).strip())


def handled(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn package errors into one red line and an exit code (2 usage, 1 runtime); --debug shows tracebacks.

    An error may carry a ``hint`` (printed on a second line: how to resume a stopped run). A
    signal that stopped a run exits with 128 + its number (130 SIGINT, 143 SIGTERM).
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except RunInterrupted as exc:
            err.print(f"[yellow]{_one_line(exc)}[/]", highlight=False, soft_wrap=True)
            _print_hint(exc)
            raise typer.Exit(exc.exit_code) from None
        except LmaasTuneError as exc:
            if _state["debug"]:
                raise
            err.print(f"[bold red]error:[/] {_one_line(exc)}", highlight=False, soft_wrap=True)
            _print_hint(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except OSError as exc:  # the environment (disk full, permissions), not a bug: one line, exit 1
            if _state["debug"]:
                raise
            err.print(f"[bold red]error:[/] {_one_line(exc)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _print_hint(exc: BaseException) -> None:
    hint = getattr(exc, "hint", None)
    if hint:
        err.print(escape(hint), highlight=False, soft_wrap=True)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what the library does.")] = False,
) -> None:
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_time=False, show_path=False)],
    )


def main() -> None:
    app()
