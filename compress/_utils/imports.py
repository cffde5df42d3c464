"""Import a user-named ``package.module:function`` without evaluating any string.

Model and data factories (``source: factory``) name a function this way. The reference is checked
to be dotted identifiers with one colon, the module is imported with ``importlib`` and the function
looked up with ``getattr``; nothing is imported unless a config names it. The function then runs
with the user's privileges (docs/reliability.md).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

_REF = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class FactoryImportError(ValueError):
    """The reference is malformed, its module cannot be imported, or it names no callable."""


def _short(e: BaseException, limit: int = 200) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text[:limit]}" if text else type(e).__name__


def import_callable(ref: str) -> Callable[..., Any]:
    """The callable that ``ref`` (``package.module:function``, nested attributes allowed) names.

    Raises:
        FactoryImportError: With a message naming the reference and the fix.
    """
    if not _REF.match(ref):
        raise FactoryImportError(f"factory '{ref}': expected 'package.module:function' (dotted names, one colon)")
    mod_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as e:  # ModuleNotFoundError, or whatever the module raises while importing
        raise FactoryImportError(
            f"factory '{ref}': cannot import module '{mod_name}' ({_short(e)}); check the name and PYTHONPATH"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise FactoryImportError(f"factory '{ref}': module '{mod_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise FactoryImportError(f"factory '{ref}': '{attr}' is a {type(obj).__name__}, not a function")
    return obj  # type: ignore[no-any-return]
