"""Students built from a teacher: fewer layers (depth), fewer channels/heads (width), or an independent model.

Depth keeps some of the teacher's layers, each starting from that layer's
weights, with the embeddings and the head (DistilBERT-style initialisation;
DistilBERT keeps roughly every other layer). The layer stack is found by
structure: the built-in ``blocks``, Hugging Face ``*.encoder.layer`` and timm
``*.blocks``.

Width keeps, in every prunable group, the channels with the largest weight
magnitude (L2), through torch-pruning's dependency graph, so residual and
concatenated channels stay consistent and the student starts from the
teacher's most important channels: CNN channels (``width``), attention heads
and FFN neurons of Transformers (``heads``, ``ffn``, or ``width`` for both).
The classifier's outputs are never pruned.

The result is a plain smaller model of the same family: its ``spec()`` records
the changes, so it saves and reloads without pickled code.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from compress.models.external import sync_hf_config

_STACK_SUFFIXES = ("blocks", "encoder.layer", "layers", "layer")
_ENABLE_RATIO = 1e-6


def layer_stack(model: nn.Module) -> tuple[str, nn.Module]:
    """``(name, container)`` of the model's stack of repeated layers.

    The container is a ``ModuleList`` or ``Sequential`` whose name ends in ``blocks``, ``encoder.layer``,
    ``layers`` or ``layer`` and whose children share one type; the one with the most parameters wins.

    Raises:
        ValueError: No such stack (e.g. a ResNet, whose stages differ): depth students do not apply.
    """
    best: tuple[int, str, nn.Module] | None = None
    for name, m in model.named_modules():
        if not isinstance(m, (nn.ModuleList, nn.Sequential)) or len(m) < 1:
            continue
        if not any(name == s or name.endswith("." + s) for s in _STACK_SUFFIXES):
            continue
        if len({type(c) for c in m.children()}) != 1:
            continue
        n = sum(p.numel() for p in m.parameters())
        if best is None or n > best[0]:
            best = (n, name, m)
    if best is None:
        raise ValueError(
            f"{type(model).__name__} has no stack of repeated layers (blocks / encoder.layer); "
            "a depth student needs one: use width or an independent student.model instead"
        )
    return best[1], best[2]


def depth_indices(n_layers: int, keep: list[int] | str | None, num_layers: int | None) -> list[int]:
    """Teacher layer indices a depth student keeps: an explicit list, ``every_other`` (0, 2, 4, ...) or the first k.

    Raises:
        ValueError: An index is out of range or k exceeds the teacher's depth.
    """
    if keep == "every_other":
        return list(range(0, n_layers, 2))
    if isinstance(keep, list):
        bad = [i for i in keep if not 0 <= i < n_layers]
        if bad:
            raise ValueError(f"keep_layers {bad} out of range: the teacher has {n_layers} layers (0..{n_layers - 1})")
        return list(keep)
    if num_layers is not None:
        if num_layers > n_layers:
            raise ValueError(f"num_layers {num_layers} is more than the teacher's {n_layers} layers")
        return list(range(num_layers))
    return list(range(n_layers))


def student_by_depth(teacher: nn.Module, keep_layers: list[int]) -> nn.Module:
    """A copy of ``teacher`` keeping only the layers ``keep_layers`` (in that order), initialised from them.

    Raises:
        ValueError: An index is out of range or the model has no layer stack.
    """
    name, stack = layer_stack(teacher)
    idx = depth_indices(len(stack), keep_layers, None)
    student = copy.deepcopy(teacher)
    kept = [copy.deepcopy(stack[i]) for i in idx]
    parent_name, _, attr = name.rpartition(".")
    parent = student.get_submodule(parent_name) if parent_name else student
    setattr(parent, attr, nn.ModuleList(kept) if isinstance(stack, nn.ModuleList) else nn.Sequential(*kept))
    _renumber_layer_indices(student)
    sync_hf_config(student)
    return student


def _renumber_layer_indices(model: nn.Module) -> None:
    """Hugging Face attention modules carry a ``layer_idx`` (for caches): make it match the new positions."""
    name, stack = layer_stack(model)
    for i, layer in enumerate(stack):
        for m in layer.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = i


def _classifier(model: nn.Module) -> list[nn.Module]:
    """The last Linear (or 1x1 conv) in module order: the classifier, never pruned."""
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return last[-1:]


def _hf_attention(model: nn.Module) -> dict[str, nn.Module]:
    """Hugging Face self-attention modules (``query``/``key``/``value`` Linears and ``num_attention_heads``)."""
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(getattr(m, "num_attention_heads", None), int)
        and all(isinstance(getattr(m, p, None), nn.Linear) for p in ("query", "key", "value"))
    }


def _fused_attention(model: nn.Module) -> dict[str, nn.Module]:
    """timm-style attention: one fused ``qkv`` Linear and an integer ``num_heads``."""
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(getattr(m, "num_heads", None), int) and isinstance(getattr(m, "qkv", None), nn.Linear)
    }


def _tiny_attention(model: nn.Module) -> dict[str, nn.Module]:
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(getattr(m, "num_heads", None), int)
        and all(isinstance(getattr(m, p, None), nn.Linear) for p in ("q", "k", "v"))
    }


def student_by_width(
    teacher: nn.Module,
    example_inputs: torch.Tensor,
    *,
    width: float | None = None,
    heads: int | None = None,
    ffn: int | None = None,
    hidden: int | None = None,
    round_to: int | None = None,
) -> nn.Module:
    """A narrower copy of ``teacher`` keeping its largest-magnitude channels, heads or FFN neurons.

    CNNs (no attention found): every coupled channel group keeps ``width`` of its channels.
    Transformers (built-in tiny-vit, Hugging Face BERT family): each layer keeps ``heads`` heads
    (default ``round(width · heads)``) and ``ffn`` FFN neurons (default ``round(width · ffn)``);
    ``hidden`` also narrows the residual stream (embeddings or patch embedding, [CLS] token and
    positions, every layer's output, the norms) to that many channels; the per-head width stays.
    Transformers covered: Hugging Face BERT family, the built-in tiny-vit, timm ViTs (fused qkv).

    Raises:
        ValueError: Nothing to narrow, a count larger than the teacher's, or an architecture without
            prunable groups.
    """
    import torch_pruning as tp

    student = copy.deepcopy(teacher).eval()
    hf, tiny, fused = _hf_attention(student), _tiny_attention(student), _fused_attention(student)
    attn = hf or tiny or fused
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    ignored = _classifier(student)
    kw: dict[str, Any] = {"round_to": round_to} if round_to else {}
    if not attn:
        if width is None or heads is not None or ffn is not None:
            raise ValueError("this model has no attention layers: give width (the fraction of channels kept) only")
        ratio = 1.0 - width
        if ratio <= 0:
            return student
        pruner = tp.pruner.MetaPruner(
            student, example_inputs, importance=imp, pruning_ratio=ratio, ignored_layers=ignored, **kw
        )
        pruner.step()
        return student
    projs = ("query", "key", "value") if hf else ("q", "k", "v") if tiny else ("qkv",)
    q = projs[0]
    heads_attr = "num_attention_heads" if hf else "num_heads"
    num_heads: dict[nn.Module, int] = {}
    ratios: dict[nn.Module, float] = {}
    for name, a in attn.items():
        n_heads = int(getattr(a, heads_attr))
        keep = heads if heads is not None else (max(1, round(width * n_heads)) if width is not None else n_heads)
        if keep > n_heads:
            raise ValueError(f"heads {keep} is more than the {n_heads} heads of '{name}'")
        for p in projs:
            num_heads[getattr(a, p)] = n_heads
        if keep < n_heads:
            for p in projs:
                ratios[getattr(a, p)] = 1.0 - keep / n_heads
    for fc in _ffn_inputs(student, hf=bool(hf)):
        n = fc.out_features
        keep = ffn if ffn is not None else (max(1, round(width * n)) if width is not None else n)
        if keep > n:
            raise ValueError(f"ffn {keep} is more than the {n} FFN neurons of the teacher")
        if keep < n:
            # torch-pruning keeps int(n * (1 - ratio)) neurons; aim half a neuron above ``keep`` so float
            # rounding cannot drop one (1 - 440/1536 kept 439 of 1536)
            ratios[fc] = 1.0 - (keep + 0.5) / n
    if hidden is not None:
        _narrow_hidden(student, example_inputs, hidden, imp=imp, round_to=round_to, heads={
            getattr(a, p): int(getattr(a, heads_attr)) for a in attn.values() for p in projs
        })
    if not ratios:
        return student
    head_ratio = max((ratios[getattr(a, q)] for a in attn.values() if getattr(a, q) in ratios), default=0.0)
    pruner = tp.pruner.MetaPruner(
        student,
        example_inputs,
        importance=imp,
        pruning_ratio=0.0,
        # torch-pruning removes heads only inside a scope whose channel ratio is > 0: give the q/k/v
        # layers a ratio that rounds to zero channels, so heads go whole and the head width stays
        pruning_ratio_dict={m: (r if m not in num_heads else _ENABLE_RATIO) for m, r in ratios.items()},
        num_heads=num_heads,
        prune_num_heads=head_ratio > 0,
        prune_head_dims=False,
        head_pruning_ratio=head_ratio,
        ignored_layers=ignored + _residual_modules(student, hf=bool(hf)),
        **kw,
    )
    pruner.step()
    for a in attn.values():
        new_heads = pruner.num_heads[getattr(a, q)]
        setattr(a, heads_attr, int(new_heads))
        if hf:
            a.all_head_size = a.query.out_features
            a.attention_head_size = a.all_head_size // int(new_heads)
        if isinstance(getattr(a, "attn_dim", None), int):  # timm: the merged-heads width
            a.attn_dim = int(new_heads) * int(a.head_dim)
    if hf:
        cfg = student.net.config if hasattr(student, "net") else None
        if cfg is not None:
            counts = {int(getattr(a, heads_attr)) for a in attn.values()}
            if len(counts) == 1:
                cfg.num_attention_heads = counts.pop()
    return student


def _embedding_root(model: nn.Module) -> tuple[nn.Module, int]:
    """The module whose outputs start the residual stream, and its width: BERT word embeddings, or a
    ViT's patch embedding (built-in ``patch_embed`` Linear, timm ``patch_embed.proj`` Conv)."""
    for name, m in model.named_modules():
        if name.endswith("embeddings.word_embeddings") and isinstance(m, nn.Embedding):
            return m, m.embedding_dim
    for name, m in model.named_modules():
        if (name == "patch_embed" or name.endswith(".patch_embed")) and isinstance(m, nn.Linear):
            return m, m.out_features
        if name.endswith("patch_embed.proj") and isinstance(m, nn.Conv2d):
            return m, m.out_channels
    raise ValueError(
        "hidden: no word embeddings (BERT family) or patch embedding (ViT) found; hidden applies to those"
    )


def _narrow_hidden(
    model: nn.Module,
    example_inputs: torch.Tensor,
    hidden: int,
    *,
    imp: Any,
    round_to: int | None,
    heads: dict[nn.Module, int],
) -> None:
    """Keep ``hidden`` channels of the residual stream (the embedding group, with the [CLS] token and
    position parameters coupled to it), chosen by magnitude; head counts and head widths stay."""
    import torch_pruning as tp

    emb, width = _embedding_root(model)
    if not 0 < hidden <= width:
        raise ValueError(f"hidden {hidden} must be between 1 and the teacher's hidden size {width}")
    if hidden == width:
        return
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs,
        importance=imp,
        pruning_ratio=0.0,
        pruning_ratio_dict={emb: 1.0 - hidden / width},
        ignored_layers=_classifier(model),
        num_heads=heads,
        prune_num_heads=False,
        prune_head_dims=False,
        **({"round_to": round_to} if round_to else {}),
    )
    pruner.step()
    emb, kept = _embedding_root(model)
    if kept != hidden:
        raise ValueError(f"hidden: torch-pruning kept {kept} channels, not {hidden} (round_to?)")


