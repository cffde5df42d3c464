"""Feature layouts: where an architecture keeps its hidden states and attention signals.

A *feature layout* tells the distillation losses which modules to hook, never how to
edit the model. Per layer it gives the hidden-state tap (the layer's output) and, for
Transformers, the Q/K/V taps with the rule that turns them into per-head tensors
``(B, H, L, d)``; for the whole model the embedding-output tap (hidden state 0, as in
TinyBERT) and how to build the key-padding mask from the inputs. Attention scores and
probabilities are computed from the hooked Q and K (``compress.distill.losses.
attention_scores``), so a layout works whatever attention kernel the model runs (Hugging
Face ``sdpa``/``eager``, timm fused attention).

``FEATURE_LAYOUTS`` holds one *finder* per architecture: ``finder(model) -> FeatureLayout
| None`` recognises the model by its structure (module names and attributes) at any name
prefix and returns ``None`` otherwise; ``find_layout`` asks them in registration order.

============== ========================================= ============================ ==========
layout         layers (hidden state = layer output)      embedding (hidden state 0)   attention
============== ========================================= ============================ ==========
``tiny-vit``   ``*blocks.<i>`` with ``attn.{q,k,v}``     input of ``blocks.0``        q, k, v
``hf-bert``    ``*encoder.layer.<i>``                    output of ``*embeddings``    query, key,
               (``attention.self.{query,key,value}``)                                 value; pad mask
``timm-vit``   ``*blocks.<i>`` with ``attn.qkv``         input of ``blocks.0``        fused qkv
``resnet``     ``*layer1`` .. ``*layer4``                input of ``layer1``          none
============== ========================================= ============================ ==========

Adding an architecture is one finder (see ``docs/distillation.md``)::

    @FEATURE_LAYOUTS.register("my-net")
    def _my_net(model):
        if not hasattr(model, "stages"):
            return None
        return FeatureLayout("my-net", layers=tuple(LayerTaps(Tap(f"stages.{i}")) for i in range(4)))
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compress._utils.registry import Registry
from compress.distill.features import Tap

QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
SplitFn = Callable[[Mapping[str, torch.Tensor], int], QKV]
"""``split(captured, heads) -> (q, k, v)``, each ``(B, H, L, d)``, from the ``AttentionTaps.taps`` tensors."""
MaskFn = Callable[[nn.Module, torch.Tensor], "torch.Tensor | None"]
"""``mask(model, inputs) -> (B, L) bool`` (``True`` = real token) or ``None`` (no padding)."""


def _heads_split(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = t.shape
    return t.reshape(b, n, heads, -1).transpose(1, 2)


def split_separate(captured: Mapping[str, torch.Tensor], heads: int) -> QKV:
    """Q, K, V from three projections ``(B, L, H·d)`` (tiny-vit, Hugging Face BERT)."""
    return (
        _heads_split(captured["q"], heads),
        _heads_split(captured["k"], heads),
        _heads_split(captured["v"], heads),
    )


def split_fused(captured: Mapping[str, torch.Tensor], heads: int) -> QKV:
    """Q, K, V from one fused projection ``(B, L, 3·H·d)``, split as timm's ``Attention.forward``.

    When the layout also taps ``q_norm``/``k_norm`` (timm ``qk_norm=True``), their outputs
    (already ``(B, H, L, d)``) replace the raw Q and K.
    """
    qkv = captured["qkv"]
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    return captured.get("q_norm", q), captured.get("k_norm", k), v


@dataclass(frozen=True)
class AttentionTaps:
    """Where one layer's self-attention Q/K/V are read.

    Attributes:
        taps: ``{name: Tap}`` handed to ``split`` by name (``q``/``k``/``v`` or ``qkv``).
        heads: Number of attention heads.
        split: Turns the captured tensors into per-head ``(q, k, v)``.
    """

    taps: Mapping[str, Tap]
    heads: int
    split: SplitFn = split_separate


@dataclass(frozen=True)
class LayerTaps:
    """One layer: its hidden state (output) and, for a Transformer layer, its attention.

    Attributes:
        hidden: The layer's output.
        attention: Q/K/V taps, or ``None`` (no attention, e.g. a ResNet stage).
    """

    hidden: Tap
    attention: AttentionTaps | None = None


@dataclass(frozen=True)
class FeatureLayout:
    """Where an architecture's features live (module names only; the model is not kept).

    Hidden states are numbered as in TinyBERT: 0 = the embedding output (if the layout
    has one), ``l`` = the output of layer ``l`` (1-based). Attention layers are numbered
    ``1..len(layers)``.

    Attributes:
        name: The finder's registry name (or ``glob`` for YAML patterns).
        layers: One entry per layer, in forward order.
        embedding: Tap of the embedding output, or ``None``.
        key_mask: Builds the key-padding mask from the inputs, or ``None`` (never padded).
    """

    name: str
    layers: tuple[LayerTaps, ...]
    embedding: Tap | None = None
    key_mask: MaskFn | None = field(default=None, compare=False)

    @property
    def num_layers(self) -> int:
        """Number of layers (the largest hidden-state index)."""
        return len(self.layers)

    @property
    def has_attention(self) -> bool:
        """Whether every layer has attention taps."""
        return bool(self.layers) and all(lay.attention is not None for lay in self.layers)

    def hidden_tap(self, index: int) -> Tap:
        """The tap of hidden state ``index`` (0 = embedding output).

        Raises:
            IndexError: No such hidden state.
        """
        if index == 0 and self.embedding is not None:
            return self.embedding
        if 1 <= index <= len(self.layers):
            return self.layers[index - 1].hidden
        raise IndexError(index)

    def hidden_indices(self) -> list[int]:
        """Valid hidden-state indices, in order."""
        first = 0 if self.embedding is not None else 1
        return list(range(first, len(self.layers) + 1))

    def describe(self) -> dict[str, Any]:
        """JSON summary for metrics: name, layers, heads, first and last taps."""
        return {
            "layout": self.name,
            "layers": len(self.layers),
            "embedding": self.embedding.module if self.embedding is not None else None,
            "heads": [lay.attention.heads if lay.attention is not None else None for lay in self.layers],
            "hidden": [lay.hidden.module for lay in self.layers],
        }


FEATURE_LAYOUTS: Registry[Callable[[nn.Module], FeatureLayout | None]] = Registry("feature layout")
"""Finders ``finder(model) -> FeatureLayout | None`` (``None``: not this architecture)."""


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose names layouts use: without ``DistributedDataParallel``/``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def find_layout(model: nn.Module) -> FeatureLayout | None:
    """The layout from the first registered finder that recognises ``model``, else ``None``."""
    model = unwrap(model)
    for _, finder in FEATURE_LAYOUTS.items():
        layout = finder(model)
        if layout is not None:
            return layout
    return None


def _indexed_children(parent: nn.Module) -> list[nn.Module] | None:
    if isinstance(parent, nn.ModuleList | nn.Sequential) and len(parent) > 0:
        return list(parent)
    return None


def _containers(model: nn.Module, suffix: str) -> list[tuple[str, nn.Module]]:
    """``(prefix, module)`` for every module named ``<prefix><suffix>`` (prefix empty or ending in '.')."""
    out = []
    for name, mod in model.named_modules():
        if name == suffix or name.endswith("." + suffix):
            out.append((name[: len(name) - len(suffix)], mod))
    return out


# --- built-in layouts ------------------------------------------------------------------------------


def _stacked(
    model: nn.Module, suffix: str, per_layer: Callable[[str, nn.Module], LayerTaps | None]
) -> tuple[str, tuple[LayerTaps, ...]] | None:
    """``(prefix, layers)`` for the first ``<prefix><suffix>`` stack whose every child ``per_layer``
    recognises (it gets the child's qualified name and the child, and returns its taps or ``None``)."""
    for prefix, stack in _containers(model, suffix):
        children = _indexed_children(stack)
        if children is None:
            continue
        layers = [per_layer(f"{prefix}{suffix}.{i}", child) for i, child in enumerate(children)]
        if all(lay is not None for lay in layers):
            return prefix, tuple(layers)  # type: ignore[arg-type]
    return None


@FEATURE_LAYOUTS.register("tiny-vit")
def _tiny_vit(model: nn.Module) -> FeatureLayout | None:
    """``compress.models.tiny_vit``: ``blocks.i.attn.{q,k,v}`` with ``attn.num_heads``."""

    def per_layer(b: str, blk: nn.Module) -> LayerTaps | None:
        attn = getattr(blk, "attn", None)
        heads = getattr(attn, "num_heads", None)
        if not isinstance(heads, int) or not all(isinstance(getattr(attn, p, None), nn.Module) for p in "qkv"):
            return None
        taps = {p: Tap(f"{b}.attn.{p}") for p in ("q", "k", "v")}
        return LayerTaps(Tap(b), AttentionTaps(taps, heads, split_separate))

    found = _stacked(model, "blocks", per_layer)
    if found is None:
        return None
    prefix, layers = found
    return FeatureLayout("tiny-vit", layers, embedding=Tap(f"{prefix}blocks.0", "input"))


def _pad_token_id(model: nn.Module) -> int:
    pad = getattr(model, "pad_token_id", None)
    if pad is None:
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    return 0 if pad is None else int(pad)


def _token_mask(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor | None:
    """Key-padding mask of token-id inputs: ``ids != model.pad_token_id`` (default 0)."""
    if inputs.dtype.is_floating_point or inputs.ndim != 2:
        return None
    return inputs != _pad_token_id(unwrap(model))


@FEATURE_LAYOUTS.register("hf-bert")
def _hf_bert(model: nn.Module) -> FeatureLayout | None:
    """Hugging Face BERT family at any prefix: ``*encoder.layer.<i>.attention.self.{query,key,value}``.

    Heads = query width / ``attention_head_size`` (correct after heads were pruned);
    embedding = output of the ``embeddings`` sibling of ``encoder``; mask from the pad id.
    """

    def per_layer(base: str, lay: nn.Module) -> LayerTaps | None:
        sa = getattr(getattr(lay, "attention", None), "self", None)
        query = getattr(sa, "query", None)
        head_size = getattr(sa, "attention_head_size", None)
        if not isinstance(query, nn.Linear) or not isinstance(head_size, int) or head_size <= 0:
            return None
        taps = {
            "q": Tap(f"{base}.attention.self.query"),
            "k": Tap(f"{base}.attention.self.key"),
            "v": Tap(f"{base}.attention.self.value"),
        }
        return LayerTaps(Tap(base), AttentionTaps(taps, query.out_features // head_size))

    found = _stacked(model, "encoder.layer", per_layer)
    if found is None:
        return None
    prefix, layers = found
    emb = f"{prefix}embeddings"
    has_emb = emb in {n for n, _ in model.named_modules()}
    return FeatureLayout("hf-bert", layers, embedding=Tap(emb) if has_emb else None, key_mask=_token_mask)


@FEATURE_LAYOUTS.register("timm-vit")
def _timm_vit(model: nn.Module) -> FeatureLayout | None:
    """timm Vision Transformer at any prefix: ``*blocks.<i>.attn.qkv`` (fused), ``attn.num_heads``."""

    def per_layer(b: str, blk: nn.Module) -> LayerTaps | None:
        attn = getattr(blk, "attn", None)
        heads = getattr(attn, "num_heads", None)
        if not isinstance(getattr(attn, "qkv", None), nn.Linear) or not isinstance(heads, int):
            return None
        taps = {"qkv": Tap(f"{b}.attn.qkv")}
        for norm in ("q_norm", "k_norm"):
            mod = getattr(attn, norm, None)
            if isinstance(mod, nn.Module) and not isinstance(mod, nn.Identity):
                taps[norm] = Tap(f"{b}.attn.{norm}")
        return LayerTaps(Tap(b), AttentionTaps(taps, heads, split_fused))

    found = _stacked(model, "blocks", per_layer)
    if found is None:
        return None
    prefix, layers = found
    return FeatureLayout("timm-vit", layers, embedding=Tap(f"{prefix}blocks.0", "input"))


@FEATURE_LAYOUTS.register("resnet")
def _resnet(model: nn.Module) -> FeatureLayout | None:
    """torchvision/timm ResNet at any prefix: outputs of ``layer1..layer4``; stem = input of ``layer1``."""
    for prefix, layer1 in _containers(model, "layer1"):
        parent = model.get_submodule(prefix[:-1]) if prefix else model
        if not (hasattr(parent, "conv1") and isinstance(layer1, nn.Sequential)):
            continue
        stages = []
        i = 1
        while isinstance(getattr(parent, f"layer{i}", None), nn.Module):
            stages.append(LayerTaps(Tap(f"{prefix}layer{i}")))
            i += 1
        return FeatureLayout("resnet", tuple(stages), embedding=Tap(f"{prefix}layer1", "input"))
    return None


# --- YAML patterns ---------------------------------------------------------------------------------


def glob_layout(model: nn.Module, pattern: str, base: FeatureLayout | None = None) -> FeatureLayout:
    """A layout whose hidden states are the outputs of the modules matching ``pattern``, in module order.

    Module names are matched with ``fnmatch`` (``net.layer*``; ``*`` also crosses dots).
    Matches nested inside another match are dropped (``net.layer*`` would otherwise also
    take ``net.layer1.0``...). There is no embedding state (index 0); attention taps and the
    padding mask come from ``base`` when the matched modules are its layers.

    Raises:
        LookupError: Nothing matches; the message lists a few candidate module names.
    """
    model = unwrap(model)
    names = [n for n, _ in model.named_modules() if n]
    hits = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
    hits = [n for n in hits if not any(n.startswith(h + ".") for h in hits)]
    if not hits:
        raise LookupError(
            f"no module matches {pattern!r}; some module names: {suggest_modules(model, pattern)}"
        )
    by_hidden = {lay.hidden.module: lay for lay in base.layers} if base is not None else {}
    layers = tuple(by_hidden.get(n, LayerTaps(Tap(n))) for n in hits)
    return FeatureLayout("glob", layers, key_mask=base.key_mask if base is not None else None)


def suggest_modules(model: nn.Module, pattern: str = "", limit: int = 8) -> str:
    """A short list of module names worth suggesting as hidden-state taps (containers' children first)."""
    names = [n for n, _ in unwrap(model).named_modules() if n]
    stem = re.sub(r"[*?\[].*$", "", pattern).rstrip(".")
    if stem:
        near = [n for n in names if n.startswith(stem.rsplit(".", 1)[0])] if "." in stem else []
        if near:
            names = near
    # Prefer the indexed children of containers (layers, blocks): the usual taps.
    layered = [n for n in names if re.search(r"(^|\.)(layers?|blocks?|stages?)(\d+|\.\d+)$", n)]
    chosen = (layered or names)[:limit]
    more = len(layered or names) - len(chosen)
    return ", ".join(chosen) + (f", ... ({more} more)" if more > 0 else "")
