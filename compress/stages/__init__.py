"""Stages: the registry, the contract, and one module per stage kind.

Every public module in this package other than ``base`` and ``runner`` is a
stage module and is imported here, which registers it. Adding a stage is
adding a file.
"""

import importlib
import pkgutil

from compress.stages.base import (
    STAGES as STAGES,
    Artifact as Artifact,
    Stage as Stage,
    StageConfig as StageConfig,
    StageContext as StageContext,
    StageResult as StageResult,
    register_stage as register_stage,
)

_NOT_STAGES = {"base", "runner"}
for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _m.name.startswith("_") and _m.name not in _NOT_STAGES:
        importlib.import_module(f"{__name__}.{_m.name}")