def _ffn_inputs(model: nn.Module, *, hf: bool) -> list[nn.Linear]:
    """The first Linear of every FFN (its outputs are the hidden neurons)."""
    if hf:
        return [m.dense for n, m in model.named_modules() if n.endswith(".intermediate") and isinstance(getattr(m, "dense", None), nn.Linear)]
    return [m.fc1 for m in model.modules() if isinstance(getattr(m, "fc1", None), nn.Linear) and isinstance(getattr(m, "fc2", None), nn.Linear)]


def _residual_modules(model: nn.Module, *, hf: bool) -> list[nn.Module]:
    """Modules whose outputs are the residual stream (kept at full width): embeddings and norms."""
    return [m for m in model.modules() if isinstance(m, (nn.Embedding, nn.LayerNorm))] if hf else []


def build_student(teacher: nn.Module, spec: Any | None, example_inputs: torch.Tensor | None = None) -> nn.Module:
    """The student that ``spec`` (a ``StudentConfig`` or ``None``) describes, built from ``teacher``.

    ``None`` gives a copy of the teacher. Depth is applied first, then width. The teacher is never
    modified.

    Raises:
        ValueError: The spec does not fit the teacher (the message says why).
    """
    if spec is None:
        return copy.deepcopy(teacher)
    if getattr(spec, "model", None) is not None:
        from compress.models import build_model
        from compress.models.registry import load_checkpoint_file, load_state_dict_checked

        model = build_model(spec.model.family, dict(spec.model.config))
        if spec.model.checkpoint is not None:
            load_state_dict_checked(model, load_checkpoint_file(spec.model.checkpoint), source=str(spec.model.checkpoint))
        return model
    student = teacher
    keep, num = getattr(spec, "keep_layers", None), getattr(spec, "num_layers", None)
    if keep is not None or num is not None:
        _, stack = layer_stack(teacher)
        student = student_by_depth(teacher, depth_indices(len(stack), keep, num))
    width, heads, ffn, hidden = (getattr(spec, a, None) for a in ("width", "heads", "ffn", "hidden"))
    if width is not None or heads is not None or ffn is not None or hidden is not None:
        if example_inputs is None:
            raise ValueError("a width student needs example inputs to trace the model")
        student = student_by_width(
            student,
            example_inputs,
            width=width,
            heads=heads,
            ffn=ffn,
            hidden=hidden,
            round_to=getattr(spec, "round_to", None),
        )
    student = copy.deepcopy(student) if student is teacher else student
    if getattr(spec, "init", "teacher") == "random":
        from compress.models import model_from_spec, model_spec

        with torch.random.fork_rng(devices=[]):  # a fixed init that leaves the caller's RNG alone
            torch.manual_seed(0)
            student = model_from_spec(model_spec(student))
    return student


def describe(student: nn.Module, teacher: nn.Module) -> dict[str, Any]:
    """Parameters of student and teacher and their ratio (for the stage metrics)."""
    ps = sum(p.numel() for p in student.parameters())
    pt = sum(p.numel() for p in teacher.parameters())
    return {"params": ps, "teacher_params": pt, "params_ratio": ps / pt if pt else math.nan}
