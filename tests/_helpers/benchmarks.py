"""Import a script under benchmarks/ (not a package) for a test module's fixture."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def import_benchmark(name: str) -> Iterator[ModuleType]:
    """Yield ``benchmarks/<name>.py`` as a module, with benchmarks/ on sys.path only meanwhile."""
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))
