"""``compress list KIND``: enumerate a registry (stages, families, sources, runtimes)."""

from __future__ import annotations

from typing import Annotated

import typer

from compress.cli._common import guarded


def list_(
    kind: Annotated[str, typer.Argument(help="stages | families | sources | runtimes")],
    pattern: Annotated[str, typer.Argument(help="Glob filter.")] = "*",
) -> None:
    """List registered names of KIND matching PATTERN."""
    from compress.errors import BadInputError

    def go() -> None:
        from compress.data import SOURCES
        from compress.models import FAMILIES
        from compress.runtime import RUNTIMES
        from compress.stages import STAGES

        regs = {"stages": STAGES, "families": FAMILIES, "sources": SOURCES, "runtimes": RUNTIMES}
        if kind not in regs:
            from compress._utils.registry import did_you_mean

            raise BadInputError(f"KIND: got '{kind}'{did_you_mean(kind, list(regs))}; expected one of: {', '.join(regs)}")
        names = regs[kind].names(pattern)
        width = max([16, *(len(n) + 1 for n in names)])
        for name in names:
            obj = regs[kind].get(name)
            desc = getattr(obj, "description", "") or (obj.__doc__ or "").strip().splitlines()[0:1]
            desc = desc if isinstance(desc, str) else (desc[0] if desc else "")
            typer.echo(f"{name:<{width}}{desc}")

    guarded(go)
