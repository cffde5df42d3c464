"""Attention as modules inside timm Vision Transformers ("exposed attention", as for BERT).

timm's ``Attention`` computes Q·Kᵀ, softmax and probs·V inline (or in one fused
``scaled_dot_product_attention`` call) from a single fused ``qkv`` projection.
``expose_timm_attention(model)`` gives every such module parameter-free
submodules and a forward that uses them:

=============== ================================================= ===================================
submodule       forward                                            used by
=============== ================================================= ===================================
``q_in``        identity on the input of Q (``k_in``, ``v_in``)   TI's stop-gradient rules (detaching
                                                                   Q/K but not V needs three inputs)
``qk``          ``(q · scale) @ kᵀ`` (``MatMul``)                 ``prepare_qat``; TI score loss
``softmax``     softmax over keys                                   TI-M replaces its output
``pv``          ``probs @ v`` (``MatMul``)                        ``prepare_qat``
=============== ================================================= ===================================

When the three inputs are the same tensor (always, except while TI detaches
some of them) ``qkv`` runs once, so the exposed model and its ONNX export have
the same single fused projection as timm's; otherwise ``qkv`` runs on each
input and Q, K and V are taken from the matching run. The arithmetic is timm's
non-fused path (attention masks and ``gate`` are supported as there). The
change swaps the module's class for a subclass (same parameters, same
state-dict keys) and is a recorded transform (``expose_timm_attention``) that
``load_model`` replays.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compress.models.layers import MatMul, Softmax
from compress.models.registry import record_transform, register_transform

PARTS = ("q_in", "k_in", "v_in", "qk", "softmax", "pv")
"""The submodules an exposed timm attention has."""


class Passthrough(nn.Module):
    """Identity as a module of compress's own: a point where a hook can read or replace a tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _timm_attention_class() -> type[nn.Module] | None:
    try:
        from timm.models.vision_transformer import Attention
    except ImportError:
        return None
    return Attention


def _exposed_forward(
    self: Any, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
) -> torch.Tensor:
    from timm.layers import maybe_add_mask, resolve_self_attn_mask

    b, n, _ = x.shape
    gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
    xq, xk, xv = self.q_in(x), self.k_in(x), self.v_in(x)

    def split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = t.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    if xq is xk and xk is xv:
        q, k, v = split(self.qkv(xq))
    else:  # Teacher Intervention detached some inputs: each of Q, K, V from its own input
        q, _, _ = split(self.qkv(xq))
        _, k, _ = split(self.qkv(xk))
        _, _, v = split(self.qkv(xv))
    q, k = self.q_norm(q), self.k_norm(k)
    scores = self.qk(q * self.scale, k.transpose(-2, -1))
    scores = maybe_add_mask(scores, resolve_self_attn_mask(n, scores, attn_mask, is_causal))
    probs = self.attn_drop(self.softmax(scores))
    out = self.pv(probs, v)
    out = out.transpose(1, 2).reshape(b, n, -1)
    out = self.norm(out)
    if gate is not None:
        out = out * gate
    return self.proj_drop(self.proj(out))


_exposed_classes: dict[type, type] = {}


def _exposed_class(cls: type[nn.Module]) -> type[nn.Module]:
    if cls not in _exposed_classes:
        _exposed_classes[cls] = type(f"Exposed{cls.__name__}", (cls,), {"forward": _exposed_forward})
    return _exposed_classes[cls]


def timm_attention_modules(model: nn.Module) -> list[str]:
    """Qualified names of the timm ``Attention`` modules of ``model`` (``[]``: none, or timm absent)."""
    cls = _timm_attention_class()
    if cls is None:
        return []
    return [n for n, m in model.named_modules() if isinstance(m, cls)]


def is_exposed(model: nn.Module) -> bool:
    """Whether ``model`` has timm attention modules and all of them are exposed."""
    mods = dict(model.named_modules())
    names = timm_attention_modules(model)
    return bool(names) and all(
        all(isinstance(getattr(mods[n], p, None), nn.Module) for p in PARTS) for n in names
    )


def expose_timm_attention(model: nn.Module) -> int:
    """Expose every timm ViT self-attention of ``model`` in place (idempotent).

    Returns:
        The number of attention modules exposed now (0: none, or already exposed).
    """
    names = timm_attention_modules(model)
    if not names or is_exposed(model):
        return 0
    mods = dict(model.named_modules())
    for n in names:
        attn = mods[n]
        attn.q_in, attn.k_in, attn.v_in = Passthrough(), Passthrough(), Passthrough()
        attn.qk, attn.softmax, attn.pv = MatMul(), Softmax(), MatMul()
        attn.__class__ = _exposed_class(type(attn))
    record_transform(model, "expose_timm_attention", {})
    return len(names)


@register_transform("expose_timm_attention")
def _replay_expose(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    del config
    expose_timm_attention(model)
    return model
