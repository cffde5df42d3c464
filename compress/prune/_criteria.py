"""Importance criteria: the plug-in axis of pruning.

A criterion scores every channel of a coupled group (torch-pruning
``Importance``); it never edits the graph. Each lives in its own module under
``compress/prune/criteria/`` and registers itself under the name
``PruneConfig.importance`` uses. A criterion that needs gradients says so, and
``prune_`` then calls the caller's ``score_fn`` and back-propagates before
scoring; a criterion may also wrap that backward pass (``prepare``), e.g. to
read the gradient of head gates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from compress._utils.registry import Registry

Backprop = Callable[[Callable[[], None] | None], None]
"""``backprop(after_each)``: run the caller's losses backward, calling ``after_each()`` after each batch."""


@dataclass(frozen=True)
class Criterion:
    """A registered importance criterion.

    Attributes:
        name: Registry name (the value of ``importance:``).
        make: ``make(p=2)`` builds a fresh torch-pruning ``Importance`` (options a criterion
            does not use are ignored).
        needs_grad: Scores read ``.grad``: ``prune_`` needs a ``score_fn``.
        check: ``check(model)`` returns why the criterion cannot score this model, or None.
        prepare: ``prepare(importance, model, backprop)`` runs the backward pass itself
            (default: ``backprop(None)``).
    """

    name: str
    make: Callable[..., Any]
    needs_grad: bool
    check: Callable[[nn.Module], str | None] | None = None
    prepare: Callable[[Any, nn.Module, Backprop], None] | None = None


CRITERIA: Registry[Criterion] = Registry("prune criterion")


def register_criterion(
    name: str,
    *,
    needs_grad: bool,
    check: Callable[[nn.Module], str | None] | None = None,
    prepare: Callable[[Any, nn.Module, Backprop], None] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated ``make(**options)`` as criterion ``name``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        CRITERIA.register(name)(
            Criterion(name=name, make=fn, needs_grad=needs_grad, check=check, prepare=prepare)
        )
        return fn

    return deco


# Importing the modules registers them (after CRITERIA exists).
from compress.prune.criteria import bn_scale as _bn_scale  # noqa: E402,F401
from compress.prune.criteria import head_gate as _head_gate  # noqa: E402,F401
from compress.prune.criteria import magnitude as _magnitude  # noqa: E402,F401
from compress.prune.criteria import taylor as _taylor  # noqa: E402,F401
