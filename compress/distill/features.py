"""Feature capture by forward hooks and module-name patterns (no edits to model code).

A *tap* names a module by its qualified name (``blocks.0.attn.qk``) and a
side: ``output`` (what the module returns; the first element if it returns a
tuple) or ``input`` (its first positional argument). ``capture_features``
registers the hooks for the duration of a ``with`` block and fills a dict,
one entry per tap, on every forward; the last forward wins.

Example:
    >>> import torch
    >>> from compress.models import build_model
    >>> m = build_model("tiny-vit", {"dim": 16, "depth": 2})
    >>> with capture_features(m, taps_matching(m, "blocks.*.attn.qk")) as feats:
    ...     _ = m(torch.zeros(2, 1, 8, 8))
    >>> sorted(feats), tuple(feats["blocks.1.attn.qk"].shape)
    (['blocks.0.attn.qk', 'blocks.1.attn.qk'], (2, 4, 17, 17))
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

Side = Literal["input", "output"]


@dataclass(frozen=True)
class Tap:
    """Where a feature is read: a module's first input or its output.

    Attributes:
        module: Qualified module name (as in ``model.named_modules()``).
        side: ``output`` or ``input``.
    """

    module: str
    side: Side = "output"


def first_tensor(value: Any) -> torch.Tensor:
    """The tensor itself, or the first element of a tuple/list output (HF-style blocks)."""
    if isinstance(value, (tuple, list)):
        value = value[0]
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"expected a tensor (or a tuple starting with one), got {type(value).__name__}")
    return value


def modules_matching(model: nn.Module, pattern: str) -> list[str]:
    """Qualified names of the modules of ``model`` equal to ``pattern`` or matching it as a glob.

    Raises:
        ValueError: Nothing matches; the message shows a few module names.
    """
    names = [n for n, _ in model.named_modules() if n]
    hits = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
    if not hits:
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise ValueError(f"no module of {type(model).__name__} matches {pattern!r}; modules: {shown}")
    return hits


def taps_matching(model: nn.Module, pattern: str, side: Side = "output") -> dict[str, Tap]:
    """One tap per module matching ``pattern``, keyed by the module name."""
    return {n: Tap(n, side) for n in modules_matching(model, pattern)}


@contextlib.contextmanager
def capture_features(
    model: nn.Module, taps: Mapping[str, Tap], *, detach: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the tapped tensors of every forward run inside the block.

    Hooks are registered in the order of ``taps`` and before any hook the
    caller registers later, so an ``input`` tap sees the module's input
    before a later pre-hook replaces it.

    Args:
        model: The model to observe (not modified; hooks are removed on exit).
        taps: ``{key: Tap}``; the yielded dict gets the same keys.
        detach: Store detached tensors (for a teacher run under ``no_grad`` this changes nothing).

    Yields:
        The dict that the hooks fill.

    Raises:
        KeyError: A tap names a module ``model`` does not have.
    """
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    handles: list[Any] = []

    def store(key: str, value: Any) -> None:
        t = first_tensor(value)
        out[key] = t.detach() if detach else t

    try:
        for key, tap in taps.items():
            if tap.module not in modules:
                raise KeyError(f"tap {key!r}: {type(model).__name__} has no module {tap.module!r}")
            mod = modules[tap.module]
            if tap.side == "input":
                handles.append(mod.register_forward_pre_hook(lambda _m, args, k=key: store(k, args[0])))
            else:
                handles.append(mod.register_forward_hook(lambda _m, _a, output, k=key: store(k, output)))
        yield out
    finally:
        for h in handles:
            h.remove()
