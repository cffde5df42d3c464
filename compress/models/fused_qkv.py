"""One GEMM for a BERT-family self-attention's query, key and value projections (an inference rewrite).

A Hugging Face BERT-family self-attention (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM: the module at
``*encoder.layer.<i>.attention.self``) projects the same hidden states three times, through ``query``,
``key`` and ``value``. ``fuse_qkv(model)`` replaces each such module with a ``FusedQKVSelfAttention``
whose one linear layer holds the three weights concatenated, so one matrix product replaces three; the
rest of the forward (head split, the model's configured attention function, the output reshape) is the
library's own, and the parameters are copied, not retrained. The function is the same up to
floating-point rounding: each output element is the same dot product (bit-identical on the CPU in the
tests).

Why: on a GPU, small Transformers are bound by kernel count, not arithmetic. On an H100 at batch 32 x 128
tokens (``benchmarks/gpu_fusion_probe.py``, docs/results/latency-floor-h100/fusion-probe-qkv.md) the fused
projection took the pruned 3-layer MiniLM from 35 to 29 kernels and its GPU time from 0.205 to 0.182 ms
p95, the 2-layer one from 0.143 to 0.127 ms; the FP32 6-layer teacher, bound by its arithmetic, from
2.913 to 2.878 ms. Runtimes that compile whole graphs (TensorRT, ONNX Runtime's transformer optimizer)
make the same fusion themselves; the ``torch-compile`` runtime applies this rewrite to every model it
loads, teacher and artifact alike.

Only what is exactly equivalent is rewritten: a self-attention whose three projections are plain
``nn.Linear`` layers over the same input width, with biases on all or none, in an encoder (no decoder
cache, no cross-attention) and without ``compress``'s exposed-attention submodules (quantization and
Teacher Intervention hook those; a fake-quantized projection is not an ``nn.Linear``). Anything else is
left as it is.

Example:
    >>> from compress.models import build_model
    >>> m = build_model("hf", {"hf_config": {"model_type": "bert", "hidden_size": 32,
    ...     "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
    ...     "vocab_size": 100}, "num_labels": 3})  # doctest: +SKIP
    >>> fuse_qkv(m)  # doctest: +SKIP
    2
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from compress.models.hf_attention import PARTS, self_attention_modules

_COPIED = (
    "config",
    "num_attention_heads",
    "attention_head_size",
    "all_head_size",
    "scaling",
    "dropout",
    "is_decoder",
    "is_causal",
    "layer_idx",
)
"""Attributes of the library's self-attention that its forward (or its attention function) reads."""


class FusedQKVSelfAttention(nn.Module):
    """A BERT-family self-attention computing query, key and value with one linear layer.

    Built from the library's module by ``fuse_qkv``; its forward has the library's signature and
    returns ``(context (B, L, all_head_size), attention weights or None)`` as the library's does.

    Attributes:
        qkv: ``Linear(hidden, q + k + v)``: the three projections' weights (and biases) stacked.
        split: The output widths of query, key and value, in that order.
    """

    _functions: Any = None

    def __init__(self, attn: nn.Module, eager: Callable[..., Any]) -> None:
        super().__init__()
        parts = (attn.query, attn.key, attn.value)
        first = parts[0].weight
        self.split = [p.out_features for p in parts]
        self.qkv = nn.Linear(
            parts[0].in_features,
            sum(self.split),
            bias=parts[0].bias is not None,
            device=first.device,
            dtype=first.dtype,
        )
        with torch.no_grad():
            self.qkv.weight.copy_(torch.cat([p.weight for p in parts]))
            if self.qkv.bias is not None:
                self.qkv.bias.copy_(torch.cat([p.bias for p in parts]))
        for name in _COPIED:
            if hasattr(attn, name):
                setattr(self, name, getattr(attn, name))
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        # transformers' registry of attention functions, looked up per call (the model's configured
        # implementation may change); a class attribute, so copies of the model share the one registry
        type(self)._functions = ALL_ATTENTION_FUNCTIONS
        self._eager = eager
        self.train(attn.training)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        encoder_hidden_states: torch.Tensor | None = None,
        *,
        query_rows: int | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``query_rows``: attend from the first this many positions only (keys and values: all of them);
        the context is then ``(B, query_rows, all_head_size)``. A 4-D mask (``sdpa``, ``eager``) is sliced
        to those query rows; ``compress.models.first_token`` uses it for a classifier's last layer."""
        if past_key_values is not None or encoder_hidden_states is not None:
            raise RuntimeError(
                "FusedQKVSelfAttention is an encoder self-attention: it takes no key/value cache and no "
                "encoder states (fuse_qkv leaves decoders and cross-attention unfused)"
            )
        b, t = hidden_states.shape[:-1]
        q, k, v = self.qkv(hidden_states).split(self.split, dim=-1)
        rows = t if query_rows is None else query_rows
        if rows != t:
            q = q[:, :rows]
            if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] != 1:
                attention_mask = attention_mask[:, :, :rows]  # (B, 1, T, T); a (B, 1, 1, T) mask broadcasts
        hd = self.attention_head_size
        q = q.reshape(b, rows, -1, hd).transpose(1, 2)
        k, v = (x.view(b, t, -1, hd).transpose(1, 2) for x in (k, v))
        attention = self._functions.get_interface(self.config._attn_implementation, self._eager)
        out, weights = attention(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=0.0 if not self.training else self.dropout.p,
            scaling=self.scaling,
            **kwargs,
        )
        return out.reshape(b, rows, -1).contiguous(), weights


