"""A small generic registry: one instance per kind of pluggable thing.

Stages, model families, data sources, runtimes and exporters each have one
``Registry``. Things register themselves with a decorator where they are
defined; the name is the YAML value, the CLI word and (by convention) the file
stem. A duplicate name is an error at import time, an unknown name lists the
valid ones and the closest match.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from compress.errors import UnknownNameError

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    """Name -> object mapping with decorator registration.

    Args:
        kind: What is registered, used in messages ("stage", "runtime", ...).

    Example:
        >>> reg: Registry[type] = Registry("widget")
        >>> @reg.register("round")
        ... class Round: ...
        >>> reg.get("round") is Round
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._unavailable: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering an object under ``name``; duplicates raise ``ValueError``."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def mark_unavailable(self, name: str, reason: str) -> None:
        """Record a known backend that cannot load here, with what to install."""
        self._unavailable[name] = reason

    def get(self, name: str) -> T:
        """Return the object registered as ``name``.

        Raises:
            UnknownNameError: ``name`` is not registered; the message lists the valid names.
        """
        if name in self._items:
            return self._items[name]
        if name in self._unavailable:
            raise UnknownNameError(f"{self.kind} '{name}' is not available here: {self._unavailable[name]}")
        names = sorted(self._items)
        raise UnknownNameError(
            f"unknown {self.kind} '{name}'{did_you_mean(name, names)}; valid: {', '.join(names)}"
        )

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a glob ``pattern``."""
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        """(name, object) pairs in name order."""
        return [(n, self._items[n]) for n in self.names()]
