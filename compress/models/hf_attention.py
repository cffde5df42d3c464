"""Attention as modules inside Hugging Face BERT-family models ("exposed attention").

Transformers computes attention in a function (``sdpa`` or ``eager``), so the
signals that quantization and Teacher Intervention work on (the inputs of
Q·Kᵀ and probs·V, the masked scores, the probabilities) are not module inputs
or outputs there. ``expose_attention(model)`` gives every self-attention of a
BERT-family model (the ``hf-bert`` feature layout: ``*encoder.layer.<i>.
attention.self``) four parameter-free submodules and switches the model to the
attention function ``compress`` registered with transformers'
``AttentionInterface`` (its mask is transformers' ``eager`` mask):

============== ============================================= =====================================
submodule      forward                                        used by
============== ============================================= =====================================
``qk``         ``(q · scaling) @ kᵀ`` (``MatMul``)           ``prepare_qat`` (both inputs quantized)
``score_mask`` ``scores + additive mask`` (``AddMask``)      TI score loss (masked entries <= -100)
``softmax``    softmax over keys (``Softmax``)                TI-M replaces its output
``pv``         ``probs @ v`` (``MatMul``)                     ``prepare_qat``
============== ============================================= =====================================

The arithmetic is the ``eager`` implementation's (scaling is applied to ``q``
before the product, as in the built-in ``tiny-vit``), so an exposed model
computes the same function; no transformers code is edited. The change is a
registered model transform (``expose_attention``), recorded on the model and
replayed by ``load_model``, so exposed (and then quantized) models save and
reload from spec + state dict. ONNX export traces the same modules.

Example:
    >>> from compress.models import build_model
    >>> m = build_model("hf", {"hf_config": {"model_type": "bert", "hidden_size": 32,
    ...     "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64,
    ...     "vocab_size": 100}, "num_labels": 3})  # doctest: +SKIP
    >>> expose_attention(m)  # doctest: +SKIP
    1
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from compress.models.layers import MatMul, Softmax
from compress.models.registry import record_transform, register_transform

IMPLEMENTATION = "compress"
"""The name of the attention function registered with transformers."""

PARTS = ("qk", "score_mask", "softmax", "pv")
"""The submodules an exposed self-attention has."""


class AddMask(nn.Module):
    """``scores + mask`` (an additive attention mask, broadcast; ``None``: no mask) as a module."""

    def forward(self, scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return scores if mask is None else scores + mask


def exposed_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **_: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' attention-function signature, computed through ``module``'s exposed submodules.

    ``query``/``key``/``value`` are ``(B, H, L, d)``; returns ``(context (B, L, H, d), probabilities)``.
    A module without the submodules (e.g. a cross-attention) is computed with the same arithmetic in
    plain torch.
    """
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    mask = attention_mask[:, :, :, : key.shape[-2]] if attention_mask is not None else None
    if all(isinstance(getattr(module, p, None), nn.Module) for p in PARTS):
        scores = module.score_mask(module.qk(query * scaling, key.transpose(2, 3)), mask)
        probs = module.softmax(scores)
        probs = F.dropout(probs, p=dropout, training=module.training)
        out = module.pv(probs, value)
    else:
        scores = torch.matmul(query * scaling, key.transpose(2, 3))
        if mask is not None:
            scores = scores + mask
        probs = F.dropout(torch.softmax(scores, dim=-1), p=dropout, training=module.training)
        out = torch.matmul(probs, value)
    return out.transpose(1, 2).contiguous(), probs


_registered = False


def _register() -> None:
    """Register the attention function and its (eager) mask with transformers, once."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(IMPLEMENTATION, exposed_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, eager_mask)
    _registered = True


def self_attention_modules(model: nn.Module) -> list[str]:
    """Qualified names of the BERT-family self-attention modules of ``model`` (``[]``: not BERT-like)."""
    from compress.distill.layouts import find_layout

    layout = find_layout(model)
    if layout is None or layout.name != "hf-bert":
        return []
    out = []
    for lay in layout.layers:
        assert lay.attention is not None  # hf-bert layers always have attention taps
        out.append(lay.attention.taps["q"].module.rsplit(".", 1)[0])
    return out


def is_exposed(model: nn.Module) -> bool:
    """Whether ``model`` is a BERT-family model whose self-attentions are all exposed."""
    names = self_attention_modules(model)
    mods = dict(model.named_modules())
    return bool(names) and all(
        all(isinstance(getattr(mods[n], p, None), nn.Module) for p in PARTS) for n in names
    )


def expose_attention(model: nn.Module) -> int:
    """Expose the self-attention of a BERT-family ``model`` in place (idempotent).

    Returns:
        The number of self-attention modules given submodules now (0: not a BERT-family
        model, or already exposed).
    """
    names = self_attention_modules(model)
    if not names or is_exposed(model):
        return 0
    _register()
    mods = dict(model.named_modules())
    for n in names:
        sa = mods[n]
        sa.qk = MatMul()
        sa.score_mask = AddMask()
        sa.softmax = Softmax()
        sa.pv = MatMul()
    configs = {id(c): c for c in (getattr(m, "config", None) for m in model.modules()) if c is not None}
    for cfg in configs.values():
        if hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = IMPLEMENTATION
    record_transform(model, "expose_attention", {})
    return len(names)


@register_transform("expose_attention")
def _replay_expose(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    del config
    expose_attention(model)
    return model
