"""Write a pruned Hugging Face model as a plain transformers directory, where its config can describe it.

``save_pretrained`` writes a ``config.json`` that a fresh ``from_pretrained``
builds from: every layer gets ``num_attention_heads`` heads of width
``hidden_size / num_attention_heads`` and ``intermediate_size`` FFN neurons.
So a pruned model is written only when every layer has the same FFN width and
the heads are unpruned: transformers 5 dropped ``pruned_heads``, and BERT's
config cannot say "fewer heads of the same width" (``num_heads * head_size``
must equal ``hidden_size``). Otherwise the reason is returned and the model is
still saved by compress (architecture spec + state dict).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from torch import nn

from compress.prune._graph import attention_modules, head_width, heads_of

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
)
"""Tokenizer files copied from the source directory when present."""


def hf_export_blocker(net: nn.Module) -> str | None:
    """Why ``net`` (a transformers model) cannot be written as a transformers directory, or None."""
    cfg = getattr(net, "config", None)
    if cfg is None or not hasattr(cfg, "num_attention_heads"):
        return "not a transformers model with a config"
    attn = attention_modules(net)
    heads = {heads_of(a) for a in attn.values()}
    widths = {head_width(a) for a in attn.values()}
    if heads and (
        heads != {int(cfg.num_attention_heads)} or widths != {cfg.hidden_size // cfg.num_attention_heads}
    ):
        return (
            f"attention heads were pruned (heads per layer {[heads_of(a) for a in attn.values()]}, "
            f"head width {sorted(widths)}): a transformers config cannot express fewer heads of the same "
            "width (num_attention_heads * head size must equal hidden_size, and transformers 5 has no "
            "pruned_heads); "
            "prune with prune_heads: false to get a transformers directory"
        )
    ffn = {
        m.dense.out_features
        for n, m in net.named_modules()
        if n.endswith(".intermediate") and isinstance(getattr(m, "dense", None), nn.Linear)
    }
    if len(ffn) > 1:
        return (
            f"FFN widths differ between layers ({sorted(ffn)}): intermediate_size is one number; use "
            "global_ranking: false for uniform widths"
        )
    return None


def save_hf_directory(net: nn.Module, out_dir: Path, *, tokenizer_dir: Path | None = None) -> dict[str, Any]:
    """Write ``net`` with ``save_pretrained`` (config updated to its widths) plus tokenizer files.

    Returns:
        ``{"written": True, "path": ...}`` or ``{"written": False, "reason": ...}``.
    """
    why = hf_export_blocker(net)
    if why is not None:
        return {"written": False, "reason": why}
    cfg = net.config  # type: ignore[union-attr]
    ffn = [
        m.dense.out_features
        for n, m in net.named_modules()
        if n.endswith(".intermediate") and isinstance(getattr(m, "dense", None), nn.Linear)
    ]
    if ffn:
        cfg.intermediate_size = ffn[0]
    layers = [
        m for n, m in net.named_modules() if n.endswith("encoder.layer") and isinstance(m, nn.ModuleList)
    ]
    if layers:
        cfg.num_hidden_layers = len(layers[0])
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    net.save_pretrained(str(tmp))  # type: ignore[operator]
    copied = []
    if tokenizer_dir is not None and tokenizer_dir.is_dir():
        for f in TOKENIZER_FILES:
            if (tokenizer_dir / f).is_file():
                shutil.copy2(tokenizer_dir / f, tmp / f)
                copied.append(f)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)  # the folder appears whole or not at all
    return {"written": True, "path": str(out_dir), "tokenizer_files": copied}
