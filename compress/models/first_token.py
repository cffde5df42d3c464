"""The last encoder layer computed for the first token only (an inference rewrite for classifiers).

A BERT-family sequence classifier reads one position of its last layer: BERT's pooler takes
``hidden[:, 0]``, and the classification heads of RoBERTa, XLM-R, CamemBERT and ELECTRA take
``features[:, 0, :]``. Every other position of the last layer is computed and thrown away.
``first_token_last_layer(model)`` replaces that layer by a ``FirstTokenLayer``: the keys and values still
come from every token (the first token attends to all of them), but the query, the attention output
projection, both LayerNorms and the feed-forward block run on the first token alone. Each remaining
output element is the same dot product as before; only the order of some sums may differ (fp16 logits
within 1e-4 on the H100 in the probe below; the tests check the CPU logits against the original model's).

Why: on an H100 at batch 32 x 128 tokens (``benchmarks/gpu_fusion_probe.py``,
docs/results/latency-floor-h100/fusion-probe-qkv.md, GPU p95, with fused QKV on both sides) the rewrite took
the pruned 2-layer MiniLM from 0.127 to 0.104 ms, the 3-layer one from 0.182 to 0.156 ms and the FP32
6-layer teacher from 2.878 to 2.578 ms. The ``torch-compile`` runtime applies it to every model it loads,
teacher and artifact alike, so ratios stay fair.

Only what is exactly equivalent is rewritten, and the model is otherwise left as it is:

* a ``compress`` ``SourceModel`` from Hugging Face on token ids, whose ``forward`` returns the logits and
  nothing else, so no caller can see the missing positions;
* its network one of ``FIRST_TOKEN_HEADS`` (heads known to read position 0 only; BERT with its pooler);
* the last layer in BERT's layout (``attention.self``, ``attention.output``, ``intermediate``,
  ``output``), not a decoder layer and without cross-attention;
* its self-attention plain (``fuse_qkv``'s conditions: plain ``nn.Linear`` projections, not exposed, so
  not fake-quantized; the rewrite then fuses it) or already fused by ``fuse_qkv``, with the ``sdpa`` or
  ``eager`` attention function (the two whose 4-D masks are sliced to the first query row).

A model under this rewrite does fewer MACs (a pruned 2-layer MiniLM at 128 tokens 37 % fewer:
benchmarks/gpu_floor_by_batch.py); the roofline floor that ``compress bench`` and the validate stage report
counts the MACs the runtime executes (``Session.executed_model``), so the rewrite does not flatter it.

Example:
    >>> from compress.models import build_model
    >>> m = build_model("hf", {"hf_config": {"model_type": "bert", "hidden_size": 32,
    ...     "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
    ...     "vocab_size": 100}, "num_labels": 3})  # doctest: +SKIP
    >>> first_token_last_layer(m)  # doctest: +SKIP
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compress.models.fused_qkv import FusedQKVSelfAttention, fusable, fused

FIRST_TOKEN_HEADS = frozenset(
    {
        "BertForSequenceClassification",
        "RobertaForSequenceClassification",
        "XLMRobertaForSequenceClassification",
        "CamembertForSequenceClassification",
        "ElectraForSequenceClassification",
    }
)
"""Hugging Face classifier classes whose head reads only position 0 of the last layer."""

_MASKED_FUNCTIONS = ("sdpa", "eager")
"""Attention implementations whose mask is a 4-D additive or boolean tensor (or ``None``)."""


class FirstTokenLayer(nn.Module):
    """A BERT-layout encoder layer whose output is its first token's only: ``(B, 1, hidden)``.

    Attributes:
        layer: The library's layer, its self-attention a ``FusedQKVSelfAttention`` (which computes the
            first token's query and every token's keys and values in one GEMM); its other weights are used
            as they are (shared, not copied).
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or kwargs.pop("past_key_values", None) is not None:
            raise RuntimeError(
                "FirstTokenLayer is an encoder layer: it takes no encoder states and no key/value cache"
            )
        kwargs.pop("encoder_attention_mask", None)
        first = hidden_states[:, :1]
        # a FusedQKVSelfAttention: ``first_token_last_layer`` fuses the layer's attention if it is not yet
        context, _ = self.layer.attention.self(hidden_states, attention_mask, query_rows=1, **kwargs)
        out = self.layer.attention.output(context, first)
        return self.layer.output(self.layer.intermediate(out), out)


def _last_layer(model: nn.Module) -> tuple[nn.ModuleList, nn.Module] | None:
    """The encoder's layer list and last layer of a first-token classifier, or ``None``."""
    from compress.models.external import SourceModel

    if not isinstance(model, SourceModel) or model.source != "hf" or model.input_kind != "token_ids":
        return None
    net = model.net
    if type(net).__name__ not in FIRST_TOKEN_HEADS:
        return None
    base = getattr(net, "base_model", None)
    if type(net).__name__ == "BertForSequenceClassification" and getattr(base, "pooler", None) is None:
        return None
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return None
    return layers, layers[-1]


def first_token_rewritable(model: nn.Module) -> bool:
    """Whether ``first_token_last_layer`` rewrites ``model`` exactly (see the module doc)."""
    found = _last_layer(model)
    if found is None:
        return False
    layer = found[1]
    attention = getattr(layer, "attention", None)
    sa = getattr(attention, "self", None)
    if sa is None or not all(hasattr(layer, n) for n in ("intermediate", "output")):
        return False
    if not hasattr(attention, "output") or getattr(layer, "is_decoder", False):
        return False
    if hasattr(layer, "crossattention"):
        return False
    if not (isinstance(sa, FusedQKVSelfAttention) or fusable(sa)):
        return False
    return getattr(sa.config, "_attn_implementation", None) in _MASKED_FUNCTIONS


def first_token_last_layer(model: nn.Module) -> bool:
    """Replace, in place, the last encoder layer of a first-token classifier by a ``FirstTokenLayer``.

    Returns whether it did (``False``: ``model`` is left as it is). The logits are unchanged; the
    model's state dict changes (``...layer.<last>.layer.*``), so rewrite a copy for inference and keep
    the original for saving and training.
    """
    if not first_token_rewritable(model):
        return False
    layers, last = _last_layer(model)  # type: ignore[misc]  # checked just above
    last.attention.self = fused(last.attention.self)  # the layer attends through the fused module
    layers[len(layers) - 1] = FirstTokenLayer(last)
    return True
