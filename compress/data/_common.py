"""Helpers shared by the file-based data sources: resolving paths and naming what is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress._utils.paths import resolve_path
from compress.data.base import DataEnv, DataSourceError
from compress.errors import MissingDependency


def resolve(value: str, env: DataEnv, *, key: str) -> Path:
    """Resolve a path key of ``data:`` (relative to the YAML's folder, or ``pkg:<package>/<dir>``).

    Raises:
        DataSourceError: A ``pkg:`` path names a package that is not installed.
    """
    try:
        return resolve_path(value, base_dir=env.base_dir)
    except MissingDependency as e:
        raise DataSourceError(str(e), key=key) from None


def require_folder(root: Path, *, key: str, files: list[str], install: str | None = None) -> None:
    """Check that ``root`` is a folder holding every name in ``files``.

    Args:
        root: The folder.
        key: The ``data:`` key that names it.
        files: File names expected inside.
        install: The command that provides the files (e.g. ``apt-get install wordnet-base``).

    Raises:
        DataSourceError: The folder or a file is missing; the message names it and the fix.
    """
    fix = (
        f"install it with `{install}` or set data.{key} to a folder that holds them"
        if install
        else (f"set data.{key} to a folder that holds them")
    )
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "not found"
        raise DataSourceError(f"{root}: {what}; expected a folder with {', '.join(files)}; {fix}", key=key)
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise DataSourceError(
            f"{root / missing[0]}: not found ({len(missing)} of {len(files)} expected files missing: "
            f"{', '.join(missing)}); {fix}",
            key=key,
        )


def file_stamp(path: Path) -> dict[str, Any]:
    """What identifies a data file's version cheaply: absolute path, size and modification time."""
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def short_error(e: BaseException, limit: int = 200) -> str:
    """``Type: message`` of an exception on one line, at most ``limit`` characters of message."""
    return f"{type(e).__name__}: {' '.join(str(e).split())[:limit]}"
