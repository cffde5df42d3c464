"""compress: take a trained teacher to a smaller, faster, validated and gated release.

Public API (everything else is private):

- ``load_config(path)`` → a validated pipeline (``compress.config``)
- ``run(path, run_dir=None, fresh=False)`` → ``RunOutcome`` (exit code, gates, manifest)
- ``list_stages()`` → names of the registered stages
"""

from __future__ import annotations

__version__ = "0.1.0"

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compress.config.api import LoadedPipeline
    from compress.stages.runner import RunOutcome


def load_config(path: str | Path, *, deploy_dir: str | Path | None = None) -> LoadedPipeline:
    """Read and check a pipeline file without running anything (see ``compress.config.load_config``)."""
    from compress.config.api import load_config as _load

    return _load(path, deploy_dir=deploy_dir)


def run(
    path: str | Path, *, run_dir: str | Path | None = None, fresh: bool = False, quiet: bool = False
) -> RunOutcome:
    """Load a pipeline file and run it end to end (see ``compress.stages.runner.run_pipeline``)."""
    from compress._utils.progress import Reporter
    from compress.stages.runner import run_pipeline

    loaded = load_config(path)
    return run_pipeline(
        loaded, run_dir=Path(run_dir) if run_dir else None, fresh=fresh, reporter=Reporter(quiet=quiet)
    )


def list_stages() -> list[str]:
    """Names of the registered stages."""
    from compress.stages import STAGES

    return STAGES.names()


__all__ = ["__version__", "list_stages", "load_config", "run"]
