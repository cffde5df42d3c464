"""Importance criteria: the plug-in axis of pruning.

A criterion scores every channel of a coupled group (torch-pruning
``Importance``); it never edits the graph. Each is registered under the name
``PruneConfig.importance`` uses. A criterion that needs gradients says so, and
``prune_`` then calls the caller's ``score_fn`` and back-propagates before
scoring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compress._utils.registry import Registry


@dataclass(frozen=True)
class Criterion:
    """A registered importance criterion.

    Attributes:
        name: Registry name (the value of ``importance:``).
        make: Builds a fresh torch-pruning ``Importance``.
        needs_grad: Scores read ``.grad``: ``prune_`` needs a ``score_fn``.
    """

    name: str
    make: Callable[[], Any]
    needs_grad: bool


CRITERIA: Registry[Criterion] = Registry("prune criterion")


def _register(name: str, *, needs_grad: bool) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    def deco(fn: Callable[[], Any]) -> Callable[[], Any]:
        CRITERIA.register(name)(Criterion(name=name, make=fn, needs_grad=needs_grad))
        return fn

    return deco


@_register("magnitude", needs_grad=False)
def _magnitude() -> Any:
    """Group L2 norm of the weights (DepGraph's default)."""
    import torch_pruning as tp

    return tp.importance.GroupMagnitudeImportance(p=2)


@_register("taylor", needs_grad=True)
def _taylor() -> Any:
    """First-order Taylor ``|w * dL/dw|`` summed over the group (Molchanov et al. 2019)."""
    import torch_pruning as tp

    return tp.importance.GroupTaylorImportance()
