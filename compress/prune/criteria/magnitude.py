"""``magnitude``: group Lp norm of the weights (DepGraph's default); needs no data."""

from __future__ import annotations

from typing import Any

from compress.prune._criteria import register_criterion


@register_criterion("magnitude", needs_grad=False)
def make(p: int = 2, **_: Any) -> Any:
    """``GroupMagnitudeImportance(p)``: L1 (``p=1``) or L2 (``p=2``) norm over the coupled group."""
    import torch_pruning as tp

    return tp.importance.GroupMagnitudeImportance(p=p)