def _eager_attention(attn: nn.Module) -> Callable[..., Any] | None:
    """The ``eager_attention_forward`` of the module's own modeling file (each family defines one)."""
    return getattr(sys.modules.get(type(attn).__module__), "eager_attention_forward", None)


def fusable(attn: nn.Module) -> bool:
    """Whether ``attn`` is a self-attention that ``fuse_qkv`` rewrites exactly (see the module doc)."""
    parts = [getattr(attn, n, None) for n in ("query", "key", "value")]
    if not all(type(p) is nn.Linear for p in parts):  # subclasses (fake-quantized layers) stay as they are
        return False
    if len({p.in_features for p in parts}) != 1 or len({p.bias is None for p in parts}) != 1:
        return False
    if len({(p.weight.dtype, p.weight.device) for p in parts}) != 1:
        return False
    if getattr(attn, "is_decoder", False) or getattr(attn, "is_cross_attention", False):
        return False
    if any(isinstance(getattr(attn, p, None), nn.Module) for p in PARTS):  # exposed attention
        return False
    config = getattr(attn, "config", None)
    return (
        hasattr(attn, "attention_head_size")
        and hasattr(attn, "scaling")
        and isinstance(getattr(attn, "dropout", None), nn.Dropout)
        and getattr(config, "_attn_implementation", None) is not None
        and _eager_attention(attn) is not None
    )


def fusable_attentions(model: nn.Module) -> list[str]:
    """Qualified names of the self-attentions of ``model`` that ``fuse_qkv`` would rewrite."""
    mods = dict(model.named_modules())
    return [name for name in self_attention_modules(model) if fusable(mods[name])]


def fuse_qkv(model: nn.Module) -> int:
    """Replace, in place, every exactly fusable self-attention of ``model`` by a ``FusedQKVSelfAttention``.

    Returns how many were replaced (0 for a model without BERT-family self-attention). The model
    computes the same function; its state dict changes (``...self.qkv.weight`` instead of the three
    projections), so fuse a copy for inference and keep the original for saving and training.
    """
    names = fusable_attentions(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, fused(getattr(parent, child)))
    return len(names)


def fused(attn: nn.Module) -> FusedQKVSelfAttention:
    """``attn`` as a ``FusedQKVSelfAttention`` (itself if it already is one); ``attn`` must be ``fusable``."""
    if isinstance(attn, FusedQKVSelfAttention):
        return attn
    if not fusable(attn):
        raise ValueError(f"{type(attn).__name__} cannot be fused exactly (see fusable)")
    eager = _eager_attention(attn)
    assert eager is not None  # checked by fusable
    return FusedQKVSelfAttention(attn, eager)
