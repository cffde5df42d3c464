"""Shared CLI plumbing: map exceptions to exit codes, print diagnostics to stderr."""

from __future__ import annotations

import errno
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from compress._utils.interrupt import handling_interrupts
from compress.errors import EXIT_RUNTIME, CompressError

T = TypeVar("T")

STATE = {"debug": False}


def guarded(fn: Callable[[], T]) -> T:
    """Run ``fn``; turn compress errors into their exit code with a one-message diagnostic.

    Bad input (exit 2) and stage failures (exit 3) print no traceback unless ``--debug``.
    Ctrl-C prints one line and exits 130; the run directory stays resumable (a Ctrl-C that landed where
    Python drops the exception is raised again at the next training step or stage: ``handling_interrupts``).
    An ``OSError`` outside a stage (disk full, I/O error) is exit 3 with the file it concerns.
    """
    try:
        with handling_interrupts():
            return fn()
    except CompressError as e:
        if STATE["debug"]:
            traceback.print_exc()
        c = e.__cause__
        # name the underlying error unless the message already does (re-prefixed error, 'TypeError: ...')
        shown = c is not None and not isinstance(c, CompressError) and type(c).__name__ not in str(e)
        cause = f" (caused by {type(c).__name__})" if shown and e.exit_code == EXIT_RUNTIME else ""
        typer.echo(f"error: {e}{cause}", err=True)
        if e.exit_code == EXIT_RUNTIME and not STATE["debug"]:
            typer.echo("(run with --debug for the traceback)", err=True)
        raise typer.Exit(code=e.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: finished stages are kept; run the same command again to resume", err=True)
        raise typer.Exit(code=130) from None
    except OSError as e:
        if STATE["debug"]:
            traceback.print_exc()
        where = f" {e.filename}:" if e.filename else ""
        if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            msg = (
                f"error:{where} no space left on device; free space or choose a --run-dir on another disk, "
                "then run the same command again (finished stages are kept)"
            )
        else:
            msg = f"error:{where} {e.strerror or e}; finished stages are kept, run the same command again to resume"
        typer.echo(msg, err=True)
        raise typer.Exit(code=EXIT_RUNTIME) from None


def echo_err(msg: Any) -> None:
    """Diagnostics go to stderr."""
    typer.echo(str(msg), err=True)


def is_tty() -> bool:
    """Whether stderr is a terminal."""
    return sys.stderr.isatty()
