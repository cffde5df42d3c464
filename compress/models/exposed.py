"""One entry point for exposed attention: every implementation that turns a library's attention into modules.

``expose(model)`` applies each registered exposer (Hugging Face BERT family,
``compress.models.hf_attention``; timm ViT, ``compress.models.timm_attention``) and
returns how many attention modules it exposed. ``prepare_qat`` calls it (so both
attention matmuls get quantizers) and so does the Teacher Intervention objective (so
the TI teacher's scores and probabilities are module outputs). A model of another
architecture is left unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from compress.models.hf_attention import expose_attention as _expose_hf
from compress.models.timm_attention import expose_timm_attention as _expose_timm

EXPOSERS: tuple[Callable[[nn.Module], int], ...] = (_expose_hf, _expose_timm)
"""``exposer(model) -> number of attention modules exposed`` (idempotent; 0 when not its architecture)."""


def expose(model: nn.Module) -> int:
    """Expose every attention of ``model`` that a registered exposer recognises; returns the count."""
    return sum(f(model) for f in EXPOSERS)
