"""``compress report RUN_DIR``: re-render report.md, report.html, metrics.json and junit.xml of a finished run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from compress.cli._common import guarded

_SHAPE = (("manifest_version", int), ("stages", list), ("artifacts", dict))


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.", exists=True, file_okay=False)],
) -> None:
    """Rebuild the reports from RUN_DIR/manifest.json."""
    from compress._utils.io import read_json
    from compress.errors import BadInputError
    from compress.report import write_reports

    def go() -> None:
        mpath = run_dir / "manifest.json"
        if not mpath.is_file():
            raise BadInputError(f"{mpath}: no manifest; is {run_dir} a compress run directory?")
        try:
            manifest = read_json(mpath)
        except ValueError as e:
            raise BadInputError(
                f"{mpath}: not valid JSON ({e}); run `compress run` again to rewrite it"
            ) from None
        if not isinstance(manifest, dict):
            bad: str | None = "it is not a JSON object"
        else:
            wrong = [f"'{k}' is missing or not a {t.__name__}" for k, t in _SHAPE
                     if not isinstance(manifest.get(k), t)]
            bad = wrong[0] if wrong else None
        if bad:
            raise BadInputError(
                f"{mpath}: not a compress run manifest ({bad}); run `compress run` again to rewrite it"
            )
        try:
            write_reports(run_dir, manifest)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BadInputError(
                f"{mpath}: not a complete compress run manifest ({type(e).__name__}: {e}); "
                "run `compress run` again to rewrite it"
            ) from None
        typer.echo(f"wrote {run_dir / 'report.md'} and {run_dir / 'report.html'}")

    guarded(go)
