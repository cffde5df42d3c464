"""Progress display: a rich bar per training stage, one summary line per stage, quiet for CI."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any


class Reporter:
    """Writes progress to stderr; with ``quiet=True`` prints only stage summaries.

    Args:
        quiet: No progress bars, summaries only.
        silent: Nothing at all (library use, tests).
    """

    def __init__(self, *, quiet: bool = False, silent: bool = False) -> None:
        self.quiet = quiet or silent
        self.silent = silent
        self._console: Any = None

    def _con(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        return self._console

    def line(self, text: str) -> None:
        """One line to stderr (suppressed only when silent)."""
        if self.silent:
            return
        # plain print: rich would re-wrap long lines at 80 columns when stderr is not a terminal
        print(text, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Any]:
        """A progress bar; yields ``advance(n=1, **fields)``."""
        if self.quiet:
            yield lambda n=1, **kw: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=self._con(),
            transient=True,
        ) as prog:
            tid = prog.add_task(description, total=total, info="")

            def advance(n: int = 1, **fields: Any) -> None:
                info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
                prog.update(tid, advance=n, info=info)

            yield advance


SILENT = Reporter(silent=True)
