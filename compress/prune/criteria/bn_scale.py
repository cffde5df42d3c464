"""``bn_scale``: ``|gamma|`` of the BatchNorm after each convolution (Liu et al. 2017, network slimming).

A channel whose BatchNorm scale is near zero contributes almost nothing downstream.
CNNs only: a model without BatchNorm, or with attention, is refused with a message
that names the alternatives.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from compress.prune._criteria import register_criterion


def _check(model: nn.Module) -> str | None:
    from compress.prune._graph import attention_modules

    if attention_modules(model):
        return (
            "importance: bn_scale scores CNN channels by their BatchNorm scale; this model has attention "
            "layers (heads and FFN neurons have no BatchNorm): use magnitude, taylor or head_gate"
        )
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return (
            "importance: bn_scale needs BatchNorm layers after the convolutions; this model has none: "
            "use magnitude or taylor"
        )
    return None


@register_criterion("bn_scale", needs_grad=False, check=_check)
def make(**_: Any) -> Any:
    """``BNScaleImportance``: ``|gamma|`` of the group's BatchNorm layers."""
    import torch_pruning as tp

    return tp.importance.BNScaleImportance()
