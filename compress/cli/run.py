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
    rerun: Annotated[
        str | None,
        typer.Option(
            "--rerun",
            metavar="STAGE",
            help="Run STAGE (a kind, e.g. validate, or an id, e.g. 06-validate) and every stage after it "
            "again; the stages before it stay cached.",
        ),
    ] = None,
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
        from compress.train import distributed

        loaded = load_config(file, deploy_dir=deploy_dir)
        if distributed.init_from_env():
            return _run_distributed(loaded, run_dir, fresh=fresh, rerun=rerun, quiet=quiet)
        out = run_pipeline(loaded, run_dir=run_dir, fresh=fresh, rerun=rerun, reporter=Reporter(quiet=quiet))
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


def _run_distributed(
    loaded: object, run_dir: Path | None, *, fresh: bool, rerun: str | None, quiet: bool
) -> int:
    """One rank of ``torchrun ... -m compress run``: rank 0 works in the run directory; every other
    rank works in a private copy of it (so all ranks see the same cached stages and take the same
    steps) that is deleted at the end. Training steps are shared through DistributedDataParallel."""
    import shutil
    import tempfile

    from compress._utils.progress import Reporter
    from compress.stages.runner import run_pipeline
    from compress.train import distributed

    real = Path(run_dir) if run_dir is not None else Path("runs") / loaded.config.name  # type: ignore[attr-defined]
    distributed.barrier()
    scratch: Path | None = None
    if not distributed.is_main():
        scratch = Path(tempfile.mkdtemp(prefix=f"compress-rank{distributed.rank()}-"))
        target = scratch / "run"
        if real.is_dir():
            shutil.copytree(real, target, ignore=shutil.ignore_patterns("*.lock", ".lock*"))
        real = target
    distributed.barrier()
    try:
        out = run_pipeline(
            loaded,  # type: ignore[arg-type]
            run_dir=real,
            fresh=fresh,
            rerun=rerun,
            reporter=Reporter(quiet=quiet or scratch is not None),
        )
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        distributed.barrier()
        distributed.shutdown()
    if scratch is None:
        verdict = "PASS" if out.exit_code == 0 else "FAIL"
        typer.echo(f"{verdict}: report {out.run_dir / 'report.md'}")
    return out.exit_code
