"""The ``compress`` command: a thin typer app, one module per command."""

from __future__ import annotations

from typing import Annotated

import typer

from compress.cli._common import STATE
from compress.cli.bench import bench
from compress.cli.init import init
from compress.cli.list_cmd import list_
from compress.cli.report import report
from compress.cli.run import run
from compress.cli.schema import schema
from compress.cli.targets import targets
from compress.cli.validate import validate

COMMANDS = ("run", "validate", "init", "schema", "list", "report", "bench", "targets")

app = typer.Typer(
    name="compress",
    help="Take a trained teacher to a smaller, faster, validated and gated release.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    STATE["debug"] = debug


app.command("run")(run)
app.command("validate")(validate)
app.command("init")(init)
app.command("schema")(schema)
app.command("list")(list_)
app.command("report")(report)
app.command("bench")(bench)
app.command("targets")(targets)


def main() -> None:
    """Console-script entry point."""
    app()
