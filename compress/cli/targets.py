"""``compress targets``: list the deploy targets, and whether each can run on this machine (and if not, why)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from compress.cli._common import guarded


def default_deploy_dir(explicit: Path | None) -> Path:
    """``--deploy-dir``, else ``./deploy``, else the ``deploy/`` shipped beside the ``compress`` package.

    Raises:
        BadInputError: No such folder.
    """
    from compress.errors import BadInputError

    if explicit is not None:
        if not explicit.is_dir():
            raise BadInputError(
                f"--deploy-dir: {explicit} is not a folder; give the folder of deploy/*.yaml files"
            )
        return explicit
    import compress

    for cand in (Path.cwd() / "deploy", Path(compress.__file__).resolve().parents[1] / "deploy"):
        if cand.is_dir():
            return cand
    raise BadInputError("no deploy/ folder here or beside the compress package; pass --deploy-dir DIR")


def find_target(name: str, deploy_dir: Path) -> Any:
    """Load target ``name`` from ``deploy_dir``.

    Raises:
        UnknownNameError: No such target (lists the valid names and the closest).
        ConfigError: The target file is invalid.
    """
    from compress._utils.registry import did_you_mean
    from compress.config.api import list_targets, load_target
    from compress.errors import UnknownNameError

    files = list_targets(deploy_dir)
    if name not in files:
        names = sorted(files)
        raise UnknownNameError(
            f"--target: unknown deploy target '{name}'{did_you_mean(name, names)}; "
            f"targets in {deploy_dir}: {', '.join(names) or 'none'} (see `compress targets`)"
        )
    return load_target(files[name])


def target_status(target: Any) -> tuple[bool, str]:
    """Whether ``target`` can run on this machine, and why not (runtime, package, provider, GPU)."""
    from compress.runtime import RUNTIMES

    ok, why = RUNTIMES.get(target.runtime).can_run_here(target.device)
    if ok and target.device == "cuda" and target.gpu:
        import torch

        here = torch.cuda.get_device_name(0)
        if target.gpu.lower() not in here.lower():
            return True, f"runs, but on a {here}; this target's budgets assume a {target.gpu}"
    return ok, why


def targets(
    deploy_dir: Annotated[
        Path | None, typer.Option("--deploy-dir", help="Folder of deploy targets (default ./deploy).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List deploy targets: device, runtime, precision, artifact, and whether each can run here."""
    from compress.config.api import list_targets, load_target
    from compress.errors import ConfigError

    def go() -> None:
        folder = default_deploy_dir(deploy_dir)
        rows: list[dict[str, Any]] = []
        for name, path in list_targets(folder).items():
            try:
                t = load_target(path)
            except ConfigError as e:
                rows.append(
                    {"name": name, "file": str(path), "valid": False, "runs_here": False, "why": str(e)}
                )
                continue
            ok, why = target_status(t)
            rows.append(
                {
                    "name": name,
                    "file": str(path),
                    "valid": True,
                    "device": t.device,
                    "gpu": t.gpu,
                    "runtime": t.runtime,
                    "precision": t.precision,
                    "artifact": t.artifact,
                    "runs_here": ok,
                    "why": why,
                }
            )
        if as_json:
            typer.echo(json.dumps({"deploy_dir": str(folder), "targets": rows}, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"deploy targets in {folder}")
        for col in ("target", "device", "runtime", "precision", "artifact", "runs here", "why not / note"):
            table.add_column(col, overflow="fold")
        for r in rows:
            if not r["valid"]:
                table.add_row(r["name"], "", "", "", "", "[red]invalid[/red]", r["why"])
                continue
            device = r["device"] + (f" ({r['gpu']})" if r["gpu"] else "")
            runs = "[green]yes[/green]" if r["runs_here"] else "[red]no[/red]"
            table.add_row(r["name"], device, r["runtime"], r["precision"], r["artifact"], runs, r["why"])
        Console(width=200 if not Console().is_terminal else None).print(table)

    guarded(go)
