"""``compress validate FILE``: check a pipeline (schema, references, stage order) without training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from compress.cli._common import guarded


def validate(
    file: Annotated[Path, typer.Argument(help="Pipeline YAML.", exists=True, dir_okay=False, readable=True)],
    deploy_dir: Annotated[Path | None, typer.Option("--deploy-dir", help="Folder of deploy targets.")] = None,
) -> None:
    """Report every problem in FILE at once (exit 2), or print a one-line summary (exit 0)."""
    from compress.config import load_config

    loaded = guarded(lambda: load_config(file, deploy_dir=deploy_dir))
    kinds = " -> ".join(e.kind for e in loaded.config.stages)
    typer.echo(f"{file}: ok: {loaded.config.name}: {kinds}; targets: {', '.join(loaded.targets) or 'none'}")
