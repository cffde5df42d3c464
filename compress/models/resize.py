"""Record and replay structural changes (fewer layers, narrower modules) of any model.

Students built from a teacher and pruned models differ from the architecture
their builder makes: a layer stack is shorter, convolutions have fewer
channels, attention modules have fewer heads. ``structure_diff`` compares a
model with a freshly built reference and returns a JSON-able record of what
differs; ``apply_structure`` replays that record on a fresh build, so a state
dict loads strictly. This is how models from torchvision, timm, Hugging Face
and factories are saved without pickled code.

The record has three parts:
    ``depth``: ``{container: n}``: a ``ModuleList``/``Sequential`` keeps its first ``n`` children
    (a depth student's layers are renumbered 0..n-1, so the state dict keys match);
    ``modules``: ``{name: {"type": ..., dims...}}``: a Linear, Conv, norm or Embedding rebuilt at these sizes;
    ``attrs``: ``{name: {attr: int}}``: integer attributes that describe widths (head counts, head sizes);
    ``params``: ``{name: shape}``: free parameters of other modules ([CLS] token, positions) at new shapes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_INT_ATTRS = (
    "num_attention_heads",
    "attention_head_size",
    "all_head_size",
    "num_heads",
    "head_dim",
    "embed_dim",
    "hidden_size",
    "num_key_value_heads",
    "attn_dim",
)
"""Integer attributes that encode widths in common attention implementations (HF BERT, timm ViT)."""


def _dims(m: nn.Module) -> dict[str, Any] | None:
    if isinstance(m, nn.Linear):
        return {"type": "linear", "in": m.in_features, "out": m.out_features, "bias": m.bias is not None}
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return {
            # the torch base class: a quantized subclass (QuantConv2d) keeps its float structure
            "type": next(c for c in type(m).__mro__ if c in (nn.Conv1d, nn.Conv2d, nn.Conv3d)).__name__.lower(),
            "in": m.in_channels,
            "out": m.out_channels,
            "groups": m.groups,
            "bias": m.bias is not None,
        }
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return {"type": type(m).__name__.lower(), "n": m.num_features}
    if isinstance(m, nn.LayerNorm):
        return {"type": "layernorm", "shape": list(m.normalized_shape)}
    if isinstance(m, nn.GroupNorm):
        return {"type": "groupnorm", "groups": m.num_groups, "n": m.num_channels}
    if isinstance(m, nn.Embedding):
        return {"type": "embedding", "n": m.num_embeddings, "dim": m.embedding_dim}
    return None


def _added_by_transform(m: nn.Module) -> bool:
    """A module of compress's own (a fake quantizer, an exposed-attention part) with no counterpart in a
    fresh build was inserted by a recorded transform, which ``load_model`` replays before the state
    dict loads; the structure record leaves it (and its children) out."""
    return type(m).__module__.startswith("compress.")


def _containers(model: nn.Module) -> dict[str, int]:
    return {n: len(m) for n, m in model.named_modules() if isinstance(m, (nn.ModuleList, nn.Sequential)) and n}


def structure_diff(model: nn.Module, reference: nn.Module) -> dict[str, Any]:
    """What must change in ``reference`` (a fresh build) to give ``model``'s structure.

    Raises:
        ValueError: ``model`` has modules ``reference`` lacks after depth changes (not a
            structural subset of it: e.g. a module type was swapped).
    """
    ref_c = _containers(reference)
    depth = {n: k for n, k in _containers(model).items() if n in ref_c and ref_c[n] != k}
    ref = _clone_with_depth(reference, depth)
    ref_mods = dict(ref.named_modules())
    modules: dict[str, Any] = {}
    attrs: dict[str, dict[str, int]] = {}
    params: dict[str, list[int]] = {}
    added: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(a + ".") for a in added):
            continue
        r = ref_mods.get(name)
        if r is None:
            if _added_by_transform(m):
                added.append(name)
                continue
            raise ValueError(f"module {name!r} ({type(m).__name__}) has no counterpart in a fresh build")
        d = _dims(m)
        if d is not None and d != _dims(r):
            modules[name] = d
        if d is None:
            for pname, prm in m._parameters.items():
                rp = r._parameters.get(pname)
                if prm is not None and rp is not None and tuple(prm.shape) != tuple(rp.shape):
                    params[f"{name}.{pname}" if name else pname] = list(prm.shape)
        changed = {
            a: int(getattr(m, a))
            for a in _INT_ATTRS
            if isinstance(getattr(m, a, None), int) and getattr(m, a) != getattr(r, a, None)
        }
        if changed:
            attrs[name] = changed
    out: dict[str, Any] = {"depth": depth, "modules": modules, "attrs": attrs}
    if params:
        out["params"] = params
    return out


def _clone_with_depth(model: nn.Module, depth: dict[str, int]) -> nn.Module:
    for name, n in sorted(depth.items(), key=lambda kv: -kv[0].count(".")):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        cont = getattr(parent, attr)
        kept = list(cont.children())[:n]
        setattr(parent, attr, type(cont)(kept) if isinstance(cont, nn.ModuleList) else nn.Sequential(*kept))
    return model


def _rebuilt(old: nn.Module, d: dict[str, Any]) -> nn.Module:
    t = d["type"]
    if t == "linear":
        return nn.Linear(d["in"], d["out"], bias=d["bias"])
    if t in ("conv1d", "conv2d", "conv3d"):
        assert isinstance(old, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        return type(old)(
            d["in"],
            d["out"],
            old.kernel_size,  # type: ignore[arg-type]
            stride=old.stride,  # type: ignore[arg-type]
            padding=old.padding,  # type: ignore[arg-type]
            dilation=old.dilation,  # type: ignore[arg-type]
            groups=d["groups"],
            bias=d["bias"],
            padding_mode=old.padding_mode,
        )
    if t in ("batchnorm1d", "batchnorm2d", "batchnorm3d"):
        assert isinstance(old, nn.modules.batchnorm._BatchNorm)
        return type(old)(d["n"], eps=old.eps, momentum=old.momentum, affine=old.affine)
    if t == "layernorm":
        assert isinstance(old, nn.LayerNorm)
        return nn.LayerNorm(d["shape"], eps=old.eps, elementwise_affine=old.elementwise_affine, bias=old.bias is not None)
    if t == "groupnorm":
        assert isinstance(old, nn.GroupNorm)
        return nn.GroupNorm(d["groups"], d["n"], eps=old.eps, affine=old.affine)
    if t == "embedding":
        assert isinstance(old, nn.Embedding)
        return nn.Embedding(d["n"], d["dim"], padding_idx=old.padding_idx)
    raise ValueError(f"unknown module record type {t!r}")


def apply_structure(model: nn.Module, record: dict[str, Any]) -> nn.Module:
    """Replay a ``structure_diff`` record on a fresh build, in place; returns ``model``.

    Raises:
        ValueError: A recorded module is missing or of another type (the record is from another architecture).
    """
    _clone_with_depth(model, {k: int(v) for k, v in record.get("depth", {}).items()})
    for name, d in record.get("modules", {}).items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"recorded module {name!r} does not exist in this architecture") from None
        cur = _dims(old)
        if cur is None or cur["type"] != d["type"]:
            raise ValueError(f"recorded module {name!r} is a {d['type']}, the build has {type(old).__name__}")
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = _rebuilt(old, d)
        ref_param = next(old.parameters(), None)
        if ref_param is not None:
            new = new.to(dtype=ref_param.dtype)
        setattr(parent, attr, new)
    for name, shape in record.get("params", {}).items():
        owner_name, _, pname = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        old_p = owner._parameters.get(pname)
        if old_p is None:
            raise ValueError(f"recorded parameter {name!r} does not exist in this architecture")
        owner._parameters[pname] = nn.Parameter(old_p.new_empty(shape), requires_grad=old_p.requires_grad)
    for name, changed in record.get("attrs", {}).items():
        mod = model.get_submodule(name) if name else model
        for a, v in changed.items():
            setattr(mod, a, int(v))
    return model


def is_empty(record: dict[str, Any]) -> bool:
    """True when the record changes nothing."""
    return not any(record.get(k) for k in ("depth", "modules", "attrs", "params"))


@torch.no_grad()
def copy_weights(dst: nn.Module, src: nn.Module) -> None:
    """Copy every same-named, same-shaped tensor of ``src``'s state dict into ``dst``."""
    own = dst.state_dict()
    for k, v in src.state_dict().items():
        if k in own and own[k].shape == v.shape:
            own[k].copy_(v)
