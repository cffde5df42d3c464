"""``taylor``: first-order Taylor ``|w * dL/dw|`` summed over the group (Molchanov et al. 2019)."""

from __future__ import annotations

from typing import Any

from compress.prune._criteria import register_criterion


@register_criterion("taylor", needs_grad=True)
def make(**_: Any) -> Any:
    """``GroupTaylorImportance``: reads ``.grad`` left by the calibration loss."""
    import torch_pruning as tp

    return tp.importance.GroupTaylorImportance()
