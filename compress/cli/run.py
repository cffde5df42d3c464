"""``compress run FILE``: run a pipeline; the exit code says whether the release passed its gates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from compress.cli._common import guarded


def run(
    file: Annotated[Path, typer.Argument(help="Pipeline YAML.", exists=True, dir_okay=False, readable=True)],
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Run directory (default runs/<name>/).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Ignore cached stage results.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars (CI logs).")] = False,
    deploy_dir: Annotated[Path | None, typer.Option("--deploy-dir", help="Folder of deploy targets.")] = None,
) -> None:
    """Run every stage, write artifacts and reports, gate the release.

    Exit codes: 0 all gates passed, 1 a gate failed, 2 bad input, 3 a stage failed.
    """
    from compress._utils.progress import Reporter
    from compress.config import load_config
    from compress.stages.runner import run_pipeline

    def go() -> int:
        loaded = load_config(file, deploy_dir=deploy_dir)
        out = run_pipeline(loaded, run_dir=run_dir, fresh=fresh, reporter=Reporter(quiet=quiet))
        failed = [g for g in out.gates if not g["passed"]]
        for g in failed:
            typer.echo(f"gate FAILED {g['name']}: {g['message']}", err=True)
        verdict = "PASS" if out.exit_code == 0 else "FAIL"
        typer.echo(
            f"{verdict}: {len(out.gates) - len(failed)}/{len(out.gates)} gates passed; "
            f"report {out.run_dir / 'report.md'}"
        )
        return out.exit_code

    code = guarded(go)
    raise typer.Exit(code=code)
